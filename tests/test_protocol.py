"""gateway.protocol: real lines from real servers, and properties over arbitrary input (a server
can send anything; the gateway must survive it and never send more than one line per call)."""

from datetime import UTC, datetime
from typing import Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.protocol import (
    MAX_LINE_BYTES,
    IrcLine,
    ParseError,
    casefold,
    ctcp,
    decode,
    format_line,
    message_overhead,
    parse_ctcp,
    parse_isupport,
    parse_line,
    parse_prefix,
    parse_server_time,
    split_message,
    split_names_entry,
    tags_fit,
)

# No example database: it would be written into the checkout.
PROPERTY = settings(database=None, deadline=None)

# --- real lines ------------------------------------------------------------------------------


def test_privmsg_with_inspircd_tags() -> None:
    raw = (
        b"@account=alice;inspircd.org/bot;msgid=kEpsBtF9W3i3RFZTrnBFZA;"
        b"time=2026-11-23T12:00:00.123Z;+draft/reply=AAB\\sC\\:D\\\\E "
        b":alice!~alice@palaver-3j9.example.org PRIVMSG #palaver :hello there: how are you?\r\n"
    )
    line = parse_line(raw)
    assert line == IrcLine(
        tags={
            "account": "alice",
            "inspircd.org/bot": "",
            "msgid": "kEpsBtF9W3i3RFZTrnBFZA",
            "time": "2026-11-23T12:00:00.123Z",
            "+draft/reply": "AAB C;D\\E",
        },
        source="alice!~alice@palaver-3j9.example.org",
        command="PRIVMSG",
        params=["#palaver", "hello there: how are you?"],
    )
    assert line.nick == "alice"
    assert line.user_host == "~alice@palaver-3j9.example.org"
    assert parse_server_time(line.tags["time"]) == datetime(2026, 11, 23, 12, 0, 0, 123000, UTC)


def test_names_reply_with_multi_prefix_and_userhost_in_names() -> None:
    line = parse_line(
        ":irc.example.net 353 me = #palaver :@+alice!alice@host.example ~bob!b@h +carol dave\r\n"
    )
    assert line.source == "irc.example.net"
    assert line.nick == "irc.example.net"
    assert line.user_host is None
    assert line.command == "353"
    assert line.params == ["me", "=", "#palaver", "@+alice!alice@host.example ~bob!b@h +carol dave"]
    modes, prefixes = parse_prefix("(qaohv)~&@%+")
    assert (modes, prefixes) == ("qaohv", "~&@%+")
    entries = [split_names_entry(entry, prefixes) for entry in line.params[3].split()]
    assert entries == [
        ("@+", "alice", "alice@host.example"),
        ("~", "bob", "b@h"),
        ("+", "carol", None),
        ("", "dave", None),
    ]


def test_isupport() -> None:
    line = parse_line(
        ":irc.example.net 005 me AWAYLEN=200 CASEMAPPING=ascii CHANTYPES=# EXCEPTS "
        "NETWORK=Example\\x20Net PREFIX=(Yqaohv)!~&@%+ TARGMAX= -INVEX "
        ":are supported by this server"
    )
    tokens = parse_isupport(line.params[1:-1])
    assert tokens == {
        "AWAYLEN": "200",
        "CASEMAPPING": "ascii",
        "CHANTYPES": "#",
        "EXCEPTS": None,
        "NETWORK": "Example Net",
        "PREFIX": "(Yqaohv)!~&@%+",
        "TARGMAX": None,
        "-INVEX": None,
    }
    assert parse_prefix(tokens["PREFIX"]) == ("Yqaohv", "!~&@%+")
    # The trailing text, if a caller leaves it in, is not a token.
    assert parse_isupport(["CHANTYPES=#&", "are supported by this server"]) == {"CHANTYPES": "#&"}


@pytest.mark.parametrize("value", [None, "", "()", "(ov)@", "ov@+", "(ov@+"])
def test_prefix_defaults_when_missing_or_malformed(value: str | None) -> None:
    assert parse_prefix(value) == ("ov", "@+")


def test_ctcp_action() -> None:
    line = parse_line(b":alice!a@h PRIVMSG #palaver :\x01ACTION waves at everyone\x01\r\n")
    assert parse_ctcp(line.params[1]) == ("ACTION", "waves at everyone")
    assert parse_ctcp("\x01ACTION waves") == ("ACTION", "waves")  # closing \x01 is optional
    assert parse_ctcp("\x01VERSION\x01") == ("VERSION", "")
    assert parse_ctcp("\x01version\x01") == ("VERSION", "")
    assert parse_ctcp("hello \x01ACTION\x01") is None
    assert parse_ctcp("\x01\x01") is None
    assert parse_ctcp("\x01") is None
    assert parse_ctcp("") is None
    assert ctcp("ACTION", "waves") == "\x01ACTION waves\x01"
    assert ctcp("VERSION") == "\x01VERSION\x01"
    assert ctcp("PING", "12\x013") == "\x01PING 123\x01"
    with pytest.raises(ValueError):
        ctcp("TWO WORDS")


def test_extended_join() -> None:
    line = parse_line(":alice!a@h JOIN #palaver alice :Alice Liddell\r\n")
    assert line.params == ["#palaver", "alice", "Alice Liddell"]
    line = parse_line(":bob!b@h JOIN #palaver * :Bob")
    assert line.params == ["#palaver", "*", "Bob"]


def test_lone_cr_inside_a_line_is_text_and_cannot_be_sent_back() -> None:
    line = parse_line(b":alice!a@h PRIVMSG #palaver :one\rtwo\r\n")
    assert line.params == ["#palaver", "one\rtwo"]
    with pytest.raises(ValueError):
        format_line("PRIVMSG", "#palaver", line.params[1])


def test_latin1_and_cp1252_text() -> None:
    line = parse_line(b":bob!b@h PRIVMSG #palaver :caf\xe9 costs 3\x80, \x93quoted\x94 \x81\r\n")
    assert line.params[1] == "café costs 3€, “quoted” \x81"
    assert decode("café".encode()) == "café"
    assert decode(b"\xff\xfe") == "ÿþ"


def test_plain_lines() -> None:
    assert parse_line("PING :irc.example.net") == IrcLine({}, None, "PING", ["irc.example.net"])
    assert parse_line("ping irc.example.net\n").command == "PING"
    assert parse_line(":s 001 me :Welcome").params == ["me", "Welcome"]
    assert parse_line("CAP * LS :").params == ["*", "LS", ""]
    assert parse_line("MODE #c +o  alice  ").params == ["#c", "+o", "alice"]
    assert parse_line("PRIVMSG #c ::-)").params == ["#c", ":-)"]
    assert parse_line("PRIVMSG #c\u00a0x :y").params == ["#c\u00a0x", "y"]  # NBSP is no space
    assert parse_line("@a=1;;b= QUIT").tags == {"a": "1", "b": ""}
    assert parse_line("@a=1;a=2 QUIT").tags == {"a": "2"}
    assert parse_line("@a=dangling\\ QUIT").tags == {"a": "dangling"}
    assert parse_line("@a=x\\y QUIT").tags == {"a": "xy"}
    assert parse_line(":nick@host AWAY").nick == "nick"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"   ",
        b" PING",
        b":only.a.source",
        b":only.a.source  ",
        b": PING",
        b"@a=b",
        b"@a=b ",
        b"@ PING",
        b"@=x PING",
        b"@+ PING",
        b"PRIVMSG #a :x\x00y",
        b"PRIVMSG #a :x\ny",
        b"12 me :two digits",
        b"PRIV-MSG x",
        b"\xff\xfe",
    ],
)
def test_malformed_lines(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_line(raw)


def test_oversized_line_is_cut_and_parsed() -> None:
    head = b"PRIVMSG #c :"
    line = parse_line(head + b"a" * 20000 + b"\r\n")
    assert len(line.params[1]) == MAX_LINE_BYTES - len(head)
    # A cut through a UTF-8 character loses that character, not the line's encoding.
    line = parse_line(head + "é".encode() * 10000)
    assert set(line.params[1]) == {"é"}
    assert len(line.params[1]) == (MAX_LINE_BYTES - len(head)) // 2


def test_format_line() -> None:
    assert format_line("PRIVMSG", "#palaver", "hello there") == b"PRIVMSG #palaver :hello there\r\n"
    assert format_line("PRIVMSG", "#palaver", "hi") == b"PRIVMSG #palaver hi\r\n"
    assert format_line("PRIVMSG", "#palaver", ":-)") == b"PRIVMSG #palaver ::-)\r\n"
    assert format_line("AWAY", "") == b"AWAY :\r\n"
    assert format_line("QUIT") == b"QUIT\r\n"
    assert (
        format_line("TAGMSG", "#c", tags={"+typing": "active", "label": "a b;c\\", "+x": ""})
        == b"@+typing=active;label=a\\sb\\:c\\\\;+x TAGMSG #c\r\n"
    )
    assert format_line("PRIVMSG", "#c", "ça va") == "PRIVMSG #c :ça va\r\n".encode()


@pytest.mark.parametrize(
    ("command", "params", "tags"),
    [
        ("PRIVMSG", ("#c", "hi\r\nQUIT :bye"), None),
        ("PRIVMSG", ("#c", "hi\nQUIT"), None),
        ("PRIVMSG", ("#c", "nul\x00"), None),
        ("PRIVMSG", ("#c x", "hi"), None),
        ("PRIVMSG", ("", "hi"), None),
        ("PRIVMSG", (":c", "hi"), None),
        ("PRIVMSG\r\nQUIT", ("#c", "hi"), None),
        ("PRIV MSG", (), None),
        ("", (), None),
        ("TAGMSG", ("#c",), {"a b": "x"}),
        ("TAGMSG", ("#c",), {"a": "x\x00"}),
    ],
)
def test_format_line_refuses_what_is_not_one_line(
    command: str, params: tuple[str, ...], tags: dict[str, str] | None
) -> None:
    with pytest.raises(ValueError):
        format_line(command, *params, tags=tags)


def test_split_message_prefers_spaces_and_keeps_colour_codes_whole() -> None:
    assert split_message("", 0) == []
    assert split_message("short", 100) == ["short"]
    # Balanced: the cut nearest the middle, not a full chunk and a lone word.
    assert split_message("aaaa bbbb cccc", 0, limit=10) == ["aaaa ", "bbbb cccc"]
    assert split_message("aaaaaaaaaaaaaa", 0, limit=10) == ["aaaaaaa", "aaaaaaa"]
    assert split_message("ééééé", 0, limit=5) == ["éé", "é", "éé"]
    assert split_message("abcdefg\x0304,12red", 0, limit=10) == ["abcdefg", "\x0304,12red"]
    with pytest.raises(ValueError):
        split_message("😀", 0, limit=3)
    with pytest.raises(ValueError):
        split_message("x", 512)


def test_split_message_never_leaves_a_lone_fragment() -> None:
    words = "lorem ipsum dolor sit amet " * 20  # 540 bytes
    chunks = split_message(words, 100)  # 412 bytes of room: two chunks
    assert len(chunks) == 2
    assert "".join(chunks) == words
    sizes = [len(c.encode()) for c in chunks]
    assert max(sizes) - min(sizes) <= 30, sizes  # halves, not 412 + 128
    assert all(c.endswith(" ") for c in chunks[:-1])  # cut at word boundaries


def test_split_message_multibyte_and_words_without_spaces() -> None:
    for text in ("日本語のテキスト" * 60, "😀" * 300, "ü" * 700, "x" * 1500, "é" + "a" * 1000):
        chunks = split_message(text, 60)
        assert "".join(chunks) == text
        sizes = [len(c.encode()) for c in chunks]
        assert all(0 < size <= 452 for size in sizes), sizes
        assert min(sizes) >= max(sizes) // 2, sizes  # balanced, no tiny tail
        for chunk in chunks:
            chunk.encode("utf-8")  # whole characters only: a split one would not round-trip
    # A long URL inside text: the words around it are cut at spaces.
    url = "https://example.org/" + "a" * 600
    chunks = split_message(f"see {url} and more", 60)
    assert "".join(chunks) == f"see {url} and more"
    assert all(len(c.encode()) <= 452 for c in chunks)


def test_message_overhead_counts_prefix_command_target_crlf_and_action() -> None:
    plain = message_overhead(nick="bob", user_host="~b@h.example", command="PRIVMSG", target="#x")
    assert plain == len(b":bob!~b@h.example PRIVMSG #x :\r\n")
    action = message_overhead(
        nick="bob", user_host="~b@h.example", command="PRIVMSG", target="#x", action=True
    )
    assert action == plain + len(b"\x01ACTION \x01")
    unknown = message_overhead(nick="bob", user_host=None, command="NOTICE", target="#x")
    assert unknown == len(b":bob!") + 11 + 1 + 63 + len(b" NOTICE #x :\r\n")
    # The line as relayed is exactly 512 bytes at most.
    text = "word " * 200
    for chunk in split_message(text, plain):
        relayed = b":bob!~b@h.example " + format_line("PRIVMSG", "#x", chunk)
        assert len(relayed) <= 512


def test_tags_have_their_own_budget() -> None:
    assert tags_fit({})
    assert tags_fit({"+draft/reply": "x" * 4000})
    assert not tags_fit({"+draft/reply": "x" * 4090})
    assert not tags_fit({"+a": ";" * 2100})  # escaped: "\\:" is two bytes each
    assert format_line("TAGMSG", "#x", tags={"+draft/react": "👍"}).startswith(b"@+draft/react=")
    with pytest.raises(ValueError, match="4094"):
        format_line("PRIVMSG", "#x", "hi", tags={"+draft/reply": "x" * 4090})


def test_casefold() -> None:
    assert casefold("Alice[]\\^~") == "alice{}|~~"
    assert casefold("Alice[]\\^~", "strict-rfc1459") == "alice{}|^~"
    assert casefold("Alice[]\\^~", "ascii") == "alice[]\\^~"
    assert casefold("ÉLODIE") == "Élodie"  # servers fold ASCII only
    assert casefold("#Chan", "unknown-mapping") == "#chan"


def test_server_time() -> None:
    assert parse_server_time("2026-11-23T12:00:00Z") == datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert parse_server_time("2026-11-23T13:00:00+01:00") == datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert parse_server_time("2026-11-23T12:00:00") == datetime(2026, 11, 23, 12, tzinfo=UTC)
    for junk in ("", "yesterday", "2026-13-40T99:00:00Z", "0001-01-01T00:00:00+01:00"):
        assert parse_server_time(junk) is None


# --- properties ------------------------------------------------------------------------------

# Lines built from IRC's own pieces, then corrupted with fragments and random bytes, so that
# parsing succeeds often enough to reach every path (pure random bytes almost never do).
_FRAGMENTS = st.sampled_from(
    [b"@", b":", b" ", b"  ", b";", b"=", b"\\", b"\\s", b"\r", b"\n", b"\x00", b"!", b"+",
     b"a", b"#c", b"time=", b"\xff", b"\xc3", b"\xa9", b"\x01", b"\xe2\x82\xac"]
)  # fmt: skip
_NOISE = st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=6)), max_size=12).map(b"".join)
_LINE_LIKE = st.tuples(
    st.one_of(st.just(b""), _NOISE.map(lambda tags: b"@" + tags + b" ")),
    st.one_of(st.just(b""), _NOISE.map(lambda source: b":" + source + b" ")),
    st.sampled_from([b"PRIVMSG", b"privmsg", b"001", b"353", b"JOIN", b"", b"1", b"P\xe9"]),
    st.lists(_NOISE.map(lambda param: b" " + param), max_size=6).map(b"".join),
    st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"\r\r\n"]),
).map(b"".join)


def _check_parsed(line: IrcLine) -> None:
    assert line.command.isupper() or (line.command.isdigit() and len(line.command) == 3)
    for text in [line.command, *line.params, *line.tags, *line.tags.values(), line.source or ""]:
        assert "\x00" not in text and "\n" not in text
    for param in line.params[:-1]:
        assert param and " " not in param and not param.startswith(":")


@PROPERTY
@given(st.one_of(st.binary(max_size=300), _LINE_LIKE))
@example(b"@" + b"a=b;" * 5000 + b" PRIVMSG #c :" + b"\xe9" * 9000)
def test_arbitrary_bytes_raise_nothing_but_parse_error(raw: bytes) -> None:
    try:
        line = parse_line(raw)
    except ParseError:
        return
    _check_parsed(line)
    # What parses can be sent back, unless a lone CR would end the line early.
    try:
        again = format_line(line.command, *line.params, tags=line.tags)
    except ValueError:
        assert any("\r" in param for param in line.params)
        return
    assert parse_line(again) == IrcLine(line.tags, None, line.command, line.params)


@PROPERTY
@given(st.text(max_size=200))
def test_arbitrary_text_raises_nothing_but_parse_error(text: str) -> None:
    try:
        line = parse_line(text)
    except ParseError:
        return
    _check_parsed(line)


# Lone surrogates cannot be encoded as UTF-8, so no IRC line holds one.
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_COMMANDS = st.from_regex(r"[A-Z]{1,10}|[0-9]{3}", fullmatch=True)
_NO_BREAKS = st.characters(blacklist_characters="\r\n\x00", blacklist_categories=SURROGATES)
_MIDDLE = st.text(_NO_BREAKS.filter(lambda char: char != " "), min_size=1, max_size=30).filter(
    lambda param: not param.startswith(":")
)
_TRAILING = st.text(_NO_BREAKS, max_size=60)
_TAG_KEYS = st.from_regex(r"\+?([a-z0-9.-]{1,10}/)?[A-Za-z0-9-]{1,10}", fullmatch=True)
_TAG_VALUES = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=SURROGATES), max_size=30
)


@PROPERTY
@given(
    _COMMANDS,
    st.lists(_MIDDLE, max_size=12),
    st.one_of(st.none(), _TRAILING),
    st.dictionaries(_TAG_KEYS, _TAG_VALUES, max_size=5),
)
def test_format_then_parse_round_trips(
    command: str, middle: list[str], trailing: str | None, tags: dict[str, str]
) -> None:
    params = [*middle, *([] if trailing is None else [trailing])]
    raw = format_line(command, *params, tags=tags)
    assert parse_line(raw) == IrcLine(tags, None, command, params)


_ANY_TEXT = st.text(st.characters(blacklist_categories=SURROGATES), max_size=40)


@PROPERTY
@given(
    st.one_of(_COMMANDS, _ANY_TEXT),
    st.lists(st.one_of(_ANY_TEXT, st.sampled_from(["\r\nQUIT", "a\rb", "\n", " :x"])), max_size=6),
    st.one_of(st.none(), st.dictionaries(_ANY_TEXT, _ANY_TEXT, max_size=3)),
)
def test_format_line_never_makes_more_than_one_line(
    command: str, params: list[str], tags: dict[str, str] | None
) -> None:
    try:
        raw = format_line(command, *params, tags=tags)
    except ValueError:
        return
    assert raw.endswith(b"\r\n")
    body = raw[:-2]
    assert b"\r" not in body and b"\n" not in body and b"\x00" not in body
    parsed = parse_line(raw)
    assert parsed.command == command.upper()
    assert parsed.params == params


@PROPERTY
@given(st.text(max_size=600), st.integers(min_value=0, max_value=508))
@example("a" * 1000, 0)
@example("word " * 300, 100)
def test_split_message_chunks_rejoin_and_fit(text: str, overhead: int) -> None:
    chunks = split_message(text, overhead)
    assert "".join(chunks) == text
    assert all(chunk and len(chunk.encode()) <= 512 - overhead for chunk in chunks)


_NAME = st.text(st.sampled_from("aAzZ09[]{}\\|^~-_é#É"), max_size=12)
_MAPPINGS = st.sampled_from(["ascii", "strict-rfc1459", "rfc1459"])


@PROPERTY
@given(_NAME, _MAPPINGS)
def test_casefold_is_idempotent_and_keeps_length(name: str, mapping: str) -> None:
    folded = casefold(name, mapping)
    assert casefold(folded, mapping) == folded
    assert len(folded) == len(name)
    assert folded == casefold(name.upper(), mapping) or not name.isascii()
    assert not any(char in folded for char in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    # Only ASCII changes.
    assert all(a == b for a, b in zip(name, folded, strict=True) if not a.isascii())


@PROPERTY
@given(_NAME, _NAME)
def test_casefold_mappings_nest(a: str, b: str) -> None:
    # Names equal under a narrower mapping are equal under every wider one.
    if casefold(a, "ascii") == casefold(b, "ascii"):
        assert casefold(a, "strict-rfc1459") == casefold(b, "strict-rfc1459")
    if casefold(a, "strict-rfc1459") == casefold(b, "strict-rfc1459"):
        assert casefold(a, "rfc1459") == casefold(b, "rfc1459")
