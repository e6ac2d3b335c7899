"""The IRC servers the tests start (tests/ircd.py) really work, and so does the test client."""

import datetime
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ircd import (
    GATEWAY_CAPS,
    BotFactory,
    InspIRCd,
    IrcBot,
    IrcLine,
    MiniIrcd,
    Ngircd,
    in_parallel,
    unique_channel,
)


def privmsg_from(nick: str, text: str) -> Callable[[IrcLine], bool]:
    return lambda line: line.command == "PRIVMSG" and line.nick == nick and line.text == text


def test_inspircd_capabilities_and_a_conversation(inspircd: InspIRCd, irc_bot: BotFactory) -> None:
    # Registered at once: InspIRCd 3 completes registrations only at the turn of a second.
    caps = ["server-time", "message-tags", "echo-message"]
    alice, bob, carol = in_parallel(
        lambda: irc_bot(inspircd, "alice", caps=caps),
        lambda: irc_bot(inspircd, "bob", caps=caps),
        lambda: irc_bot(inspircd, "carol"),  # no CAP at all
    )
    assert set(GATEWAY_CAPS) <= set(alice.caps_available), alice.caps_available
    assert alice.caps_enabled == {"server-time", "message-tags", "echo-message"}
    assert alice.welcome is not None and alice.welcome.source == inspircd.server_name
    assert alice.isupport["NETWORK"] == "PalaverTest"

    channel = unique_channel()
    for bot in (alice, bob, carol):
        bot.join(channel)
    alice.wait_for(lambda line: line.command == "JOIN" and line.nick == "carol")

    bob.say(channel, "hello from bob")
    line = alice.wait_for(privmsg_from("bob", "hello from bob"))
    assert line.params[0] == channel
    sent_at = datetime.datetime.fromisoformat(line.tags["time"].replace("Z", "+00:00"))
    assert abs(datetime.datetime.now(datetime.UTC) - sent_at) < datetime.timedelta(seconds=30)
    assert line.tags["msgid"]
    # echo-message: bob gets his own line back, with the same msgid.
    assert bob.wait_for(privmsg_from("bob", "hello from bob")).tags["msgid"] == line.tags["msgid"]
    # Without the capabilities: no tags, and no echo of one's own line.
    assert carol.wait_for(privmsg_from("bob", "hello from bob")).tags == {}
    carol.action(channel, "waves")
    assert alice.wait_for(privmsg_from("carol", "\x01ACTION waves\x01")).tags["time"]
    carol.assert_no(privmsg_from("carol", "\x01ACTION waves\x01"), within=0.2, since=0)


def test_inspircd_stop_start_and_kill_on_the_same_port(
    inspircd: InspIRCd, irc_bot: BotFactory
) -> None:
    assert inspircd.process is not None
    port, tls_port, first_pid = inspircd.port, inspircd.tls_port, inspircd.process.pid
    bot = irc_bot(inspircd, "survivor")

    inspircd.stop()
    assert inspircd.process is None and not inspircd.running
    assert bot.wait_closed(5.0), "the server's clients are disconnected"
    assert any(line.command == "ERROR" for line in bot.lines), "SIGTERM: a goodbye"
    with pytest.raises(OSError):
        IrcBot("late").connect(inspircd.host, port, "late", timeout=1.0)

    inspircd.start()  # returns once a client got its 001
    assert inspircd.running and inspircd.process is not None
    assert inspircd.process.pid != first_pid
    assert (inspircd.port, inspircd.tls_port) == (port, tls_port)
    # Not registered (InspIRCd would make it wait for the next second): connected is enough.
    again = irc_bot(inspircd, "survivor", register=False)

    inspircd.kill()
    assert again.wait_closed(5.0)
    assert not any(line.command == "ERROR" for line in again.lines), "SIGKILL: no goodbye"
    assert inspircd.starts == 2


def test_inspircd_tls(inspircd: InspIRCd, irc_bot: BotFactory) -> None:
    assert inspircd.tls_port and inspircd.cert_path and inspircd.cert_path.is_file()
    bot = irc_bot(inspircd, "secure", tls=True)  # trusts inspircd.cert_path
    assert bot.tls_version in {"TLSv1.2", "TLSv1.3"}

    # The certificate names localhost too.
    by_name = IrcBot("by-name")
    by_name.connect(
        "localhost",
        inspircd.tls_port,
        "byname",
        tls=True,
        ca_file=inspircd.cert_path,
        register=False,
    )
    assert by_name.tls_version
    by_name.close()

    # Not trusted: verification fails.
    with pytest.raises(ssl.SSLCertVerificationError, match=r"self[- ]signed"):
        IrcBot("doubter").connect(inspircd.host, inspircd.tls_port, "doubter", tls=True)

    # Verification turned off (a per-server opt-out in the gateway): it connects.
    lax = IrcBot("lax")
    lax.connect(inspircd.host, inspircd.tls_port, "lax", tls=True, verify=False, register=False)
    assert lax.tls_version
    lax.close()


def test_inspircd_connection_password(
    inspircd_factory: Callable[..., InspIRCd], irc_bot: BotFactory
) -> None:
    server = inspircd_factory(password="sesame", tls=False)
    assert server.tls_port is None

    def wrong_password() -> None:
        with pytest.raises(AssertionError, match="registration refused"):
            IrcBot("wrong").connect(server.host, server.port, "wrong", password="nope")

    right, _ = in_parallel(lambda: irc_bot(server, "right", password="sesame"), wrong_password)
    assert right is not None and right.nick == "right"


def test_ngircd_register_and_talk(ngircd: Ngircd, irc_bot: BotFactory) -> None:
    alice, bob = irc_bot.many(ngircd, ["alice", "bob"], caps=["multi-prefix"])
    assert set(alice.caps_available) == {"multi-prefix"}
    alice.join(ngircd.channel)
    topic = alice.wait_for(lambda line: line.command == "332", since=0)
    assert topic.text == ngircd.topic
    bob.join(ngircd.channel)
    bob.say(ngircd.channel, "hi from bob")
    assert alice.wait_for(privmsg_from("bob", "hi from bob")).params[0] == ngircd.channel
    alice.say("bob", "and a private hello")
    assert bob.wait_for(privmsg_from("alice", "and a private hello")).params[0] == "bob"


def test_miniircd_register_and_talk(miniircd: MiniIrcd, irc_bot: BotFactory) -> None:
    # CAP is asked for but miniircd knows no CAP: the bot registers anyway.
    alice, bob = irc_bot.many(miniircd, ["alice", "bob"], caps=["server-time"])
    assert alice.caps_enabled == set() and alice.isupport == {}
    channel = unique_channel()
    alice.join(channel)
    bob.join(channel)
    bob.say(channel, "hi from bob")
    line = alice.wait_for(privmsg_from("bob", "hi from bob"))
    assert line.params[0] == channel and line.tags == {}


def test_a_missing_server_binary_fails_the_test(tmp_path: Path) -> None:
    class Absent(InspIRCd):
        binary = "/nonexistent/inspircd"

    with pytest.raises(pytest.fail.Exception, match=r"ensure_ircd\.sh"):
        Absent(directory=tmp_path).start()


def test_irc_line_parsing() -> None:
    line = IrcLine.parse(
        r"@time=2026-01-02T03:04:05.678Z;msgid=abc;+draft/x=a\sb\:c\\ :nick!user@host "
        "PRIVMSG #chan :hello :world"
    )
    assert line.tags == {
        "time": "2026-01-02T03:04:05.678Z",
        "msgid": "abc",
        "+draft/x": "a b;c\\",
    }
    assert (line.nick, line.command, line.params) == ("nick", "PRIVMSG", ["#chan", "hello :world"])
    server = IrcLine.parse(":irc.example.test 001 me :Welcome")
    assert server.nick is None and server.text == "Welcome"
    assert IrcLine.parse("PING :token").params == ["token"]
