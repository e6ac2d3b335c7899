"""The scripted chathistory server (tests/chathistory_server.py) checked against the IRCv3 spec
with a raw socket client (tests/ircd.py's IrcBot), so that the gateway's backfill tests stand on
a server that behaves as the spec says, not as the gateway expects."""

from collections.abc import Iterator

import pytest

from tests.chathistory_server import ChathistoryServer, IrcLine, format_time
from tests.ircd import IrcBot

CAPS = ["batch", "draft/chathistory", "message-tags", "server-time"]


@pytest.fixture
def server() -> Iterator[ChathistoryServer]:
    with ChathistoryServer(max_messages=5) as server:
        yield server


@pytest.fixture
def bots() -> Iterator[list[IrcBot]]:
    made: list[IrcBot] = []
    yield made
    for bot in made:
        bot.close()


def connect(server: ChathistoryServer, bots: list[IrcBot], nick: str, caps: list[str] = CAPS
            ) -> IrcBot:  # fmt: skip
    bot = IrcBot(nick).connect("127.0.0.1", server.port, nick, caps=caps)
    bots.append(bot)
    return bot


def history_reply(bot: IrcBot, request: str) -> tuple[IrcLine, list[IrcLine], IrcLine]:
    """Send a CHATHISTORY request; its BATCH +, the lines in it, its BATCH -."""
    since = bot.mark()
    bot.send_raw(request)
    opened = bot.wait_for(r"^(\S+ )?:\S+ BATCH \+", since=since)
    ref = opened.params[0][1:]
    closed = bot.wait_for(lambda line: line.command == "BATCH" and line.params == [f"-{ref}"],
                          since=since)  # fmt: skip
    inside = [line for line in bot.lines[since:] if line.tags.get("batch") == ref]
    return opened, inside, closed


def fail(bot: IrcBot, request: str) -> IrcLine:
    since = bot.mark()
    bot.send_raw(request)
    return bot.wait_for(lambda line: line.command in ("FAIL", "BATCH", "421"), since=since)


def test_negotiation_isupport_and_tags(server: ChathistoryServer, bots: list[IrcBot]) -> None:
    alice = connect(server, bots, "alice")
    assert set(CAPS) <= set(alice.caps_available)
    assert alice.caps_enabled == set(CAPS)
    assert alice.isupport["CHATHISTORY"] == "5"
    alice.join("#c")
    bob = connect(server, bots, "bob", caps=["message-tags"])  # no server-time
    bob.join("#c")
    plain = connect(server, bots, "plain", caps=[])
    plain.join("#c")
    carol = connect(server, bots, "carol")
    carol.join("#c")
    carol.say("#c", "hello all")
    line = alice.wait_for(r"PRIVMSG #c :hello all")
    assert line.source and line.source.startswith("carol!")
    assert line.tags["msgid"] and line.tags["time"].endswith("Z") and len(line.tags["time"]) == 24
    assert bob.wait_for(r"PRIVMSG #c :hello all").tags.keys() == {"msgid"}
    assert plain.wait_for(r"PRIVMSG #c :hello all").tags == {}
    # All or nothing: one capability it lacks and the whole request is refused.
    since = alice.mark()
    alice.send_raw("CAP REQ :batch draft/event-playback")
    nak = alice.wait_for(r" CAP ", since=since)
    assert nak.params[1:] == ["NAK", "batch draft/event-playback"]


def test_after_latest_before_between_around_with_the_limit(
    server: ChathistoryServer, bots: list[IrcBot]
) -> None:
    alice = connect(server, bots, "alice")
    alice.join("#c")
    said = [server.say("carol", "#c", f"line {i}") for i in range(12)]
    alice.wait_for(r":line 11")
    ids = [s.msgid for s in said]

    opened, inside, _ = history_reply(alice, f"CHATHISTORY AFTER #c msgid={ids[2]} 3")
    assert opened.params[1:] == ["chathistory", "#c"]
    assert [line.tags["msgid"] for line in inside] == ids[3:6]
    assert [line.text for line in inside] == ["line 3", "line 4", "line 5"]
    assert all(line.tags["time"] == s.time for line, s in zip(inside, said[3:6], strict=True))
    # The server's maximum (5) cuts a larger limit; the order is ascending.
    _, inside, _ = history_reply(alice, f"CHATHISTORY AFTER #c timestamp={said[0].time} 100")
    assert [line.tags["msgid"] for line in inside] == ids[1:6]
    # AFTER the newest line: an empty batch, not silence.
    _, inside, _ = history_reply(alice, f"CHATHISTORY AFTER #c msgid={ids[-1]} 5")
    assert inside == []

    _, inside, _ = history_reply(alice, "CHATHISTORY LATEST #c * 3")
    assert [line.tags["msgid"] for line in inside] == ids[9:]
    _, inside, _ = history_reply(alice, f"CHATHISTORY LATEST #c msgid={ids[8]} 5")
    assert [line.tags["msgid"] for line in inside] == ids[9:]
    _, inside, _ = history_reply(alice, f"CHATHISTORY LATEST #c msgid={ids[2]} 2")
    assert [line.tags["msgid"] for line in inside] == ids[10:]

    _, inside, _ = history_reply(alice, f"CHATHISTORY BEFORE #c msgid={ids[4]} 3")
    assert [line.tags["msgid"] for line in inside] == ids[1:4]
    _, inside, _ = history_reply(alice, f"CHATHISTORY BETWEEN #c msgid={ids[2]} msgid={ids[6]} 5")
    assert [line.tags["msgid"] for line in inside] == ids[3:6]
    # Backwards: counted from the first selector, returned in ascending order.
    _, inside, _ = history_reply(
        alice, f"CHATHISTORY BETWEEN #c timestamp={said[11].time} msgid={ids[2]} 2"
    )
    assert [line.tags["msgid"] for line in inside] == ids[9:11]
    _, inside, _ = history_reply(alice, f"CHATHISTORY AROUND #c msgid={ids[6]} 3")
    assert ids[6] in [line.tags["msgid"] for line in inside] and len(inside) == 3


def test_direct_messages_and_no_batch_without_the_cap(
    server: ChathistoryServer, bots: list[IrcBot]
) -> None:
    alice = connect(server, bots, "alice")
    server.say("bob", "alice", "psst")
    alice.wait_for(r"PRIVMSG alice :psst")
    alice.say("bob", "what?")
    _, inside, _ = history_reply(alice, "CHATHISTORY LATEST bob * 5")
    assert [(line.nick, line.text) for line in inside] == [("bob", "psst"), ("alice", "what?")]

    plain = connect(server, bots, "plain", caps=["server-time", "message-tags"])
    plain.join("#c")
    server.say("carol", "#c", "only line")
    plain.wait_for(r":only line")
    since = plain.mark()
    plain.send_raw("CHATHISTORY LATEST #c * 5")
    replayed = plain.wait_for(r"PRIVMSG #c :only line", since=since)
    assert "batch" not in replayed.tags
    assert not any(line.command == "BATCH" for line in plain.lines[since:])


def test_errors_are_standard_replies(server: ChathistoryServer, bots: list[IrcBot]) -> None:
    alice = connect(server, bots, "alice")
    alice.join("#c")
    said = server.say("carol", "#c", "x")
    alice.wait_for(r":x$")

    def params(request: str) -> list[str]:
        reply = fail(alice, request)
        assert reply.command == "FAIL", reply.raw
        return reply.params

    assert params("CHATHISTORY TARGETS a b 5")[:3] == ["CHATHISTORY", "INVALID_PARAMS", "TARGETS"]
    assert params("CHATHISTORY AFTER #c 5")[1:3] == ["INVALID_PARAMS", "AFTER"]
    assert params(f"CHATHISTORY AFTER #c msgid={said.msgid} 5 6")[1] == "INVALID_PARAMS"
    assert params("CHATHISTORY AFTER #c msgid=x zero")[1:4] == ["INVALID_PARAMS", "AFTER", "zero"]
    assert params("CHATHISTORY AFTER #c when=now 5")[1:4] == ["INVALID_PARAMS", "AFTER", "when=now"]
    assert params("CHATHISTORY AFTER #c timestamp=yesterday 5")[1] == "INVALID_PARAMS"
    assert params("CHATHISTORY AFTER #elsewhere * 5")[1:4] == ["INVALID_TARGET", "AFTER",
                                                                "#elsewhere"]  # fmt: skip
    assert params("CHATHISTORY AFTER nobody msgid=x 5")[1] == "INVALID_TARGET"
    assert params("CHATHISTORY AFTER #c msgid=never-seen 5")[1:4] == ["MESSAGE_ERROR", "AFTER",
                                                                       "#c"]  # fmt: skip
    server.expire("#c", 1)  # the server no longer holds it
    assert params(f"CHATHISTORY AFTER #c msgid={said.msgid} 5")[1] == "MESSAGE_ERROR"
    _, inside, _ = history_reply(alice, f"CHATHISTORY AFTER #c timestamp={format_time(said.at)} 5")
    assert inside == []


def test_without_the_capability_nothing_is_offered() -> None:
    with ChathistoryServer(caps=("server-time", "message-tags", "batch")) as server:
        bot = IrcBot("alice").connect("127.0.0.1", server.port, "alice", caps=CAPS)
        try:
            assert "draft/chathistory" not in bot.caps_available
            assert "CHATHISTORY" not in bot.isupport
            assert fail(bot, "CHATHISTORY LATEST #c * 5").command == "421"
        finally:
            bot.close()
