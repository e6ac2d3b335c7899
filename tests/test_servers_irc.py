"""Items of issue 11 the gateway carries, against a real InspIRCd on loopback: long lines split
to fit the 512 bytes others receive, /list gathered for the web page, /whois in one block."""

from collections.abc import Callable

from accounts.models import User
from tests.gateway_support import wait_until
from tests.ircd import IrcBot, IrcServer, unique_channel
from tests.test_gateway import add_server, alice  # noqa: F401 (fixture)


def _send(gateway: object, user: User, server_id: int, **command: str) -> None:
    payload = {"account_id": str(user.account.pk), "server_id": server_id, "op": "send", **command}
    gateway.call(gateway.gateway.handle_command(payload))  # type: ignore[attr-defined]


def _pieces(bot: IrcBot, since: int, command: str) -> list[str]:
    """The texts alice_p sent `bot` since the mark, without the /me wrapper."""
    return [
        line.params[-1].removeprefix("\x01ACTION ").removesuffix("\x01")
        for line in bot.lines[since:]
        if line.command == command and line.nick == "alice_p"
    ]


def test_long_lines_arrive_whole_and_in_order(
    alice: User,  # noqa: F811
    inspircd: IrcServer,
    irc_bot: Callable[..., IrcBot],
    run_gateway: Callable,
) -> None:
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    conn = gateway.connection(alice, server_id)
    wait_until(lambda: conn.own_user_host, what="our user@host, learnt from our JOIN")

    texts = {
        "message": " ".join(f"wörd{i} 日本語" for i in range(150)),  # ~2,100 bytes
        "action": "ü" * 1200,  # no space at all, two bytes a character
        "notice": "see https://example.org/" + "a" * 700 + " and then some more words",
    }
    for kind, text in texts.items():
        mark = carol.mark()
        _send(gateway, alice, server_id, target=channel, text=text, kind=kind)
        command = "NOTICE" if kind == "notice" else "PRIVMSG"
        wait_until(
            lambda: "".join(_pieces(carol, mark, command)) == text,  # noqa: B023 (waited here)
            timeout=20,
            what=f"every piece of the {kind}",
        )
        received = _pieces(carol, mark, command)
        assert len(received) >= 2
        sizes = [len(r.encode()) for r in received]
        assert min(sizes) >= max(sizes) // 2, sizes  # balanced: no lone fragment
        for line in carol.lines[mark:]:
            if line.command == command and line.nick == "alice_p":
                # What carol received is the whole line, within 512 bytes with its prefix.
                body = line.raw.split(" ", 1)[1] if line.raw.startswith("@") else line.raw
                assert len(body.encode()) + 2 <= 512
