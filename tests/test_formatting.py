"""channels_app.formatting: mIRC formatting rendered as safe, well-formed HTML; hostile text
stays text."""

from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.template import Context, Template
from django.utils.safestring import SafeString
from hypothesis import example, given, settings
from hypothesis import strategies as st

from channels_app.formatting import colours_css, render_irc_html, strip_irc_formatting

ROOT = Path(__file__).resolve().parent.parent
LINK = 'rel="noopener noreferrer nofollow" target="_blank"'


def test_plain_text_is_escaped_and_unwrapped() -> None:
    html = render_irc_html("a < b && \"c\" > 'd'")
    assert isinstance(html, SafeString)
    assert html == "a &lt; b &amp;&amp; &quot;c&quot; &gt; &#x27;d&#x27;"


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("\x02bold\x02 plain", '<span class="irc-bold">bold</span> plain'),
        ("\x1ditalic", '<span class="irc-italic">italic</span>'),
        ("\x1funder\x1f", '<span class="irc-underline">under</span>'),
        ("\x1estruck", '<span class="irc-strike">struck</span>'),
        ("\x11mono", '<span class="irc-mono">mono</span>'),
        ("\x16rev", '<span class="irc-reverse">rev</span>'),
        # Nesting: each run gets every style active over it, as flat spans.
        (
            "\x02b\x1dbi\x02i\x1d.",
            '<span class="irc-bold">b</span><span class="irc-bold irc-italic">bi</span>'
            '<span class="irc-italic">i</span>.',
        ),
        # Reset ends everything, colours included.
        (
            "\x02\x1f\x034both\x0f plain",
            '<span class="irc-bold irc-underline irc-fg-4">both</span> plain',
        ),
        # Codes that cancel out leave no empty span.
        ("\x02\x02x", "x"),
        ("x\x02", "x"),
    ],
)
def test_formatting_codes(text: str, html: str) -> None:
    assert render_irc_html(text) == html


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("\x034red", '<span class="irc-fg-4">red</span>'),
        ("\x0304red", '<span class="irc-fg-4">red</span>'),
        ("\x034,1red on black", '<span class="irc-fg-4 irc-bg irc-bg-1">red on black</span>'),
        ("\x0398,88x", '<span class="irc-fg-98 irc-bg irc-bg-88">x</span>'),
        # Two digits at most: the rest is text.
        ("\x03123", '<span class="irc-fg-12">3</span>'),
        ("\x0304,011", '<span class="irc-fg-4 irc-bg irc-bg-1">1</span>'),
        # A background needs a foreground; ",5" is text after a bare \x03.
        ("\x03,5x", ",5x"),
        # The background stays until changed or reset.
        (
            "\x033,5a\x038b\x03c",
            '<span class="irc-fg-3 irc-bg irc-bg-5">a</span>'
            '<span class="irc-fg-8 irc-bg irc-bg-5">b</span>c',
        ),
        # 99 is the default colour: no class.
        ("\x0399,4x", '<span class="irc-bg irc-bg-4">x</span>'),
        ("\x0399x", "x"),
        # Reverse swaps the colours.
        ("\x034,1\x16x", '<span class="irc-reverse irc-fg-1 irc-bg irc-bg-4">x</span>'),
        # Hex colours map to the nearest of the 99.
        ("\x04FF0000red", '<span class="irc-fg-4">red</span>'),
        ("\x04fe0101,000080x", '<span class="irc-fg-4 irc-bg irc-bg-2">x</span>'),
        ("\x04FF0000a\x04b", '<span class="irc-fg-4">a</span>b'),
        ("\x04GGx", "GGx"),
    ],
)
def test_colours(text: str, html: str) -> None:
    assert render_irc_html(text) == html


@pytest.mark.parametrize(
    ("text", "html"),
    [
        (
            "see https://example.com/a?b=1&c=2.",
            f'see <a href="https://example.com/a?b=1&amp;c=2" {LINK}>'
            "https://example.com/a?b=1&amp;c=2</a>.",
        ),
        ("http://x.org", f'<a href="http://x.org" {LINK}>http://x.org</a>'),
        ("www.example.com/x", f'<a href="https://www.example.com/x" {LINK}>www.example.com/x</a>'),
        (
            "join ircs://irc.libera.chat:6697/#palaver!",
            f'join <a href="ircs://irc.libera.chat:6697/#palaver" {LINK}>'
            "ircs://irc.libera.chat:6697/#palaver</a>!",
        ),
        (
            "(https://en.wikipedia.org/wiki/IRC_(protocol))",
            f'(<a href="https://en.wikipedia.org/wiki/IRC_(protocol)" {LINK}>'
            "https://en.wikipedia.org/wiki/IRC_(protocol)</a>)",
        ),
        (
            "<https://example.com>",
            f'&lt;<a href="https://example.com" {LINK}>https://example.com</a>&gt;',
        ),
        # Formatting inside a link: spans sit inside the anchor, never across it.
        (
            "\x02go https://ex\x034ample.com now",
            '<span class="irc-bold">go </span>'
            f'<a href="https://example.com" {LINK}><span class="irc-bold">https://ex</span>'
            '<span class="irc-bold irc-fg-4">ample.com</span></a>'
            '<span class="irc-bold irc-fg-4"> now</span>',
        ),
        ("https://", "https://"),
        ("ftp://example.com", "ftp://example.com"),
        ("xhttp://example.com", "xhttp://example.com"),
    ],
)
def test_links(text: str, html: str) -> None:
    assert render_irc_html(text) == html


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "javascript:alert(1)",
        '<a href="javascript:alert(1)">click</a>',
        'http://x.org/"><script>alert(1)</script>',
        "https://example.com/'onmouseover='alert(1)",
        "\x02<svg onload=alert(1)>\x02",
        "www.<b>x</b>.com",
        "&lt;script&gt; already escaped",
    ],
)
def test_payloads_render_inert(payload: str) -> None:
    html = render_irc_html(payload)
    tags = _tags(html)
    assert {name for name, _ in tags} <= {"span", "a"}
    for name, attributes in tags:
        if name == "a":
            assert (dict(attributes)["href"] or "").startswith(
                ("http://", "https://", "irc://", "ircs://")
            )
            assert set(dict(attributes)) == {"href", "rel", "target"}
        else:
            assert set(dict(attributes)) == {"class"}
    assert "javascript:" not in "".join(
        value or "" for _, attributes in tags for _, value in attributes
    )
    assert _text(html) == strip_irc_formatting(payload)


def test_strip_irc_formatting() -> None:
    assert strip_irc_formatting("\x02bold\x02 \x0304,12red\x03 \x04ff0000hex\x0f \x01x") == (
        "bold red hex x"
    )
    assert strip_irc_formatting("tab\tand\nnewline\r\x07") == "tab\tand\nnewline"
    assert strip_irc_formatting("\x03,5") == ",5"


def test_template_filters() -> None:
    template = Template(
        "{% load irc_format %}<p>{{ text|irc_html }}</p><h1>{{ text|irc_plain }}</h1>"
    )
    html = template.render(Context({"text": "\x02<b>hi</b>\x02"}))
    assert html == (
        '<p><span class="irc-bold">&lt;b&gt;hi&lt;/b&gt;</span></p><h1>&lt;b&gt;hi&lt;/b&gt;</h1>'
    )
    assert Template("{% load irc_format %}{{ x|irc_html }}").render(Context({"x": None})) == ""


def test_stylesheet_is_generated_and_complete() -> None:
    css = (ROOT / "static/css/irc-colours.css").read_text()
    assert css == colours_css(), "regenerate static/css/irc-colours.css (see its header)"
    for number in range(99):
        assert f".irc-fg-{number} {{" in css
        assert f".irc-bg-{number} {{" in css
    assert "style=" not in render_irc_html("\x034,5x")  # classes only: the CSP forbids styles


# --- properties ------------------------------------------------------------------------------


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.balanced = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and "a" in self.stack:
            self.balanced = False  # nested anchors
        self.tags.append((tag, attrs))
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.balanced = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector


def _tags(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    return _parse(html).tags


def _text(html: str) -> str:
    return "".join(_parse(html).text)


_PIECES = st.sampled_from(
    ["\x02", "\x03", "\x034", "\x0304,12", "\x0399,1", "\x03,", "\x04", "\x04FF8800",
     "\x04123456,abcdef", "\x0f", "\x11", "\x16", "\x1d", "\x1e", "\x1f", "\x01", "\x00", "\r",
     "<", ">", "&", '"', "'", "<script>", "</span>", "<a href=", "javascript:", "http://",
     "https://x.y/", "ircs://", "www.", "ex.com", ".", ",", ")", "(", " ", "a", "1", "é", "\n"]
)  # fmt: skip
_IRC_TEXT = st.one_of(
    st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=30).map("".join),
    st.text(max_size=80),
)


@settings(database=None, deadline=None)
@given(_IRC_TEXT)
@example("\x02https://a.b\x02c\x0f")
def test_output_is_well_formed_and_carries_only_the_text(text: str) -> None:
    html = render_irc_html(text)
    collector = _parse(html)
    assert collector.balanced and not collector.stack
    assert {name for name, _ in collector.tags} <= {"span", "a"}
    # Every "<" in the output opens or closes one of our tags: none comes from the input.
    stripped: str = html
    for fragment in ("</span>", "</a>"):
        stripped = stripped.replace(fragment, "")
    assert stripped.count("<") == sum(1 for _ in collector.tags)
    assert "".join(collector.text) == strip_irc_formatting(text)
    assert not any(char in strip_irc_formatting(text) for char in "\x02\x03\x04\x0f\x16\x1d\x1f")
