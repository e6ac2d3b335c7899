"""mIRC formatting as safe HTML for the chat, and as plain text for notifications and search.

IRC text is never trusted: every character of it is HTML-escaped, and the only markup in the
output is what this module writes itself: `<span class="...">` for a run of formatted text and
`<a href rel target>` for a link. Spans are flat (one per run of text in one style, never
nested), a link is opened and closed between spans, so the output is well-formed whatever the
input. Colours are CSS classes (the site's Content-Security-Policy forbids inline styles), styled
by static/css/irc-colours.css, which `colours_css()` generates.

The codes, as mIRC and modern.ircdocs.horse define them: \\x02 bold, \\x1d italic, \\x1f
underline, \\x1e strikethrough, \\x11 monospace, \\x16 reverse (toggles); \\x0f resets all;
\\x03[fg[,bg]] sets colours 0-98 (99 is "default"; a background needs a foreground; a bare \\x03
resets both); \\x04[RRGGBB[,RRGGBB]] does the same with hex colours, shown as the nearest of the
99. Other C0 control characters (the CTCP \\x01, bell, CR...) are dropped; tab and newline stay.
"""

import functools
import html
import re

from django.utils.safestring import SafeString, mark_safe

# The 99 mIRC colours: 0-15 the classic ones, 16-98 the extended ones mIRC 7 added.
MIRC_COLOURS: tuple[str, ...] = (
    # 0-15
    "ffffff", "000000", "00007f", "009300", "ff0000", "7f0000", "9c009c", "fc7f00",
    "ffff00", "00fc00", "009393", "00ffff", "0000fc", "ff00ff", "7f7f7f", "d2d2d2",
    # 16-98
    "470000", "472100", "474700", "324700", "004700", "00472c", "004747", "002747",
    "000047", "2e0047", "470047", "47002a", "740000", "743a00", "747400", "517400",
    "007400", "007449", "007474", "004074", "000074", "4b0074", "740074", "740045",
    "b50000", "b56300", "b5b500", "7db500", "00b500", "00b571", "00b5b5", "0063b5",
    "0000b5", "7500b5", "b500b5", "b5006b", "ff0000", "ff8c00", "ffff00", "b2ff00",
    "00ff00", "00ffa0", "00ffff", "008cff", "0000ff", "a500ff", "ff00ff", "ff0098",
    "ff5959", "ffb459", "ffff71", "cfff60", "6fff6f", "65ffc9", "6dffff", "59b4ff",
    "5959ff", "c459ff", "ff66ff", "ff59bc", "ff9c9c", "ffd39c", "ffff9c", "e2ff9c",
    "9cff9c", "9cffdb", "9cffff", "9cd3ff", "9c9cff", "dc9cff", "ff9cff", "ff94d3",
    "000000", "131313", "282828", "363636", "4d4d4d", "656565", "818181", "9f9f9f",
    "bcbcbc", "e2e2e2", "ffffff",
)  # fmt: skip

_BOLD, _ITALIC, _UNDERLINE, _STRIKE, _MONO, _REVERSE = 1, 2, 4, 8, 16, 32
_TOGGLES = {
    "\x02": _BOLD,
    "\x1d": _ITALIC,
    "\x1f": _UNDERLINE,
    "\x1e": _STRIKE,
    "\x11": _MONO,
    "\x16": _REVERSE,
}
_FLAG_CLASSES = (
    (_BOLD, "irc-bold"),
    (_ITALIC, "irc-italic"),
    (_UNDERLINE, "irc-underline"),
    (_STRIKE, "irc-strike"),
    (_MONO, "irc-mono"),
    (_REVERSE, "irc-reverse"),
)
RESET = "\x0f"

# A formatting code, or another control character to drop. The alternatives are tried in order,
# so the colour forms win over the bare control-character class at the end.
_CODE = re.compile(
    r"\x03(?:([0-9]{1,2})(?:,([0-9]{1,2}))?)?"
    r"|\x04(?:([0-9A-Fa-f]{6})(?:,([0-9A-Fa-f]{6}))?)?"
    r"|[\x00-\x08\x0b-\x1f\x7f]"
)

_URL = re.compile(r"\b(?:(?:https?|ircs?)://|www\.)[^\s<>\"\x00-\x1f\x7f]+", re.IGNORECASE)
_URL_TRAILING = ".,:;!?'\"*"
_PAIRS = ((")", "("), ("]", "["), ("}", "{"))
_URL_HAS_HOST = re.compile(r"(?:://|^www\.)\w", re.IGNORECASE)
_LINK_ATTRIBUTES = 'rel="noopener noreferrer nofollow" target="_blank"'


def strip_irc_formatting(text: str) -> str:
    """The text without formatting codes (colour numbers included) or other control characters:
    for notifications, page titles and search snippets."""
    return _CODE.sub("", text)


def render_irc_html(text: str) -> SafeString:
    """The text as HTML: escaped, formatting as `irc-*` classes, links clickable."""
    runs = _styled_runs(text)
    plain = "".join(run for run, _ in runs)
    links = _find_links(plain)
    out: list[str] = []
    link_index = 0
    in_link = False
    offset = 0
    for run, classes in runs:
        run_end = offset + len(run)
        position = offset
        while position < run_end:
            if in_link:
                boundary = links[link_index][1]
            elif link_index < len(links):
                boundary = links[link_index][0]
            else:
                boundary = run_end
            piece_end = min(boundary, run_end)
            if piece_end > position:
                piece = html.escape(run[position - offset : piece_end - offset])
                out.append(f'<span class="{classes}">{piece}</span>' if classes else piece)
                position = piece_end
            if position == boundary:
                if in_link:
                    out.append("</a>")
                    link_index += 1
                    in_link = False
                elif link_index < len(links):
                    href = html.escape(links[link_index][2])
                    out.append(f'<a href="{href}" {_LINK_ATTRIBUTES}>')
                    in_link = True
        offset = run_end
    if in_link:
        out.append("</a>")
    return mark_safe("".join(out))  # noqa: S308 (built above from escaped text only)


def _styled_runs(text: str) -> list[tuple[str, str]]:
    """(text, class attribute) for each run of text in one style, codes removed."""
    runs: list[tuple[str, str]] = []
    flags = 0
    fg: int | None = None
    bg: int | None = None
    position = 0

    def add(run: str) -> None:
        classes = _classes(flags, fg, bg)
        if runs and runs[-1][1] == classes:
            runs[-1] = (runs[-1][0] + run, classes)
        else:
            runs.append((run, classes))

    for match in _CODE.finditer(text):
        if match.start() > position:
            add(text[position : match.start()])
        position = match.end()
        code = match.group()[0]
        if code == "\x03":
            if match[1] is None:
                fg = bg = None
            else:
                fg = _colour_number(match[1])
                if match[2] is not None:
                    bg = _colour_number(match[2])
        elif code == "\x04":
            if match[3] is None:
                fg = bg = None
            else:
                fg = _nearest_colour(match[3])
                if match[4] is not None:
                    bg = _nearest_colour(match[4])
        elif code == RESET:
            flags, fg, bg = 0, None, None
        else:
            flags ^= _TOGGLES.get(code, 0)
    if position < len(text):
        add(text[position:])
    return runs


def _colour_number(digits: str) -> int | None:
    number = int(digits)
    return number if number < len(MIRC_COLOURS) else None  # 99: the default colour


@functools.lru_cache(maxsize=256)
def _nearest_colour(hex_colour: str) -> int:
    """The mIRC colour closest to an RGB hex colour ("redmean" weighted distance)."""
    red, green, blue = _rgb(hex_colour)

    def distance(index: int) -> float:
        r, g, b = _rgb(MIRC_COLOURS[index])
        mean = (red + r) / 2
        return (
            (2 + mean / 256) * (red - r) ** 2
            + 4 * (green - g) ** 2
            + (2 + (255 - mean) / 256) * (blue - b) ** 2
        )

    return min(range(len(MIRC_COLOURS)), key=distance)


@functools.lru_cache(maxsize=1024)
def _classes(flags: int, fg: int | None, bg: int | None) -> str:
    if flags & _REVERSE:
        fg, bg = bg, fg
    names = [name for flag, name in _FLAG_CLASSES if flags & flag]
    if fg is not None:
        names.append(f"irc-fg-{fg}")
    if bg is not None:
        # `irc-bg` marks text on a background the sender chose: its foreground is then used as
        # is, not adjusted to the page's background.
        names += ["irc-bg", f"irc-bg-{bg}"]
    return " ".join(names)


def _find_links(plain: str) -> list[tuple[int, int, str]]:
    """(start, end, href) of each link in the text without codes."""
    links = []
    for match in _URL.finditer(plain):
        url = match.group()
        # Punctuation after a link ends the sentence, not the link; a closing bracket belongs to
        # the link only when it closes one opened inside it (Wikipedia's "IRC_(protocol)").
        unclosed = {closer: url.count(closer) - url.count(opener) for closer, opener in _PAIRS}
        end = len(url)
        while end:
            last = url[end - 1]
            if last in _URL_TRAILING:
                end -= 1
            elif unclosed.get(last, 0) > 0:
                unclosed[last] -= 1
                end -= 1
            else:
                break
        url = url[:end]
        if not _URL_HAS_HOST.search(url):
            continue
        href = f"https://{url}" if url[:4].lower() == "www." else url
        links.append((match.start(), match.start() + len(url), href))
    return links


# --- the stylesheet --------------------------------------------------------------------------

# The page backgrounds of static/css/palaver.css (--bg and --surface) in each colour scheme.
_LIGHT_BACKGROUNDS = ("ffffff", "f6f7fb")
_DARK_BACKGROUNDS = ("1b1e27", "12141b")
_MIN_CONTRAST = 4.5  # WCAG AA for body text


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour, 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


def _luminance(rgb: tuple[int, int, int]) -> float:
    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(channel) for channel in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _readable_on(hex_colour: str, backgrounds: tuple[str, ...], toward: int) -> str:
    """The colour mixed toward black (toward=0) or white (255) just enough to reach
    _MIN_CONTRAST against every one of `backgrounds`."""
    rgb = _rgb(hex_colour)
    targets = [_rgb(background) for background in backgrounds]
    for step in range(51):
        t = step / 50
        mixed = (
            round(rgb[0] + (toward - rgb[0]) * t),
            round(rgb[1] + (toward - rgb[1]) * t),
            round(rgb[2] + (toward - rgb[2]) * t),
        )
        if all(_contrast(mixed, target) >= _MIN_CONTRAST for target in targets):
            return "{:02x}{:02x}{:02x}".format(*mixed)
    return "000000" if toward == 0 else "ffffff"


def colours_css() -> str:
    """The contents of static/css/irc-colours.css (a test checks the file matches)."""
    lines = [
        "/* Generated by channels_app.formatting.colours_css(); edit that, then run:",
        "   .venv/bin/python -c 'from channels_app.formatting import colours_css;"
        ' print(colours_css(), end="")\' > static/css/irc-colours.css',
        "",
        "   Classes written by channels_app.formatting.render_irc_html for mIRC formatting.",
        "   irc-fg-N / irc-bg-N are the 99 mIRC colours (99 itself means the default: no class).",
        "   A foreground on the page's own background is darkened (light scheme) or lightened",
        "   (dark scheme) just enough for 4.5:1 contrast; on a background the sender chose",
        "   (irc-bg), both colours are the sender's, and text with only a background set gets",
        "   black or white, whichever reads better on it. The scheme is the page's color-scheme",
        "   (light-dark()), which follows the account's theme. */",
        ".irc-bold { font-weight: 700; }",
        ".irc-italic { font-style: italic; }",
        ".irc-underline { text-decoration: underline; }",
        ".irc-strike { text-decoration: line-through; }",
        ".irc-underline.irc-strike { text-decoration: underline line-through; }",
        ".irc-mono { font-family: var(--mono, monospace); font-size: .92em; }",
        ".irc-reverse { color: var(--surface, #fff); background-color: var(--text, #1c1f2a); }",
        "",
    ]
    black, white = (0, 0, 0), (255, 255, 255)
    # light-dark() picks by the page's color-scheme, which follows the account's theme (a dark
    # theme on a light device included); the first declaration is for browsers without it.
    for index, colour in enumerate(MIRC_COLOURS):
        light = _readable_on(colour, _LIGHT_BACKGROUNDS, toward=0)
        dark = _readable_on(colour, _DARK_BACKGROUNDS, toward=255)
        lines.append(
            f".irc-fg-{index} {{ color: #{light}; color: light-dark(#{light}, #{dark}); }}"
        )
    lines.append("")
    for index, colour in enumerate(MIRC_COLOURS):
        rgb = _rgb(colour)
        ink = "000" if _contrast(rgb, black) >= _contrast(rgb, white) else "fff"
        lines.append(f".irc-bg-{index} {{ background-color: #{colour}; color: #{ink}; }}")
    lines.append("")
    for index, colour in enumerate(MIRC_COLOURS):
        lines.append(f".irc-bg.irc-fg-{index} {{ color: #{colour}; }}")
    return "\n".join(lines) + "\n"
