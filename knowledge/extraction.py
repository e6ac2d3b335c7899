"""Text out of a knowledge-base document, keeping its structure.

`extract` reads an uploaded file (.txt, .md, .html/.htm, .pdf); `extract_text` reads pasted
text. Both return the document as a list of blocks (headings with their level, paragraphs, list
items, code) so that chunking can follow sections and carry heading paths and PDF page numbers.
Anything a person must fix is raised as ExtractionError with a reason meant to be shown to them.

Pure functions of bytes in, blocks out: no database, no network, safe to call from a Celery task.
"""

import io
import itertools
import logging
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Literal

from bs4 import BeautifulSoup
from bs4.dammit import UnicodeDammit
from markdown_it import MarkdownIt
from markdown_it.token import Token

if TYPE_CHECKING:
    from pypdf import PageObject

logger = logging.getLogger(__name__)

BlockKind = Literal["heading", "paragraph", "list_item", "code"]
Format = Literal["text", "markdown", "html", "pdf"]

DEFAULT_MAX_PAGES = 2_000
# About a 1,500-page book; bounds the memory and the chunking work of one document.
DEFAULT_MAX_CHARS = 5_000_000


@dataclass(frozen=True)
class Block:
    kind: BlockKind
    text: str
    level: int = 0  # heading level 1-6; 0 for other kinds
    page: int | None = None  # PDF page, from 1


@dataclass(frozen=True)
class Extracted:
    title: str
    blocks: list[Block]
    pages: int | None  # PDF page count; None for other formats


class ExtractionError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_EXTENSIONS: dict[str, Format] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
_CONTENT_TYPES: dict[str, Format] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
# Content types that say nothing about the format: sniffing decides.
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


def extract(
    *,
    data: bytes,
    filename: str = "",
    content_type: str = "",
    max_pages: int = DEFAULT_MAX_PAGES,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Extracted:
    """The blocks of an uploaded file. The format comes from the file name's extension, then
    the content type, then the bytes (a PDF starts with %PDF-); otherwise it is read as text.
    The title is the document's own (HTML <title>, first heading, PDF metadata), else the file
    name without its extension."""
    fmt = _detect_format(data=data, filename=filename, content_type=content_type)
    if not data.strip():
        raise ExtractionError("The file is empty.")
    if fmt == "pdf":
        extracted = _extract_pdf(data, max_pages=max_pages, max_chars=max_chars)
    elif fmt == "html":
        extracted = _extract_html(data, max_chars=max_chars)
        if not extracted.blocks:
            raise ExtractionError(_NO_TEXT)
    else:
        extracted = extract_text(_decode(data), format=fmt, max_chars=max_chars)
    if not extracted.title:
        stem = PurePosixPath(filename.replace("\\", "/")).stem if filename else ""
        extracted = Extracted(title=stem, blocks=extracted.blocks, pages=extracted.pages)
    return extracted


def extract_text(text: str, *, format: str, max_chars: int = DEFAULT_MAX_CHARS) -> Extracted:
    """The blocks of pasted text; format is "text", "markdown" or "html"."""
    if len(text) > max_chars:
        raise ExtractionError(_too_long(max_chars))
    if not text.strip():
        raise ExtractionError("The text is empty.")
    if format == "text":
        extracted = Extracted(title="", blocks=_text_blocks(text), pages=None)
    elif format == "markdown":
        extracted = _extract_markdown(text)
    elif format == "html":
        extracted = _extract_html(text, max_chars=max_chars)
    else:
        raise ExtractionError(f"Unsupported format: {format}.")
    if not extracted.blocks:
        raise ExtractionError(_NO_TEXT)
    return extracted


def _detect_format(*, data: bytes, filename: str, content_type: str) -> Format:
    extension = PurePosixPath(filename.replace("\\", "/")).suffix.lower() if filename else ""
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _CONTENT_TYPES:
        return _CONTENT_TYPES[mime]
    if data.lstrip()[:5] == b"%PDF-":
        return "pdf"
    if extension:
        raise ExtractionError(
            f"Unsupported format: {extension} files cannot be read "
            "(upload .txt, .md, .html or .pdf)."
        )
    if mime not in _GENERIC_TYPES and not mime.startswith("text/"):
        raise ExtractionError(
            f"Unsupported format: {mime} cannot be read (upload .txt, .md, .html or .pdf)."
        )
    return "text"


# Markup with nothing to read once boilerplate is dropped: only a menu, only images...
_NO_TEXT = "The document has no readable text."


def _too_long(max_chars: int) -> str:
    return f"The document is too long: more than {max_chars:,} characters of text."


# Controls other than tab, newline, form feed and carriage return: text has (almost) none.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1252 (Latin-1 as written in practice), else
    Latin-1. Latin-1 decodes any bytes, so binary is told from text by its control characters."""
    text: str | None = None
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    assert text is not None  # latin-1 decodes every byte
    controls = len(_CONTROL.findall(text))
    if "\x00" in text or controls > max(2, len(text) // 100):
        raise ExtractionError("The file is not text: it is neither UTF-8 nor Latin-1 encoded text.")
    return text


_SPACES = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n[ \t\f\v\r]*\n")


def _normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _text_blocks(text: str, page: int | None = None) -> list[Block]:
    """Paragraphs split on blank lines; line breaks inside one are kept (a plain-text file's
    lines may matter: addresses, verse), trailing spaces are not."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = []
    for part in _BLANK_LINES.split(text):
        lines = [line.strip() for line in part.split("\n")]
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            blocks.append(Block(kind="paragraph", text=paragraph, page=page))
    return blocks


# --- Markdown ---------------------------------------------------------------------------


def _inline_text(token: Token) -> str:
    """The readable text of an inline token: text and code spans kept, link targets and HTML
    dropped, an image replaced by its alt text."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append(_inline_text(child))
    return _normalise("".join(parts))


def _extract_markdown(text: str) -> Extracted:
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks: list[Block] = []
    heading_level = 0
    list_depth = 0
    row: list[str] | None = None
    for token in tokens:
        if token.type == "heading_open":
            heading_level = int(token.tag[1])
        elif token.type == "heading_close":
            heading_level = 0
        elif token.type == "list_item_open":
            list_depth += 1
        elif token.type == "list_item_close":
            list_depth -= 1
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close":
            if row is not None and any(row):
                blocks.append(Block(kind="paragraph", text=" | ".join(row)))
            row = None
        elif token.type in ("fence", "code_block"):
            code = token.content.rstrip("\n")
            if code.strip():
                blocks.append(Block(kind="code", text=code))
        elif token.type == "html_block":
            html = _normalise(BeautifulSoup(token.content, "html.parser").get_text(" "))
            if html:
                blocks.append(Block(kind="paragraph", text=html))
        elif token.type == "inline":
            content = _inline_text(token)
            if row is not None:
                row.append(content)
            elif not content:
                continue
            elif heading_level:
                blocks.append(Block(kind="heading", text=content, level=heading_level))
            elif list_depth:
                blocks.append(Block(kind="list_item", text=content))
            else:
                blocks.append(Block(kind="paragraph", text=content))
    return Extracted(title=_first_heading(blocks), blocks=blocks, pages=None)


def _first_heading(blocks: list[Block]) -> str:
    headings = [block for block in blocks if block.kind == "heading"]
    if not headings:
        return ""
    return min(headings, key=lambda block: block.level).text


# --- HTML -------------------------------------------------------------------------------

_DROPPED = (
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "header",
    "footer",
    "aside",
    "svg",
    "iframe",
    "form",
    "button",
)
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
# Elements that end the running paragraph. Anything else is inline (a, em, span, code...).
_BLOCK_ELEMENTS = _HEADINGS | {
    "address",
    "article",
    "blockquote",
    "body",
    "caption",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "hr",
    "html",
    "li",
    "main",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "ul",
}


# Elements that never have content or an end tag.
_VOID_ELEMENTS = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "keygen",
    "link",
    "meta",
    "param",
    "source",
    "track",
    "wbr",
}


class _Element:
    __slots__ = ("dropped", "name", "start")

    def __init__(self, name: str, dropped: bool, start: int) -> None:
        self.name = name
        self.dropped = dropped  # boilerplate: it and everything in it is left out
        self.start = start  # index of its start event


# Events of the parsed page, boilerplate left out: ("start", name), ("end", name), ("text", str).
_Event = tuple[str, str]


class _HtmlEvents(HTMLParser):
    """One pass of the standard library's tokenizer over the page, no tree built (a tree of the
    whole page cost three quarters of the extraction's time): the start, end and text events of
    what is not boilerplate, every element closed (an end tag closes the elements left open in
    it, a stray end tag is ignored), and where the candidate roots are."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[_Event] = []
        self.stack: list[_Element] = []
        self.open: dict[str, int] = {}  # how many of each element are open in the stack
        self.dropped = 0  # open dropped elements
        self.title: list[str] | None = None
        self.title_done = False
        self.in_title = False
        # [start, end) event ranges of the first <main>, the first role="main" and the <article>s
        # outside another article, and of <body>.
        self.main: list[int] | None = None
        self.role_main: list[int] | None = None
        self.articles: list[list[int]] = []
        self.body: list[int] | None = None
        self.article_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_ELEMENTS:
            if not self.dropped and tag not in _DROPPED:
                self.events.append(("start", tag))
                self.events.append(("end", tag))
            return
        dropped = tag in _DROPPED or (
            tag == "a" and "headerlink" in (dict(attrs).get("class") or "").split()
        )
        element = _Element(tag, dropped, len(self.events))
        self.stack.append(element)
        self.open[tag] = self.open.get(tag, 0) + 1
        if dropped:
            self.dropped += 1
            return
        if self.dropped:
            return
        if tag == "title" and not self.title_done:
            self.title, self.in_title = [], True
        if tag == "main" and self.main is None:
            self.main = [len(self.events), -1]
        elif self.role_main is None and ("role", "main") in attrs:
            self.role_main = [len(self.events), -1]
        if tag == "article":
            if not self.article_depth:
                self.articles.append([len(self.events), -1])
            self.article_depth += 1
        if tag == "body" and self.body is None:
            self.body = [len(self.events), -1]
        self.events.append(("start", tag))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_ELEMENTS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open.get(tag):
            return  # a stray end tag
        while self.stack:
            element = self.stack.pop()
            self._close(element)
            if element.name == tag:
                break

    def _close(self, element: _Element) -> None:
        self.open[element.name] -= 1
        if element.dropped:
            self.dropped -= 1
            return
        if self.dropped:
            return
        self.events.append(("end", element.name))
        end = len(self.events)
        if element.name == "title" and self.in_title:
            self.in_title, self.title_done = False, True
        for span in (self.main, self.role_main, self.body, *self.articles[-1:]):
            if span is not None and span[0] == element.start and span[1] < 0:
                span[1] = end
        if element.name == "article":
            self.article_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.dropped:
            return
        if self.in_title and self.title is not None:
            self.title.append(data)
            return
        self.events.append(("text", data))

    def close(self) -> None:
        super().close()
        while self.stack:
            self._close(self.stack.pop())


def _parse_html(markup: str | bytes) -> _HtmlEvents:
    if isinstance(markup, bytes):
        # The encoding as BeautifulSoup finds it: a BOM, the page's meta charset, then a guess.
        text = UnicodeDammit(markup, is_html=True).unicode_markup
        markup = text if text is not None else markup.decode("utf-8", "replace")
    parser = _HtmlEvents()
    parser.feed(markup)
    parser.close()
    return parser


def _extract_html(markup: str | bytes, *, max_chars: int) -> Extracted:
    page = _parse_html(markup)
    title = _normalise("".join(page.title)) if page.title is not None else ""
    events = page.events
    spans: list[list[int]]
    if page.main is not None:
        spans = [page.main]
    elif page.role_main is not None:
        spans = [page.role_main]
    elif page.articles:
        spans = page.articles
    elif page.body is not None:
        spans = [page.body]
    else:
        spans = [[0, len(events)]]
    walker = _HtmlWalker()
    for start, end in spans:
        walker.walk(events, start, end if end >= 0 else len(events))
    if sum(len(block.text) for block in walker.blocks) > max_chars:
        raise ExtractionError(_too_long(max_chars))
    if not title:
        title = _first_heading(walker.blocks)
    return Extracted(title=title, blocks=walker.blocks, pages=None)


class _HtmlWalker:
    """Blocks out of a run of events: text accumulates into a paragraph (a list item inside
    <li>) until a block element starts or ends; headings, <pre> and tables are read whole."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.inline: list[str] = []

    def flush(self, *, in_item: bool) -> None:
        text = _normalise("".join(self.inline))
        self.inline = []
        if text:
            self.blocks.append(Block(kind="list_item" if in_item else "paragraph", text=text))

    def walk(self, events: list[_Event], start: int, end: int) -> None:
        items = 0  # open <li>
        index = start
        while index < end:
            kind, value = events[index]
            index += 1
            if kind == "text":
                self.inline.append(value)
            elif value == "br":
                if kind == "start":
                    self.inline.append(" ")  # a line break inside a paragraph, not a new one
            elif value not in _BLOCK_ELEMENTS:
                continue  # inline: its text joins the paragraph
            elif kind == "end":
                self.flush(in_item=items > 0)
                if value == "li":
                    items -= 1
            else:
                self.flush(in_item=items > 0)
                if value in _HEADINGS or value == "pre" or value == "table":
                    index = self._whole(events, index, end, value)
                elif value == "li":
                    items += 1
        self.flush(in_item=items > 0)

    def _whole(self, events: list[_Event], index: int, end: int, name: str) -> int:
        """A heading, <pre> or table read to its end tag; the index after it."""
        depth = 1
        texts: list[str] = []
        rows: list[list[list[str]]] = []  # a table's rows, each a list of cells' texts
        cells: list[list[str]] = []  # the open cells of the current row, innermost last
        row: list[list[str]] | None = None
        while index < end:
            kind, value = events[index]
            index += 1
            if kind == "text":
                texts.append(value)
                for cell in cells:
                    cell.append(value)
                continue
            if value == name:
                depth += 1 if kind == "start" else -1
                if not depth:
                    break
            if name != "table":
                continue
            if value == "tr" and depth == 1:
                if kind == "start":
                    row, cells = [], []
                elif row is not None:
                    rows.append(row)
                    row, cells = None, []
            elif value in ("td", "th") and row is not None:
                if kind == "start":
                    row.append([])
                    cells.append(row[-1])
                elif cells:
                    cells.pop()
        if name in _HEADINGS:
            text = _normalise("".join(texts))
            if text:
                self.blocks.append(Block(kind="heading", text=text, level=int(name[1])))
        elif name == "pre":
            code = "".join(texts).strip("\n")
            if code.strip():
                self.blocks.append(Block(kind="code", text=code))
        else:
            for cells_of_row in rows:
                texts_of_row = [_normalise(" ".join(cell)) for cell in cells_of_row]
                texts_of_row = [text for text in texts_of_row if text]
                if texts_of_row:
                    self.blocks.append(Block(kind="paragraph", text=" | ".join(texts_of_row)))
        return index


# --- PDF --------------------------------------------------------------------------------


_ENCRYPTED = "The PDF is encrypted; upload an unprotected copy."


def _extract_pdf(data: bytes, *, max_pages: int, max_chars: int) -> Extracted:
    # Imported here: pypdf is only needed for PDFs and takes a while to import.
    from pypdf import PdfReader

    corrupt = "The PDF is damaged and cannot be read."
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # A PDF with only an owner password (printing or copying restricted) opens with
            # the empty user password, as every viewer opens it.
            try:
                opened = reader.decrypt("")
            except Exception as error:  # pypdf raises several types for unsupported ciphers
                raise ExtractionError(_ENCRYPTED) from error
            if not opened:
                raise ExtractionError(_ENCRYPTED)
        page_count = len(reader.pages)
    except ExtractionError:
        raise
    except Exception as error:
        # Untrusted bytes reach every corner of pypdf, which then raises PdfReadError, its
        # LimitReachedError, or plain KeyError/ValueError/RecursionError...: all one reason.
        raise ExtractionError(corrupt) from error
    if page_count > max_pages:
        raise ExtractionError(
            f"The PDF has {page_count:,} pages; at most {max_pages:,} can be read."
        )
    blocks: list[Block] = []
    total = 0
    for number, page in enumerate(reader.pages, start=1):
        try:
            paragraphs = _pdf_paragraphs(page)
        except Exception as error:  # as above: any of pypdf's failures on a damaged page
            raise ExtractionError(f"Page {number} of the PDF is damaged.") from error
        for paragraph in paragraphs:
            total += len(paragraph)
            if total > max_chars:
                raise ExtractionError(_too_long(max_chars))
            blocks.append(Block(kind="paragraph", text=paragraph, page=number))
    if not blocks:
        raise ExtractionError("This PDF has no text layer (scanned pages?)")
    title = ""
    try:
        metadata = reader.metadata
        if metadata is not None and metadata.title:
            title = _normalise(str(metadata.title))
    except Exception:
        # A damaged information dictionary costs the title, not the document.
        logger.info("PDF metadata unreadable", exc_info=True)
    return Extracted(title=title, blocks=blocks, pages=page_count)


def _pdf_paragraphs(page: "PageObject") -> list[str]:
    """A page's paragraphs. pypdf's text has one line per text line and no blank lines, so the
    vertical position of each line (from pypdf's visitor) tells paragraphs apart: a gap well
    over the page's usual line spacing, or a jump up (a new column), starts a new paragraph.
    Lines are then joined with spaces, a word hyphenated across a line break rejoined."""
    fragments: list[tuple[str, float]] = []

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        if text:
            fragments.append((text, tm[4] * cm[1] + tm[5] * cm[3] + cm[5]))

    text = page.extract_text(visitor_text=visit)
    lines: list[tuple[str, float | None]] = []
    if "".join(fragment for fragment, _ in fragments) == text:
        current, start = "", None
        for fragment, y in fragments:
            for index, piece in enumerate(fragment.split("\n")):
                if index:
                    lines.append((current, start))
                    current, start = "", None
                if piece.strip() and start is None and not current.strip():
                    start = y
                current += piece
        lines.append((current, start))
    else:  # pypdf assembled its text differently: no positions, blank lines alone split
        lines = [(line, None) for line in text.split("\n")]
    gaps = sorted(
        previous - y
        for (_, previous), (_, y) in itertools.pairwise(lines)
        if previous is not None and y is not None and previous - y > 0.5
    )
    spacing = gaps[len(gaps) // 2] if gaps else 0.0
    paragraphs: list[list[str]] = [[]]
    last_y: float | None = None
    for line, line_y in lines:
        line = unicodedata.normalize("NFKC", line.replace("\x00", "")).strip()
        if not line:
            paragraphs.append([])
            continue
        if (
            spacing
            and line_y is not None
            and last_y is not None
            and (last_y - line_y > 1.6 * spacing or line_y - last_y > spacing)
        ):
            paragraphs.append([])
        paragraphs[-1].append(line)
        if line_y is not None:
            last_y = line_y
    out = []
    for paragraph in paragraphs:
        joined = " ".join(paragraph)
        joined = _HYPHENATED.sub("", joined)
        joined = _normalise(joined)
        if joined:
            out.append(joined)
    return out


# A word cut at a line end ("exam-" then "ple"), as joined above with a space.
_HYPHENATED = re.compile(r"(?<=[a-z])- (?=[a-z])")
