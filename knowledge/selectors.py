"""Full-text retrieval over the active account's chunks.

One statement answers a search over knowledge bases of any mix of languages: a UNION ALL with a
branch per language, where the query is parsed with that language's configuration and the chunks
of its knowledge bases are found through the `chunk_search` GIN index and ranked, the heading
path (weight A) counting above the text (B). Highlights are made with ts_headline for the
returned passages only, with private-use markers that become HeadlineSegments, so a passage's
text is never taken for HTML.

Two kinds of query:
- A question or a few words ("how do I read a csv file"): any of its words may match, as a
  person asking does not expect every word of a sentence in the passage that answers it (all of
  them, as websearch_to_tsquery asks, finds nothing for most questions). Its lexemes (the
  language's stemming, stop words dropped) are looked up in the statistics PostgreSQL keeps on
  `search_vector` (pg_stats.most_common_elems, from ANALYZE and autovacuum), in the same round
  trip that parses them: passages are found by the rarest words, adding words from rarest to
  commonest while the estimated number of matching passages stays within MATCH_BUDGET_ROWS (so a
  word in half of the passages, "use", "function", never makes every passage a candidate), and
  ranked by ts_rank over all the words (a passage with more of them, more often, in its headings,
  first; QUESTION_WEIGHTS). Without statistics yet (an account whose passages were never
  analysed) every word finds.
- Search syntax ("a phrase", -excluded, this OR that): websearch_to_tsquery, which never rejects
  input, every word required, ranked by ts_rank_cd.
A query with nothing to search for (empty, punctuation, stop words only) finds nothing.

Each knowledge base's chunks are indexed with its language: changing the language needs its
documents re-indexed (replace_chunks) before searches in the new language find them.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection

from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.types import ChunkHit, HeadlineSegment
from tenancy import NoTenantError
from tenancy.context import is_public

__all__ = ["ChunkHit", "HeadlineSegment", "search_chunks", "uses_syntax", "words_queries"]

# A query is a few words or a question; a pasted page would only make the tsquery costly.
MAX_QUERY_LENGTH = 1000
MAX_LIMIT = 100

# ts_headline's StartSel/StopSel: private-use code points, removed from the text before
# ts_headline sees it, so every one in its output is a marker it put there.
START_MARK = "\ue000"
STOP_MARK = "\ue001"
_MARK_SPLIT = re.compile(f"([{START_MARK}{STOP_MARK}])")
# ts_headline drops what looks like an HTML tag ("use <div> here" -> "use  here"), and documents
# hold code: < and > go in as two more private-use stand-ins and come back out afterwards.
_LT, _GT = "\ue002", "\ue003"
_HEADLINE_FROM = f"<>{START_MARK}{STOP_MARK}{_LT}{_GT}"  # translate(): < > mapped, the rest gone
_HEADLINE_TO = f"{_LT}{_GT}"
_STAND_INS_BACK = str.maketrans({_LT: "<", _GT: ">"})
_HEADLINE_OPTIONS = (
    f"StartSel={START_MARK}, StopSel={STOP_MARK}, "
    'MaxFragments=3, MaxWords=25, MinWords=10, FragmentDelimiter=" … "'
)

# One branch per language. The configuration and the queries are literals, so PostgreSQL folds
# the tsquery into a constant and estimates from the column's statistics how many chunks match:
# the GIN index for selective words, a scan where most chunks match anyway. (With the query
# computed from a column instead, the planner cannot estimate it and scans the table at any size.)
# `match` finds the passages, `query` ranks them and highlights the words.
_BRANCH = f"""(
    SELECT c.id AS chunk_id, c.ordinal, c.document_id, d.title AS document_title,
           d.knowledge_base_id, c.heading_path, c.page, c.text,
           {{rank}} AS rank, q.config, q.query
    FROM (SELECT %s::regconfig AS config, {{match}} AS match, {{query}} AS query) q
    CROSS JOIN {Chunk._meta.db_table} c
    JOIN {Document._meta.db_table} d ON d.id = c.document_id
    WHERE c.search_vector @@ q.match AND d.knowledge_base_id = ANY(%s::bigint[])
    ORDER BY rank DESC, c.id
    LIMIT %s
)"""
_WEB_BRANCH = _BRANCH.format(
    rank="ts_rank_cd(c.search_vector, q.query)",
    match="websearch_to_tsquery(%s::regconfig, %s)",
    query="websearch_to_tsquery(%s::regconfig, %s)",
)
# A question's ranking weighs a word in the heading path (A) 0.6 against 0.4 in the text (B),
# not ts_rank's default 1.0: every passage of a section repeats its headings, and a heavy heading
# weight let them outweigh what the passage itself says (measured: MRR 0.667 -> 0.725, recall@5
# 0.854 -> 0.866; any ratio from 0.75 to 1.5 did as well, 2.5 and above worse: docs/benchmarks.md).
QUESTION_WEIGHTS = "{0.1, 0.2, 0.4, 0.6}"  # D, C, B, A
_WORDS_BRANCH = _BRANCH.format(
    rank=f"ts_rank('{QUESTION_WEIGHTS}', c.search_vector, q.query)",
    match="%s::tsquery",
    query="%s::tsquery",
)

# A question's lexemes in each language, with the share of the account's passages holding each
# (NULL: rarer than the statistics' least common word, or no statistics yet) and the passages
# counted. pg_stats is a view on pg_statistic that only shows columns the user may read.
_TERMS = f"""
SELECT l.language, t.lexeme, s.freq, greatest(c.reltuples, 0)
FROM unnest(%s::text[]) AS l(language)
CROSS JOIN LATERAL unnest(to_tsvector(l.language::regconfig, %s)) AS t
LEFT JOIN (
    SELECT unnest(most_common_elems::text::text[]) AS lexeme,
           unnest(most_common_elem_freqs) AS freq
    FROM pg_stats
    WHERE schemaname = current_schema() AND tablename = '{Chunk._meta.db_table}'
      AND attname = 'search_vector'
) s USING (lexeme)
CROSS JOIN (
    SELECT reltuples FROM pg_class WHERE oid = '{Chunk._meta.db_table}'::regclass
) c
"""
# How many passages a question's words may find before its commoner words stop adding to them:
# the ranking's cost grows with the passages found (each one's vector is read and ranked), a
# passage found only by common words is rarely worth reading, and past about a tenth of the
# passages PostgreSQL scans the whole table instead of the index. benchmarks/knowledge_bases.py
# on the Python documentation (12,000 passages): 1,000 keeps recall@5 within one question of
# 5,000 at a third of the median time (docs/benchmarks.md, "Issue 9").
MATCH_BUDGET_ROWS = 1000
# Explicit search syntax: a quote, a word excluded with a leading minus, OR between words. A minus
# before a single letter is a command's option in a question ("python -m"), not an exclusion.
_SYNTAX = re.compile(r'"|(?:^|\s)-\w\w|\sOR\s')

# ts_headline only for the passages returned: it re-parses the whole text, the costly part.
_SEARCH = """
SELECT chunk_id, ordinal, document_id, document_title, knowledge_base_id, heading_path, page, text,
       ts_headline(config, translate(text, %s, %s), query, %s),
       rank
FROM (
    SELECT * FROM ({branches}) hits ORDER BY rank DESC, chunk_id LIMIT %s
) top
ORDER BY rank DESC, chunk_id
"""


@dataclass(frozen=True)
class WordsQuery:
    """A question's words in one language, as tsquery text: `match` finds, `rank` ranks."""

    match: str
    rank: str


def uses_syntax(query: str) -> bool:
    """Whether the query is written in search syntax rather than as a question."""
    return bool(_SYNTAX.search(query))


def _tsquery_literal(lexemes: Sequence[str]) -> str:
    # Quoted as tsquery input wants: a quote doubled, a backslash escaped.
    return " | ".join(
        "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes
    )


def words_queries(*, query: str, languages: Sequence[str]) -> dict[str, WordsQuery]:
    """The query's words per language (knowledge base languages; stop words alone: absent), the
    rarest of them finding passages within MATCH_BUDGET_ROWS, all of them ranking."""
    with connection.cursor() as cursor:
        cursor.execute(_TERMS, [list(languages), query])
        rows = cursor.fetchall()
    terms: dict[str, list[tuple[float, str]]] = {}
    total: dict[str, float] = {}
    for language, lexeme, freq, reltuples in rows:
        terms.setdefault(language, []).append((float(freq or 0.0), lexeme))
        total[language] = float(reltuples)
    queries = {}
    for language, found in terms.items():
        found.sort()
        match: list[str] = []
        estimated = 0.0
        for freq, lexeme in found:
            rows_more = freq * total[language]
            if match and estimated + rows_more > MATCH_BUDGET_ROWS:
                break
            match.append(lexeme)
            estimated += rows_more
        queries[language] = WordsQuery(
            match=_tsquery_literal(match),
            rank=_tsquery_literal(sorted(lexeme for _, lexeme in found)),
        )
    return queries


def search_statement(
    *,
    query: str,
    kb_ids_by_language: dict[str, list[int]],
    limit: int,
    words: dict[str, WordsQuery] | None = None,
) -> tuple[str, list[Any]]:
    """The statement search_chunks runs (its SQL and parameters): with `words`
    (words_queries), a question's branch for each language it has words in; without, the
    query in search syntax."""
    params: list[Any] = [_HEADLINE_FROM, _HEADLINE_TO, _HEADLINE_OPTIONS]
    branches = []
    for language, kb_ids in sorted(kb_ids_by_language.items()):
        if words is None:
            branches.append(_WEB_BRANCH)
            params += [language, language, query, language, query, kb_ids, limit]
        elif language in words:
            branches.append(_WORDS_BRANCH)
            params += [language, words[language].match, words[language].rank, kb_ids, limit]
    params.append(limit)
    return _SEARCH.format(branches=" UNION ALL ".join(branches)), params


def headline_segments(headline: str) -> tuple[HeadlineSegment, ...]:
    """ts_headline output (with this module's markers) as plain and marked runs of text."""
    segments: list[HeadlineSegment] = []
    marked = False
    for piece in _MARK_SPLIT.split(headline):
        if piece == START_MARK:
            marked = True
        elif piece == STOP_MARK:
            marked = False
        elif piece:
            text = piece.translate(_STAND_INS_BACK)
            if segments and segments[-1].marked == marked:
                segments[-1] = HeadlineSegment(segments[-1].text + text, marked)
            else:
                segments.append(HeadlineSegment(text, marked))
    return tuple(segments)


def search_chunks(
    *,
    query: str,
    knowledge_bases: Sequence[KnowledgeBase] | None = None,
    limit: int = 10,
) -> list[ChunkHit]:
    """The active account's passages best matching `query` (a question, or web-search syntax:
    "a phrase", -excluded, this OR that), best first, in `knowledge_bases` (all of the
    account's when None).

    A query with nothing to search for (empty, punctuation, stop words only) finds nothing.
    """
    if is_public():
        raise NoTenantError("knowledge search")  # before any SQL: the tables are per account
    query = " ".join(query.replace("\x00", " ").split())[:MAX_QUERY_LENGTH]
    limit = min(limit, MAX_LIMIT)
    if not query or limit < 1 or (knowledge_bases is not None and not knowledge_bases):
        return []
    pairs = (
        [(kb.pk, kb.language) for kb in knowledge_bases]
        if knowledge_bases is not None
        # All of them: a second round trip, of a few rows.
        else list(KnowledgeBase.objects.values_list("pk", "language"))
    )
    kb_ids_by_language: dict[str, list[int]] = {}
    for kb_id, language in pairs:
        if language not in KnowledgeBase.Language.values:
            # Only the listed configurations ever reach SQL (the column's check says the same).
            raise ValueError(f"knowledge base {kb_id} has an unknown language {language!r}")
        kb_ids_by_language.setdefault(language, []).append(kb_id)
    if not kb_ids_by_language:
        return []
    words = None
    if not uses_syntax(query):
        words = words_queries(query=query, languages=sorted(kb_ids_by_language))
        if not words:
            return []  # stop words or punctuation alone
    sql, params = search_statement(
        query=query, kb_ids_by_language=kb_ids_by_language, limit=limit, words=words
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        ChunkHit(
            chunk_id=chunk_id,
            ordinal=ordinal,
            document_id=document_id,
            document_title=document_title,
            knowledge_base_id=knowledge_base_id,
            heading_path=tuple(heading_path),
            page=page,
            text=text,
            headline=headline_segments(headline),
            rank=float(rank),
        )
        for (
            chunk_id,
            ordinal,
            document_id,
            document_title,
            knowledge_base_id,
            heading_path,
            page,
            text,
            headline,
            rank,
        ) in rows
    ]
