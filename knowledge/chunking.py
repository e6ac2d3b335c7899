"""Extracted blocks cut into chunks for retrieval.

Chunks follow the document's structure: a heading ends the running chunk and starts a section;
inside a section, blocks accumulate up to a target size; a block larger than that is split at
sentence boundaries, then word boundaries (code at line boundaries). Each chunk carries the
heading path in force at its start and the page of its first text, and repeats about
`overlap_tokens` from the end of the previous chunk of the same section, so that a passage cut
in two is still found whole in one of them.

A chunk holds at most about target_tokens + overlap_tokens (the overlap plus one whole block
that fits the target). Pure and deterministic: the same blocks give the same chunks.
"""

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from knowledge.extraction import Block


@dataclass(frozen=True)
class ChunkText:
    text: str
    heading_path: tuple[str, ...]
    page: int | None
    tokens: int
    ordinal: int


def estimate_tokens(text: str) -> int:
    """About four characters per token, the usual rule of thumb for English with BPE tokenizers
    (OpenAI's own guidance); good enough to size chunks and far cheaper than a tokenizer."""
    return _tokens_for_length(len(text))


def _tokens_for_length(characters: int) -> int:
    return math.ceil(characters / 4)


@dataclass(frozen=True)
class _Piece:
    text: str
    block: int  # index of the block it came from: pieces of one block join with `joiner`
    joiner: str
    page: int | None
    tokens: int


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def _sentences(text: str) -> list[str]:
    return [sentence for sentence in _SENTENCE_END.split(text) if sentence]


def _split_words(text: str, limit: int) -> list[str]:
    """Words packed into parts of at most `limit` tokens; a word longer than that on its own
    (a URL, a base64 blob) is cut into slices of `limit` tokens' characters."""
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for word in text.split():
        while estimate_tokens(word) > limit:
            if current:
                parts.append(" ".join(current))
                current, size = [], 0
            parts.append(word[: limit * 4])
            word = word[limit * 4 :]
        if not word:
            continue
        cost = estimate_tokens(word + " ")
        if current and size + cost > limit:
            parts.append(" ".join(current))
            current, size = [], 0
        current.append(word)
        size += cost
    if current:
        parts.append(" ".join(current))
    return parts


def _pack(units: list[str], limit: int, joiner: str) -> list[str]:
    """Consecutive units joined while they fit in `limit` tokens; a unit that does not fit on
    its own is split at word boundaries."""
    parts: list[str] = []
    current = ""
    for unit in units:
        if estimate_tokens(unit) > limit:
            if current:
                parts.append(current)
                current = ""
            parts.extend(_split_words(unit, limit))
            continue
        candidate = current + joiner + unit if current else unit
        if current and estimate_tokens(candidate) > limit:
            parts.append(current)
            current = unit
        else:
            current = candidate
    if current:
        parts.append(current)
    return parts


def _block_text(block: Block) -> str:
    return f"- {block.text}" if block.kind == "list_item" else block.text


def _pieces(block: Block, index: int, limit: int) -> list[_Piece]:
    text = _block_text(block)
    joiner = "\n" if block.kind == "code" else " "
    if estimate_tokens(text) <= limit:
        parts = [text]
    elif block.kind == "code":
        parts = _pack(text.split("\n"), limit, "\n")
    else:
        parts = _pack(_sentences(text), limit, " ")
    return [
        _Piece(text=part, block=index, joiner=joiner, page=block.page, tokens=estimate_tokens(part))
        for part in parts
        if part.strip()
    ]


def _tail(piece: _Piece, budget: int) -> _Piece | None:
    """The end of a piece, about `budget` tokens, cut at a sentence (code: line) boundary when
    whole sentences fit, else at a word boundary."""
    if budget <= 0:
        return None
    units = piece.text.split("\n") if piece.joiner == "\n" else _sentences(piece.text)
    kept: list[str] = []
    for unit in reversed(units):
        if estimate_tokens(piece.joiner.join([unit, *kept])) > budget:
            break
        kept.insert(0, unit)
    if kept:
        text = piece.joiner.join(kept)
    else:
        words = piece.text.split()
        taken: list[str] = []
        for word in reversed(words):
            if estimate_tokens(" ".join([word, *taken])) > budget:
                break
            taken.insert(0, word)
        text = " ".join(taken)
    if not text.strip():
        return None
    return _Piece(
        text=text,
        block=piece.block,
        joiner=piece.joiner,
        page=piece.page,
        tokens=estimate_tokens(text),
    )


def _separator(previous: _Piece, piece: _Piece) -> str:
    if piece.block == previous.block:
        return piece.joiner
    if piece.text.startswith("- ") and previous.text.startswith("- "):
        return "\n"  # a list stays a list
    return "\n\n"


def _join(pieces: list[_Piece]) -> str:
    out = pieces[0].text
    for previous, piece in itertools.pairwise(pieces):
        out += _separator(previous, piece) + piece.text
    return out


def chunk(
    blocks: Sequence[Block], *, target_tokens: int = 300, overlap_tokens: int = 40
) -> list[ChunkText]:
    if target_tokens < 1:
        raise ValueError("target_tokens must be at least 1")
    if not 0 <= overlap_tokens < target_tokens:
        raise ValueError("overlap_tokens must be at least 0 and less than target_tokens")
    chunks: list[ChunkText] = []
    headings: list[tuple[int, str]] = []
    current: list[_Piece] = []
    length = 0  # characters of _join(current), kept as pieces are added
    fresh = False  # whether `current` holds more than the overlap carried from the last chunk
    path: tuple[str, ...] = ()

    def emit() -> None:
        text = _join(current)
        chunks.append(
            ChunkText(
                text=text,
                heading_path=path,
                page=current[0].page,
                tokens=estimate_tokens(text),
                ordinal=len(chunks),
            )
        )

    # Blocks bigger than this are split so that the overlap plus one piece fits the target.
    piece_limit = max(1, target_tokens - overlap_tokens)
    for index, block in enumerate(blocks):
        if block.kind == "heading":
            if fresh:
                emit()
            current, fresh, length = [], False, 0
            level = min(max(block.level, 1), 6)
            while headings and headings[-1][0] >= level:
                headings.pop()
            headings.append((level, block.text))
            path = tuple(text for _, text in headings)
            continue
        for piece in _pieces(block, index, piece_limit):
            added = len(piece.text) + (len(_separator(current[-1], piece)) if current else 0)
            if fresh and _tokens_for_length(length + added) > target_tokens:
                emit()
                tail = _tail(current[-1], overlap_tokens)
                current, fresh = ([tail] if tail is not None else []), False
                length = len(tail.text) if tail is not None else 0
                added = len(piece.text) + (len(_separator(current[-1], piece)) if current else 0)
            current.append(piece)
            length += added
            fresh = True
    if fresh:
        emit()
    return chunks
