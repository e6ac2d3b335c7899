"""The IRC wire format: parsing and serialising lines, and the small pieces of IRC the gateway
needs around them (CTCP, ISUPPORT, casemapping, server-time, NAMES entries).

Everything here is pure and synchronous; the gateway frames the byte stream on b"\\n" and hands
each line to `parse_line`, which raises nothing but `ParseError` whatever arrives: malformed,
oversized, non-UTF-8 or NUL-laden lines are what a hostile or broken server sends, and one of
them must never take down the connections of every other account in the process.

What is reused from the `irc` package (20.5) and what is not, and why:

- `irc.message.Tag.parse` unescapes tag values (\\: \\s \\\\ \\r \\n, any other \\x -> x). We
  drop a dangling final backslash first, as the message-tags spec says (Tag.parse keeps it), and
  turn its None for a value-less tag into "".
- `irc.ctcp.DELIMITER` is the CTCP delimiter.
- The line regex in `irc.client` is not used. It is private; `@tags` followed by two spaces makes
  it return None (irc itself then fails with AttributeError); a line of only ":prefix" comes out
  as the command ":prefix"; and `irc.message.Arguments.from_group` splits middle parameters with
  `str.split()`, which splits on every Unicode whitespace (NBSP, U+3000, even \\x1f, the mIRC
  underline code), where IRC separates parameters with the space character only. The tokenizer
  below is the same shape (tags, source, command, then " :" for the trailing parameter).
- `irc.ctcp.dequote` is not used: it implements the 1994 CTCP draft, with \\x10 low-level quoting
  (which corrupts text containing \\x10) and several tagged parts per message, and it does not
  treat "\\x01ACTION waves" without the closing \\x01 as CTCP. What clients send today (ircdocs'
  CTCP) is one \\x01-delimited command per message whose closing \\x01 is optional.
- `irc.strings.IRCFoldedCase` is not used: it lower-cases with `str.lower()`, which folds all of
  Unicode (and can change a string's length: "İ"), knows only rfc1459, and servers fold ASCII
  only, per their CASEMAPPING.
- `irc.features.FeatureSet` is not used: it turns 005 tokens into attributes with values already
  parsed into other types and applies negations in place; the gateway wants the raw token map.
- jaraco.stream's `LenientDecodingLineBuffer` falls back to latin-1; `decode` falls back to
  CP1252, which is what Windows clients send (the euro sign and curly quotes live in 0x80-0x9F),
  with latin-1 for the five bytes CP1252 leaves undefined.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from irc.ctcp import DELIMITER as CTCP_DELIMITER
from irc.message import Tag

# IRCv3 message-tags: up to 8191 bytes of tags (with the "@" and the space), then the RFC 1459
# message of up to 512 bytes (with the CRLF).
MAX_LINE_BYTES = 8191 + 512


# The tag the web puts on a raw line (a /whois) to name the buffer it was typed in, where the
# answer is shown. Gateway-internal: the gateway sends a raw line's command and parameters only.
REPLY_BUFFER_TAG = "palaver/buffer"


class ParseError(ValueError):
    """A line that is not IRC. The gateway logs it and carries on with the next one."""


@dataclass(frozen=True, slots=True)
class IrcLine:
    """One parsed line. `command` is upper-cased; numerics are 3-digit strings ("001")."""

    tags: dict[str, str]
    source: str | None
    command: str
    params: list[str]

    @property
    def nick(self) -> str | None:
        """The nick of "nick!user@host" (or of "nick@host"); a server name as it is."""
        if self.source is None:
            return None
        # Up to the first "!" or "@" (str.partition: a regex split cost 4% of a flood's loop).
        return self.source.partition("!")[0].partition("@")[0]

    @property
    def user_host(self) -> str | None:
        """The "user@host" of "nick!user@host"; None when the source has no "!"."""
        if self.source is None:
            return None
        _, bang, user_host = self.source.partition("!")
        return user_host if bang else None


# Anchored at the start; the optional groups consume the spaces after them. A line that does not
# match at all (leading space, nothing but tags) is malformed.
_LINE = re.compile(
    r"(?:@(?P<tags>[^ ]*) +)?(?::(?P<source>[^ ]*) +)?(?P<command>[^ ]+)(?P<rest>.*)", re.S
)
_COMMAND = re.compile(r"[A-Za-z]+|[0-9]{3}")


# --- decoding --------------------------------------------------------------------------------

# CP1252's characters for 0x80-0x9F, as a translation of the latin-1 decoding (which is total);
# the five bytes CP1252 leaves undefined keep their latin-1 meaning.
_CP1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}
_CP1252_OVER_LATIN1 = {
    byte: bytes([byte]).decode("cp1252")
    for byte in range(0x80, 0xA0)
    if byte not in _CP1252_UNDEFINED
}


def decode(raw: bytes) -> str:
    """UTF-8, or CP1252 (latin-1 for the bytes CP1252 leaves undefined) when the bytes are not
    UTF-8. Never raises."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1").translate(_CP1252_OVER_LATIN1)


def _decode_cut(raw: bytes) -> str:
    """Decode a line cut at MAX_LINE_BYTES, where the cut may have split a UTF-8 character: lose
    that character rather than reading the whole line as CP1252."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.end == len(raw) and error.reason == "unexpected end of data":
            return raw[: error.start].decode("utf-8")
        return decode(raw)


# --- parsing ---------------------------------------------------------------------------------


def parse_line(raw: bytes | str) -> IrcLine:
    """Parse one line (with or without its CRLF). Raises ParseError, and only ParseError, on
    anything that is not a line of IRC. A line longer than MAX_LINE_BYTES is cut to it first and
    parsed. A CR inside the line (not at its end) is kept as text: the gateway frames on LF, and
    format_line refuses to send it back out."""
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (from a caller's surrogateescape): unstorable in PostgreSQL.
            data = raw.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")
    else:
        data = bytes(raw)
    data = data.rstrip(b"\r\n")
    if len(data) > MAX_LINE_BYTES:
        text = _decode_cut(data[:MAX_LINE_BYTES].rstrip(b"\r"))
    else:
        text = decode(data)
    if not text:
        raise ParseError("empty line")
    if "\x00" in text:
        raise ParseError("NUL in line")
    if "\n" in text:
        raise ParseError("line feed inside a line: more than one line given")
    match = _LINE.match(text)
    if match is None:
        raise ParseError(f"not an IRC line: {text[:80]!r}")
    command = match["command"]
    if not _COMMAND.fullmatch(command):
        raise ParseError(f"no command: {text[:80]!r}")
    source = match["source"]
    if source == "":
        raise ParseError("empty source")
    section = match["tags"]
    tags = _parse_tags(section) if section is not None else {}
    return IrcLine(
        tags=tags, source=source, command=command.upper(), params=_split_params(match["rest"])
    )


def _split_params(rest: str) -> list[str]:
    # `rest` is empty or starts with a space. The first " :" starts the trailing parameter, since
    # a middle parameter cannot start with ":".
    middle, colon, trailing = rest.partition(" :")
    params = [param for param in middle.split(" ") if param]
    if colon:
        params.append(trailing)
    return params


# The spec allows [+][vendor/]name of letters, digits, hyphens and dots; this is wider (any
# printable ASCII but the separators space ; = \\ +), since a whole message is lost for one odd
# tag. One regex: the character-by-character test was a fifth of the gateway's event loop under
# a flood (docs/benchmarks.md).
_TAG_KEY = re.compile(r"\+?[!-*,-:<>-\[\]-~]+")


def _is_tag_key(key: str) -> bool:
    return _TAG_KEY.fullmatch(key) is not None


def _parse_tags(section: str) -> dict[str, str]:
    if not section:
        raise ParseError("empty tag section")
    tags: dict[str, str] = {}
    for item in section.split(";"):
        if not item:
            continue  # "a=1;;b=2" and a trailing ";" are sloppy, not malformed
        key, _, value = item.partition("=")
        if not _is_tag_key(key):
            raise ParseError(f"not a tag name: {key[:40]!r}")
        if "\\" in value:
            trailing_backslashes = len(value) - len(value.rstrip("\\"))
            if trailing_backslashes % 2:
                value = value[:-1]  # a dangling escape means nothing
            value = Tag.parse(f"{key}={value}")["value"] or ""
        tags[key] = value  # a repeated key: the last one wins
    return tags


# --- serialising -----------------------------------------------------------------------------


def _escape_tag_value(value: str) -> str:
    return (
        value.replace("\\", "\\\\")
        .replace(";", "\\:")
        .replace(" ", "\\s")
        .replace("\r", "\\r")
        .replace("\n", "\\n")
    )


def format_line(command: str, *params: str, tags: dict[str, str] | None = None) -> bytes:
    """One line of IRC, UTF-8, ending in CRLF. The last parameter gets its ":" when it needs one
    (empty, contains a space, starts with ":"). Raises ValueError for anything that cannot be one
    line: CR, LF or NUL anywhere (so text a user typed can never inject a second command), an
    empty or spaced middle parameter, a malformed command or tag name, tags past their own
    budget (tags_fit). The length of the rest is not checked: split long text with
    split_message first."""
    if not _COMMAND.fullmatch(command):
        raise ValueError(f"not an IRC command: {command!r}")
    parts: list[str] = []
    if tags:
        if not tags_fit(tags):
            raise ValueError(f"tags longer than the {MAX_CLIENT_TAG_BYTES} bytes a client may send")
        items = []
        for key, value in tags.items():
            if not _is_tag_key(key):
                raise ValueError(f"not a tag name: {key!r}")
            items.append(f"{key}={_escape_tag_value(value)}" if value else key)
        parts.append("@" + ";".join(items))
    parts.append(command)
    last = len(params) - 1
    for index, param in enumerate(params):
        needs_colon = not param or " " in param or param[0] == ":"
        if index == last:
            parts.append(":" + param if needs_colon else param)
        elif needs_colon:
            raise ValueError(
                f"only the last parameter may be empty, contain a space or start with ':': "
                f"{param!r}"
            )
        else:
            parts.append(param)
    line = " ".join(parts)
    if "\r" in line or "\n" in line or "\x00" in line:
        raise ValueError("CR, LF and NUL cannot be sent: they would end the line")
    return line.encode("utf-8") + b"\r\n"


_COLOUR_CODE = re.compile(
    rb"\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?|\x04(?:[0-9A-Fa-f]{6}(?:,[0-9A-Fa-f]{6})?)?"
)
_LONGEST_COLOUR_CODE = 14  # \x04RRGGBB,RRGGBB


def split_message(text: str, overhead: int, limit: int = 512) -> list[str]:
    """Split `text` into chunks of at most `limit - overhead` UTF-8 bytes each, cut on character
    boundaries, at a space when there is one (the space stays at the end of the chunk before),
    and never inside a colour code. "".join(chunks) == text; [] for "".

    The chunks are balanced: each cut aims at an equal share of what is left (the fewest chunks
    the budget allows), so a line just over the limit becomes two halves, never a full line and
    a lone word. A word longer than the budget (a URL, text without spaces) is cut mid-word, at
    the share.

    `overhead` is everything else on the line as the server relays it to others, e.g.
    len(b":nick!user@host PRIVMSG #channel :\\r\\n") (see message_overhead). The text must be
    one line: split on newlines first. Raises ValueError when a character cannot fit at all."""
    budget = limit - overhead
    if budget <= 0:
        raise ValueError(f"no room for text: limit {limit}, overhead {overhead}")
    data = text.encode("utf-8")
    chunks: list[str] = []
    start = 0
    while len(data) - start > budget:
        left = len(data) - start
        pieces = -(-left // budget)  # the fewest chunks what is left needs
        share = -(-left // pieces)
        end = _cut(data, start, budget, share)
        chunks.append(data[start:end].decode("utf-8"))
        start = end
    if start < len(data):
        chunks.append(data[start:].decode("utf-8"))
    return chunks


def _char_start(data: bytes, index: int, floor: int) -> int:
    """`index`, moved back to the start of the UTF-8 character it falls in (not below floor)."""
    while index > floor and data[index] & 0xC0 == 0x80:  # a continuation byte
        index -= 1
    return index


def _cut(data: bytes, start: int, budget: int, share: int) -> int:
    """Where the chunk starting at `start` ends: at the space nearest to start + share within
    [start + share / 2, start + budget], else mid-word at the share (on a character boundary,
    outside a colour code)."""
    hard_end = start + budget
    aim = start + share
    low = start + max(1, share // 2)
    # The space nearest the aim, before or after it (the cut is after the space).
    before = data.rfind(b" ", low, min(aim, hard_end))
    after = data.find(b" ", aim, hard_end)
    candidates = [i for i in (before, after) if i != -1]
    if candidates:
        return min(candidates, key=lambda i: abs(i + 1 - aim)) + 1
    end = _char_start(data, min(aim, hard_end), start)
    if end == start:
        end = _char_start(data, hard_end, start)
        if end == start:
            raise ValueError(f"a character does not fit in {budget} bytes")
    code = max(data.rfind(b"\x03", start + 1, end), data.rfind(b"\x04", start + 1, end))
    if code != -1 and end - code < _LONGEST_COLOUR_CODE:
        match = _COLOUR_CODE.match(data, code)
        if match is not None and match.end() > end:
            end = code
    return end


# Worst cases for the parts of our own prefix we may not know yet (RFC 2812's USERLEN with the
# "~" of an unverified ident, and the usual HOSTLEN).
DEFAULT_USERLEN = 10
DEFAULT_HOSTLEN = 63
# IRCv3 message-tags: the tag data a client may send (without the "@" and the space after it).
MAX_CLIENT_TAG_BYTES = 4094


def message_overhead(
    *, nick: str, user_host: str | None, command: str, target: str, action: bool = False
) -> int:
    """The bytes of a PRIVMSG or NOTICE that are not its text, as the server relays it to the
    others: ":nick!user@host COMMAND target :" and CRLF, plus "\\x01ACTION " and "\\x01" for
    /me. Tags are not counted: they have their own budget (tags_fit). An unknown user@host
    counts as the longest it can be (a server cloaking us later makes it shorter, not longer)."""
    if user_host is None:
        user_host = "~" + "x" * DEFAULT_USERLEN + "@" + "x" * DEFAULT_HOSTLEN
    prefix = f":{nick}!{user_host} {command} {target} :"
    wrapper = len(f"{CTCP_DELIMITER}ACTION {CTCP_DELIMITER}") if action else 0
    return len(prefix.encode("utf-8")) + 2 + wrapper


def tags_fit(tags: dict[str, str]) -> bool:
    """Whether tags a client sends fit the message-tags spec's 4094 bytes of tag data (escaped
    values, ";" between tags; the text of the message has its own 512 bytes)."""
    if not tags:
        return True
    items = [f"{k}={_escape_tag_value(v)}" if v else k for k, v in tags.items()]
    return len(";".join(items).encode("utf-8")) <= MAX_CLIENT_TAG_BYTES


# --- CTCP ------------------------------------------------------------------------------------


def parse_ctcp(text: str) -> tuple[str, str] | None:
    """The command and argument of a CTCP message: "\\x01ACTION waves\\x01" -> ("ACTION",
    "waves"); the closing \\x01 may be missing. The command is upper-cased. None when the text is
    not CTCP."""
    if len(text) < 2 or text[0] != CTCP_DELIMITER:
        return None
    body = text[1:-1] if text[-1] == CTCP_DELIMITER else text[1:]
    command, _, arg = body.partition(" ")
    if not command or CTCP_DELIMITER in command:
        return None
    return command.upper(), arg


def ctcp(command: str, arg: str = "") -> str:
    """The text of a CTCP message or reply: ctcp("ACTION", "waves") -> "\\x01ACTION waves\\x01".
    A \\x01 in `arg` is dropped (it would end the CTCP early)."""
    if not command or " " in command or CTCP_DELIMITER in command:
        raise ValueError(f"not a CTCP command: {command!r}")
    arg = arg.replace(CTCP_DELIMITER, "")
    body = f"{command} {arg}" if arg else command
    return f"{CTCP_DELIMITER}{body}{CTCP_DELIMITER}"


# --- ISUPPORT (005) and friends --------------------------------------------------------------

_ISUPPORT_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")


def parse_isupport(params: list[str]) -> dict[str, str | None]:
    """The tokens of one RPL_ISUPPORT (005) line. Pass its params without the first (our nick)
    and the last ("are supported by this server"): `parse_isupport(line.params[1:-1])`; a param
    containing a space (that trailing text, if left in) is ignored.

    "TOKEN=value" -> {"TOKEN": "value"} with \\xHH escapes decoded ("NETWORK=Libera\\x20Chat");
    "TOKEN" and "TOKEN=" -> {"TOKEN": None}; "-TOKEN" (the server withdraws it) ->
    {"-TOKEN": None}, so a caller merging lines pops "TOKEN" for every key starting with "-"."""
    tokens: dict[str, str | None] = {}
    for token in params:
        name, _, value = token.partition("=")
        if not name.lstrip("-") or " " in token:
            continue
        if name.startswith("-"):
            tokens[name] = None
            continue
        if "\\x" in value:
            value = decode(
                _ISUPPORT_ESCAPE.sub(
                    lambda match: bytes([int(match[1], 16)]), value.encode("utf-8")
                )
            ).replace("\x00", "")  # PostgreSQL text cannot hold NUL
        tokens[name] = value or None
    return tokens


DEFAULT_PREFIX = ("ov", "@+")
_PREFIX = re.compile(r"\(([^()]*)\)(.*)")


def parse_prefix(value: str | None) -> tuple[str, str]:
    """PREFIX=(ov)@+ -> ("ov", "@+"): channel membership modes and their nick prefixes, highest
    first. The RFC 1459 default ("ov", "@+") when the value is missing or malformed."""
    match = _PREFIX.fullmatch(value or "")
    if match is None or len(match[1]) != len(match[2]) or not match[1]:
        return DEFAULT_PREFIX
    return match[1], match[2]


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_FOLD_ASCII = str.maketrans(_UPPER, _LOWER)
# RFC 1459 treats []\ as the upper case of {}|; "rfc1459" (ISUPPORT) adds ^ as that of ~.
_FOLD_STRICT_RFC1459 = str.maketrans(_UPPER + "[]\\", _LOWER + "{}|")
_FOLD_RFC1459 = str.maketrans(_UPPER + "[]\\^", _LOWER + "{}|~")
_FOLDS = {
    "ascii": _FOLD_ASCII,
    "strict-rfc1459": _FOLD_STRICT_RFC1459,
    "rfc1459": _FOLD_RFC1459,
}


def casefold(name: str, casemapping: str = "rfc1459") -> str:
    """A nick or channel name folded the way the server compares them (its CASEMAPPING): ascii,
    strict-rfc1459 or rfc1459. Non-ASCII characters are left alone; an unknown casemapping is
    treated as rfc1459, the RFC's default and the widest of the three."""
    return name.translate(_FOLDS.get(casemapping.lower(), _FOLD_RFC1459))


def parse_server_time(value: str) -> datetime | None:
    """The IRCv3 `time` tag ("2026-11-23T12:00:00.123Z") as an aware UTC datetime; a value
    without an offset is taken as UTC. None when it cannot be read."""
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, TypeError, OverflowError):
        return None


def split_names_entry(entry: str, prefixes: str) -> tuple[str, str, str | None]:
    """One entry of RPL_NAMREPLY (353) with multi-prefix and userhost-in-names:
    "@+nick!u@h" -> ("@+", "nick", "u@h"); "nick" -> ("", "nick", None). `prefixes` is the
    second half of parse_prefix(), e.g. "@+"."""
    index = 0
    while index < len(entry) and entry[index] in prefixes:
        index += 1
    nick, bang, user_host = entry[index:].partition("!")
    return entry[:index], nick, (user_host if bang else None)
