"""Knowledge-base text extraction (every format, real PDFs written here) and chunking."""

import io
import itertools
import os
import random
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from knowledge.chunking import ChunkText, chunk, estimate_tokens
from knowledge.extraction import Block, ExtractionError, extract, extract_text

# --- PDFs made at test time --------------------------------------------------------------


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def make_pdf(pages: Sequence[list[str] | None], *, title: str = "") -> bytes:
    """A minimal valid PDF, one page per entry: each string a line of Helvetica text, with a
    blank line's worth of extra space before a line that starts a new paragraph ("" entries).
    None is a page without a content stream (what a scan without OCR looks like to pypdf)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled below
    pages_id = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids = []
    for lines in pages:
        if lines is None:
            page = add(
                f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 612 792] "
                f"/Resources << >> >>".encode()
            )
        else:
            ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
            for line in lines:
                # an empty entry: a gap of two lines and a half, as between paragraphs
                ops.append(f"{_pdf_string(line)} Tj T*" if line else "0 -21 Td")
            ops.append("ET")
            stream = "\n".join(ops).encode("latin-1")
            content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
            page = add(
                f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 612 792] "
                f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {content} 0 R >>".encode()
            )
        kids.append(page)
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_id} 0 R >>".encode()
    objects[pages_id - 1] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    ).encode()
    info = add(f"<< /Title {_pdf_string(title)} >>".encode()) if title else None
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    trailer = f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R"
    if info:
        trailer += f" /Info {info} 0 R"
    out += (trailer + f" >>\nstartxref\n{xref}\n%%EOF\n").encode()
    return bytes(out)


def encrypted(pdf: bytes, *, user_password: str, owner_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


THREE_PAGES = [
    ["The first page talks about herons.", "", "A second paragraph on page one."],
    ["Page two is about kingfishers."],
    ["Page three, the last, is about egrets."],
]


def test_pdf_text_comes_back_page_by_page() -> None:
    result = extract(data=make_pdf(THREE_PAGES, title="Birds"), filename="birds.pdf")
    assert result.pages == 3
    assert result.title == "Birds"
    assert all(block.kind == "paragraph" for block in result.blocks)
    by_page = {page: [b.text for b in result.blocks if b.page == page] for page in (1, 2, 3)}
    assert "herons" in " ".join(by_page[1])
    assert "kingfishers" in " ".join(by_page[2])
    assert "egrets" in " ".join(by_page[3])
    assert "kingfishers" not in " ".join(by_page[1] + by_page[3])


def test_pdf_paragraphs_split_on_large_gaps_and_hyphens_rejoined() -> None:
    pdf = make_pdf(
        [
            [
                "First paragraph, line one,",
                "line two of the same exam-",
                "ple paragraph.",
                "",
                "Second paragraph after a gap.",
                "Still the second.",
            ]
        ]
    )
    result = extract(data=pdf, filename="gaps.pdf")
    assert [b.text for b in result.blocks] == [
        "First paragraph, line one, line two of the same example paragraph.",
        "Second paragraph after a gap. Still the second.",
    ]
    assert {b.page for b in result.blocks} == {1}


def test_pdf_detected_by_content_type_and_by_sniffing() -> None:
    pdf = make_pdf(THREE_PAGES)
    assert extract(data=pdf, content_type="application/pdf").pages == 3
    assert extract(data=pdf).pages == 3
    assert extract(data=pdf, filename="upload", content_type="application/octet-stream").pages == 3


def test_pdf_title_falls_back_to_file_name() -> None:
    assert extract(data=make_pdf(THREE_PAGES), filename="dir/Field notes.pdf").title == (
        "Field notes"
    )


def test_encrypted_pdf_is_refused_with_a_reason() -> None:
    pdf = encrypted(make_pdf(THREE_PAGES), user_password="secret", owner_password="owner")
    with pytest.raises(ExtractionError) as error:
        extract(data=pdf, filename="locked.pdf")
    assert error.value.reason == "The PDF is encrypted; upload an unprotected copy."


def test_pdf_with_only_an_owner_password_opens() -> None:
    pdf = encrypted(make_pdf(THREE_PAGES), user_password="", owner_password="owner")
    assert PdfReader(io.BytesIO(pdf)).is_encrypted
    result = extract(data=pdf, filename="restricted.pdf")
    assert "egrets" in result.blocks[-1].text


def test_pdf_without_text_layer() -> None:
    with pytest.raises(ExtractionError) as error:
        extract(data=make_pdf([None, None]), filename="scan.pdf")
    assert error.value.reason == "This PDF has no text layer (scanned pages?)"


def test_blank_pdf_from_pypdf_writer_has_no_text_layer() -> None:
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(ExtractionError, match="no text layer"):
        extract(data=buffer.getvalue(), filename="blank.pdf")


def test_corrupt_pdf() -> None:
    with pytest.raises(ExtractionError) as error:
        extract(data=b"%PDF-1.4\n" + os.urandom(2000), filename="broken.pdf")
    assert "damaged" in error.value.reason


def test_pdf_page_limit() -> None:
    with pytest.raises(ExtractionError, match="3 pages; at most 2"):
        extract(data=make_pdf(THREE_PAGES), filename="long.pdf", max_pages=2)


def test_character_limit() -> None:
    with pytest.raises(ExtractionError, match="too long"):
        extract(data=make_pdf(THREE_PAGES), filename="long.pdf", max_chars=40)
    with pytest.raises(ExtractionError, match="too long"):
        extract(data=b"word " * 100, filename="long.txt", max_chars=100)


# --- Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.txt", "empty.md", "empty.html", "empty.pdf", ""])
def test_empty_file(name: str) -> None:
    with pytest.raises(ExtractionError, match="empty"):
        extract(data=b"", filename=name)
    with pytest.raises(ExtractionError, match="empty"):
        extract(data=b" \n\t\n", filename=name)


def test_binary_garbage_is_not_text() -> None:
    garbage = bytes(range(256)) * 8
    with pytest.raises(ExtractionError) as error:
        extract(data=garbage, filename="notes.txt")
    assert (
        error.value.reason == "The file is not text: it is neither UTF-8 nor Latin-1 encoded text."
    )
    with pytest.raises(ExtractionError, match="not text"):
        extract(data=os.urandom(4096))


def test_unsupported_extension_is_named() -> None:
    with pytest.raises(ExtractionError) as error:
        extract(data=b"PK\x03\x04 whatever", filename="report.DOCX")
    assert ".docx" in error.value.reason
    assert error.value.reason.startswith("Unsupported format")


def test_unsupported_content_type_is_named() -> None:
    with pytest.raises(ExtractionError, match="image/png"):
        extract(data=b"\x89PNG....", content_type="image/png")


def test_latin1_and_utf8_text() -> None:
    assert extract(data="Café crème".encode("latin-1"), filename="a.txt").blocks[0].text == (
        "Café crème"
    )
    assert extract(data="\ufeffNaïve “quotes”".encode(), filename="a.txt").blocks[0].text == (
        "Naïve “quotes”"
    )
    # Windows-1252 quotes, as Word writes them
    assert extract(data="“quoted”".encode("cp1252"), filename="a.txt").blocks[0].text == (
        "“quoted”"
    )


def test_extract_text_rejects_unknown_format() -> None:
    with pytest.raises(ExtractionError, match="Unsupported format: rtf"):
        extract_text("hello", format="rtf")


# --- Text, Markdown, HTML ----------------------------------------------------------------


def test_plain_text_paragraphs_split_on_blank_lines_and_headings_not_guessed() -> None:
    text = b"Title\n=====\n\n# not a heading\nsecond line  \n\n  \n\nLast paragraph.\r\n"
    result = extract(data=text, filename="notes.txt")
    assert result.title == "notes"
    assert result.pages is None
    assert result.blocks == [
        Block(kind="paragraph", text="Title\n====="),
        Block(kind="paragraph", text="# not a heading\nsecond line"),
        Block(kind="paragraph", text="Last paragraph."),
    ]


MARKDOWN = """# Guide

Intro with *emphasis*, `code` and a [link](https://example.com/x).

## Install

- first step
- second step with ![a diagram](d.png)
  1. nested one

```python
def f():
    return 1
```

    indented code

### Details

| Name | Value |
|------|-------|
| a    | 1     |

<div>raw html block</div>

Setext heading
--------------
"""


def test_markdown_structure() -> None:
    result = extract(data=MARKDOWN.encode(), filename="guide.md")
    assert result.title == "Guide"
    assert result.blocks == [
        Block(kind="heading", text="Guide", level=1),
        Block(kind="paragraph", text="Intro with emphasis, code and a link."),
        Block(kind="heading", text="Install", level=2),
        Block(kind="list_item", text="first step"),
        Block(kind="list_item", text="second step with a diagram"),
        Block(kind="list_item", text="nested one"),
        Block(kind="code", text="def f():\n    return 1"),
        Block(kind="code", text="indented code"),
        Block(kind="heading", text="Details", level=3),
        Block(kind="paragraph", text="Name | Value"),
        Block(kind="paragraph", text="a | 1"),
        Block(kind="paragraph", text="raw html block"),
        Block(kind="heading", text="Setext heading", level=2),
    ]


def test_markdown_by_content_type_and_pasted() -> None:
    by_type = extract(data=MARKDOWN.encode(), content_type="text/markdown; charset=utf-8")
    pasted = extract_text(MARKDOWN, format="markdown")
    assert by_type.blocks == pasted.blocks
    assert pasted.blocks[0] == Block(kind="heading", text="Guide", level=1)


HTML = """<!doctype html>
<html><head><title> The  Page </title><style>p { color: red }</style>
<script>var secret = "script text";</script></head>
<body>
<header>Site header</header>
<nav><ul><li>Home</li><li>About</li></ul></nav>
<main>
  <h1>Main <em>title</em><a class="headerlink" href="#t">¶</a></h1>
  <p>First   paragraph
     spread over lines.</p>
  <ul><li>one</li><li><p>two</p><ol><li>two.a</li></ol></li></ul>
  <pre><code>for x in y:
    print(x)</code></pre>
  <h2>Table</h2>
  <table><tr><th>Col A</th><th>Col B</th></tr><tr><td>1</td><td>2</td></tr></table>
  <div>Loose <b>text</b> in a div<p>inner</p></div>
  <aside>Related links</aside>
  <!-- a comment -->
</main>
<article><p>Outside main</p></article>
<footer>Copyright</footer>
</body></html>"""


def test_html_structure_boilerplate_dropped_main_preferred() -> None:
    result = extract(data=HTML.encode(), filename="page.html")
    assert result.title == "The Page"
    assert result.blocks == [
        Block(kind="heading", text="Main title", level=1),
        Block(kind="paragraph", text="First paragraph spread over lines."),
        Block(kind="list_item", text="one"),
        Block(kind="list_item", text="two"),
        Block(kind="list_item", text="two.a"),
        Block(kind="code", text="for x in y:\n    print(x)"),
        Block(kind="heading", text="Table", level=2),
        Block(kind="paragraph", text="Col A | Col B"),
        Block(kind="paragraph", text="1 | 2"),
        Block(kind="paragraph", text="Loose text in a div"),
        Block(kind="paragraph", text="inner"),
    ]
    everything = " ".join(block.text for block in result.blocks)
    for dropped in (
        "script text",
        "color",
        "Site header",
        "Home",
        "Related",
        "Copyright",
        "Outside main",
        "comment",
        "¶",
    ):
        assert dropped not in everything


def test_html_article_then_body() -> None:
    article = b"<body><div>Chrome</div><article><h2>Post</h2><p>Body.</p></article></body>"
    assert [b.text for b in extract(data=article, filename="a.htm").blocks] == ["Post", "Body."]
    bare = b"<body><div>Chrome</div><h3>Post</h3><p>Body.</p></body>"
    result = extract(data=bare, content_type="text/html")
    assert [b.text for b in result.blocks] == ["Chrome", "Post", "Body."]
    assert result.title == "Post"  # no <title>: the first heading


def test_html_role_main_and_line_breaks() -> None:
    # Sphinx's layout: the content in a div with role="main", sidebars around it.
    page = (
        b'<div class="sphinxsidebar">Quick search</div>'
        b'<div class="body" role="main"><section><h1>os</h1>'
        b"<p>Line one<br>line two</p><dl><dt>os.getcwd()</dt><dd><p>Return it.</p></dd></dl>"
        b"</section></div>"
    )
    assert extract(data=page, filename="os.html").blocks == [
        Block(kind="heading", text="os", level=1),
        Block(kind="paragraph", text="Line one line two"),
        Block(kind="paragraph", text="os.getcwd()"),
        Block(kind="paragraph", text="Return it."),
    ]


def test_markup_without_readable_text() -> None:
    with pytest.raises(ExtractionError, match="no readable text"):
        extract(data=b"<body><nav>Home | About</nav><img src=x></body>", filename="a.html")
    with pytest.raises(ExtractionError, match="no readable text"):
        extract_text("![](image.png)\n\n---\n", format="markdown")


def test_html_encoding_from_meta_charset() -> None:
    page = '<meta charset="windows-1252"><p>Café</p>'.encode("cp1252")
    assert extract(data=page, filename="a.html").blocks[0].text == "Café"


def test_html_unbalanced_markup() -> None:
    """Unclosed paragraphs and items, a stray end tag: each element ends where the markup says
    or where its parent does, as a browser would read it."""
    page = b"<body><p>one<p>two</div><ul><li>a<li>b</ul><h2>Head</h2>tail"
    assert [(b.kind, b.text) for b in extract(data=page, filename="a.html").blocks] == [
        ("paragraph", "one"),
        ("paragraph", "two"),
        ("list_item", "a"),
        ("list_item", "b"),
        ("heading", "Head"),
        ("paragraph", "tail"),
    ]


def test_html_boilerplate_hides_what_it_holds() -> None:
    # A <main> inside a menu is not the page's main content; an icon's title is not text.
    page = (
        b'<nav><main>menu</main></nav><div role="main"><p>content</p>'
        b"<svg><title>icon</title></svg></div>"
    )
    assert [b.text for b in extract(data=page, filename="a.html").blocks] == ["content"]


def test_html_inline_around_blocks_entities_and_cells() -> None:
    page = (
        b"<p>before <span>in <div>block</div> after</span> end</p>"
        b"<table><tr><td>a &amp; <b>b</b></td><td>&lt;c&gt;</td></tr></table>x<br/>y<hr/>z"
    )
    assert [b.text for b in extract(data=page, filename="a.html").blocks] == [
        "before in",
        "block",
        "after end",
        "a & b | <c>",
        "x y",
        "z",
    ]


# --- Chunking ----------------------------------------------------------------------------

SENTENCE = "The quick brown fox jumps over the lazy dog number {}."


def _paragraph(n: int, start: int = 0) -> str:
    return " ".join(SENTENCE.format(i) for i in range(start, start + n))


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100


def test_heading_paths_and_sections() -> None:
    blocks = [
        Block(kind="paragraph", text="Preamble."),
        Block(kind="heading", text="A", level=1),
        Block(kind="paragraph", text="In A."),
        Block(kind="heading", text="B", level=2),
        Block(kind="paragraph", text="In B."),
        Block(kind="heading", text="C", level=3),
        Block(kind="paragraph", text="In C."),
        Block(kind="heading", text="D", level=2),
        Block(kind="paragraph", text="In D."),
        Block(kind="heading", text="Empty", level=1),
        Block(kind="heading", text="E", level=1),
        Block(kind="list_item", text="e1"),
        Block(kind="list_item", text="e2"),
    ]
    chunks = chunk(blocks)
    assert [(c.text, c.heading_path) for c in chunks] == [
        ("Preamble.", ()),
        ("In A.", ("A",)),
        ("In B.", ("A", "B")),
        ("In C.", ("A", "B", "C")),
        ("In D.", ("A", "D")),
        ("- e1\n- e2", ("E",)),
    ]
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_page_of_first_block_is_carried() -> None:
    pdf = make_pdf([[_paragraph(3)], [_paragraph(3, 3)], [_paragraph(40, 6)]])
    blocks = extract(data=pdf, filename="x.pdf").blocks
    chunks = chunk(blocks, target_tokens=60, overlap_tokens=10)
    assert chunks[0].page == 1
    assert {c.page for c in chunks} == {1, 2, 3}
    for c in chunks:
        first_number = int(re.findall(r"number (\d+)", c.text)[0])
        page = 1 if first_number < 3 else 2 if first_number < 6 else 3
        assert c.page == page, c


def test_target_respected_and_long_paragraph_split_at_sentences() -> None:
    blocks = [Block(kind="paragraph", text=_paragraph(100))]
    chunks = chunk(blocks, target_tokens=100, overlap_tokens=20)
    assert len(chunks) > 5
    for c in chunks:
        assert c.tokens == estimate_tokens(c.text)
        assert c.tokens <= 150
        # every chunk ends at a sentence boundary; after the first, starts at one (overlap
        # taken as whole sentences since one sentence fits the overlap)
        assert c.text.endswith(".")
        assert c.text.startswith("The quick")


def test_overlap_within_a_section_only() -> None:
    blocks = [
        Block(kind="heading", text="One", level=1),
        Block(kind="paragraph", text=_paragraph(30)),
        Block(kind="heading", text="Two", level=1),
        Block(kind="paragraph", text=_paragraph(30, 100)),
    ]
    chunks = chunk(blocks, target_tokens=80, overlap_tokens=20)
    for previous, current in itertools.pairwise(chunks):
        first_sentence = current.text.split(". ")[0] + "."
        if previous.heading_path == current.heading_path:
            assert first_sentence in previous.text  # about overlap_tokens repeated
            assert estimate_tokens(first_sentence) <= 20
        else:
            assert first_sentence not in previous.text
            assert "number 100." in current.text.split(". ")[0] + "."


def test_overlap_at_word_boundary_when_a_sentence_is_too_long() -> None:
    words = " ".join(f"w{i}" for i in range(400))
    chunks = chunk([Block(kind="paragraph", text=words)], target_tokens=50, overlap_tokens=10)
    for previous, current in itertools.pairwise(chunks):
        overlap = current.text.split()[:3]
        assert " ".join(overlap) in previous.text
        assert all(re.fullmatch(r"w\d+", w) for w in current.text.split())
    assert all(c.tokens <= 75 for c in chunks)


def test_unsplittable_word_is_cut() -> None:
    chunks = chunk([Block(kind="paragraph", text="x" * 5000)], target_tokens=100, overlap_tokens=0)
    assert "".join(c.text for c in chunks) == "x" * 5000
    assert all(c.tokens <= 100 for c in chunks)


def test_code_split_at_lines() -> None:
    code = "\n".join(f"line_{i} = compute({i})" for i in range(200))
    chunks = chunk([Block(kind="code", text=code)], target_tokens=100, overlap_tokens=0)
    assert len(chunks) > 1
    lines = [line for c in chunks for line in c.text.split("\n")]
    assert lines == code.split("\n")


def test_small_blocks_accumulate_to_the_target() -> None:
    blocks = [Block(kind="paragraph", text=SENTENCE.format(i)) for i in range(100)]
    chunks = chunk(blocks, target_tokens=100, overlap_tokens=0)
    assert 10 <= len(chunks) <= 20
    assert all(c.tokens <= 100 for c in chunks)
    assert all("\n\n" in c.text for c in chunks[:-1])


def test_chunking_is_deterministic_and_validates_arguments() -> None:
    blocks = extract(data=MARKDOWN.encode(), filename="g.md").blocks
    assert chunk(blocks, target_tokens=20, overlap_tokens=5) == chunk(
        blocks, target_tokens=20, overlap_tokens=5
    )
    assert chunk([]) == []
    with pytest.raises(ValueError):
        chunk(blocks, target_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError):
        chunk(blocks, target_tokens=0)


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
_sentence = st.lists(_word, min_size=1, max_size=20).map(lambda ws: " ".join(ws) + ".")
_block = st.one_of(
    st.builds(
        lambda ss: Block(kind="paragraph", text=" ".join(ss)), st.lists(_sentence, min_size=1)
    ),
    st.builds(lambda w: Block(kind="list_item", text=w), _sentence),
    st.builds(lambda ws: Block(kind="code", text="\n".join(ws)), st.lists(_sentence, min_size=1)),
    st.builds(lambda w, n: Block(kind="heading", text=w, level=n), _word, st.integers(1, 6)),
)


def _letters(n: int) -> str:
    out = ""
    while True:
        out = chr(ord("a") + n % 26) + out
        n //= 26
        if n == 0:
            return out


def _unique_words(blocks: list[Block]) -> list[Block]:
    """The same blocks with every word made unique (a suffix counted in letters), so that a
    chunk's words are found at exactly one place in the document."""
    counter = iter(range(10**9))

    def rename(match: re.Match[str]) -> str:
        return f"{match.group()}z{_letters(next(counter))}"

    return [
        Block(kind=b.kind, text=re.sub(r"[a-z]+", rename, b.text), level=b.level) for b in blocks
    ]


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(_block, max_size=30),
    target=st.integers(20, 120),
    overlap_share=st.floats(0, 0.5),
)
def test_every_word_appears_in_order(
    blocks: list[Block], target: int, overlap_share: float
) -> None:
    blocks = _unique_words(blocks)
    overlap = int(target * overlap_share)
    chunks = chunk(blocks, target_tokens=target, overlap_tokens=overlap)
    assert chunks == chunk(blocks, target_tokens=target, overlap_tokens=overlap)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    words = [w for b in blocks if b.kind != "heading" for w in re.findall(r"[a-z]+", b.text)]
    # Each chunk continues the document where the previous one stopped, after repeating at
    # most a few of its last words, and only within one section.
    position = 0
    previous_path: tuple[str, ...] | None = None
    for c in chunks:
        assert c.tokens <= target + overlap
        chunk_words = re.findall(r"[a-z]+", c.text)
        start = words.index(chunk_words[0])
        assert words[start : start + len(chunk_words)] == chunk_words
        assert start <= position
        if c.heading_path != previous_path or overlap == 0:
            assert start == position
        else:
            assert estimate_tokens(" ".join(words[start:position])) <= overlap
        position = start + len(chunk_words)
        previous_path = c.heading_path
    assert position == len(words)


def test_chunk_text_is_a_frozen_record() -> None:
    c = ChunkText(text="t", heading_path=("a",), page=None, tokens=1, ordinal=0)
    with pytest.raises(AttributeError):
        c.text = "u"  # type: ignore[misc]


def test_damaged_pdfs_always_give_a_reason() -> None:
    """Truncated and byte-flipped copies of a valid PDF: each one is read or refused with an
    ExtractionError, never another exception (pypdf raises many kinds)."""
    pdf = make_pdf(THREE_PAGES)
    rng = random.Random(9)
    for attempt in range(300):
        damaged = bytearray(pdf)
        if attempt % 2:
            damaged = damaged[: rng.randrange(10, len(damaged))]
        else:
            for _ in range(5):
                damaged[rng.randrange(9, len(damaged))] = rng.randrange(256)
        try:
            extract(data=bytes(damaged), filename="damaged.pdf")
        except ExtractionError as error:
            assert error.reason
