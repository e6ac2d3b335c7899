"""Items of issue 11 the gateway carries, against a real InspIRCd on loopback: long lines split
to fit the 512 bytes others receive, /list gathered for the web page, /whois in one block."""

import json
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings as django_settings

from accounts.models import User
from gateway.connection import describe_whois
from gateway.lists import channel_list_key
from gateway.protocol import parse_line
from tests.gateway_support import messages, wait_until
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


def _raw(gateway: object, user: User, server_id: int, line: str) -> None:
    payload = {
        "account_id": str(user.account.pk),
        "server_id": server_id,
        "op": "raw",
        "line": line,
    }
    gateway.call(gateway.gateway.handle_command(payload))  # type: ignore[attr-defined]


def test_list_is_gathered_bounded_and_kept_for_the_page(
    alice: User,  # noqa: F811
    inspircd: IrcServer,
    irc_bot: Callable[..., IrcBot],
    run_gateway: Callable,
    settings: Any,
) -> None:
    settings.GATEWAY_LIST_MAX_CHANNELS = 4
    server_id = add_server(alice, inspircd)
    carol, dana, erin = irc_bot.many(inspircd, ["carol", "dana", "erin"])  # type: ignore[attr-defined]
    names = [unique_channel("#l") for _ in range(8)]
    for index, name in enumerate(names):
        carol.join(name)
        if index < 3:
            dana.join(name)  # the three biggest, then one of the others
        if index < 2:
            erin.join(name)
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).registered, what="registered")
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    key = channel_list_key(alice.account_id, server_id)
    client.delete(key)
    _raw(gateway, alice, server_id, "LIST")

    def published() -> dict[str, Any] | None:
        raw = client.get(key)
        payload = json.loads(raw) if raw else None
        return payload if payload and payload["done"] else None

    try:
        payload = wait_until(published, timeout=30, what="the list in Redis")
    except AssertionError:
        raise AssertionError(f"not published whole; Redis holds {client.get(key)!r}") from None
    assert payload["seen"] == 8 and payload["truncated"] is True
    channels = payload["channels"]
    assert len(channels) == 4  # the biggest kept, biggest first
    assert [c[1] for c in channels] == [3, 3, 2, 1]
    assert {c[0] for c in channels[:3]} == set(names[:3])
    assert 0 < client.ttl(key) <= settings.GATEWAY_LIST_TTL_SECONDS
    assert gateway.connection(alice, server_id)._channel_list is None  # nothing held after


def test_whois_is_one_readable_block_where_it_was_typed(
    alice: User,  # noqa: F811
    inspircd: IrcServer,
    irc_bot: Callable[..., IrcBot],
    run_gateway: Callable,
) -> None:
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    carol.send_raw("AWAY :gone fishing")
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    _raw(gateway, alice, server_id, f"@palaver/buffer={channel} WHOIS carol")
    # The tag is the gateway's: the server never sees it.
    block = wait_until(
        lambda: (
            [m.text for m in messages(alice, kind="system", channel__name=channel)]
            if any("carol is connected to" in m.text for m in messages(alice, kind="system"))
            else None
        ),
        what="the whois block",
    )
    assert block[0].startswith("carol is ") and "(Palaver test bot)" in block[0]
    assert any(t == f"carol is in {channel}" for t in block), block
    assert any(t == "carol is away: gone fishing" for t in block), block
    assert any(t.startswith("carol has been idle ") and "signed on" in t for t in block), block
    stored = messages(alice, kind="system", channel__name=channel)
    assert all(m.tags.get("palaver/whois") == "carol" for m in stored)
    # A 301 that answers no WHOIS (we messaged someone away) is shown as before.
    _send(gateway, alice, server_id, target="carol", text="are you there?")
    wait_until(
        lambda: any("gone fishing" in t for t in _server_buffer(alice)), what="the away reply"
    )
    # An unknown nick, from the server buffer's /quote: said there.
    _raw(gateway, alice, server_id, "WHOIS nobody_here")
    wait_until(lambda: messages(alice, text="nobody_here: no such nick."), what="no such nick")


def _server_buffer(user: User) -> list[str]:
    return [m.text for m in messages(user, channel__kind="server")]


def test_whois_replies_read_as_sentences() -> None:
    def said(raw: str) -> str:
        return describe_whois(parse_line(raw))

    me = ":irc.example.org {} alice_p bob"
    assert said(me.format("311") + " ~b host.example * :Bob Real") == (
        "bob is ~b@host.example (Bob Real)"
    )
    assert said(me.format("312") + " irc.example.org :A server") == (
        "bob is connected to irc.example.org (A server)"
    )
    assert said(me.format("319") + " :@#ops +#chat #x ") == "bob is in @#ops +#chat #x"
    assert said(me.format("330") + " bobacct :is logged in as") == "bob is logged in as bobacct"
    assert said(me.format("301") + " :lunch") == "bob is away: lunch"
    assert said(me.format("317") + " 3725 1764547200 :seconds idle, signon time") == (
        "bob has been idle 1 h 2 min, signed on 2025-12-01 00:00 UTC"
    )
    assert said(me.format("317") + " 42 x :seconds idle") == "bob has been idle 42 s"
    assert said(me.format("313") + " :is an IRC operator") == "bob is an IRC operator"
    assert said(me.format("671") + " :is using a secure connection") == (
        "bob is using a secure connection"
    )
    assert said(me.format("338") + " 203.0.113.9 :is actually using host") == (
        "bob 203.0.113.9 is actually using host"
    )
