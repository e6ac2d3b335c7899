"""The gateway away while the channel talks: on reconnecting it asks for what it missed with
IRCv3 draft/chathistory (gateway/chathistory.py), against the scripted server of
tests/chathistory_server.py (no server packaged here offers chathistory; see its docstring)."""

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from accounts.models import User
from channels_app.models import Channel, Message, Notification
from gateway.chathistory import HISTORY_TAG
from tenancy import switch
from tests.chathistory_server import ChathistoryServer, Said
from tests.factories import UserFactory
from tests.gateway_support import GatewayThread, messages, wait_until
from tests.test_gateway import add_server

CHANNEL = "#c"


@pytest.fixture
def alice(clean_schemas: None) -> User:
    return cast(User, UserFactory(email="alice@example.org"))


@pytest.fixture
def history() -> Iterator[ChathistoryServer]:
    with ChathistoryServer(max_messages=50) as server:
        yield server


@pytest.fixture
def quick_reconnect(settings: Any) -> None:
    settings.GATEWAY_RECONNECT_FIRST_SECONDS = 0.2
    settings.GATEWAY_RECONNECT_MAX_SECONDS = 0.5


def said_in(user: User, buffer: str) -> list[Message]:
    """What is stored of a buffer's messages, notices and actions, in the history's order."""
    with switch(user):
        return list(
            Message.objects.filter(channel__name=buffer, kind__in=["message", "notice", "action"])
            .order_by("server_time", "id")
        )  # fmt: skip


def as_server_has_it(lines: list[Said]) -> list[tuple[str, str, str]]:
    return [(s.msgid, s.text.removeprefix("\x01ACTION ").rstrip("\x01"), s.time) for s in lines]


def as_stored(lines: list[Message]) -> list[tuple[str, str, str]]:
    return [
        (m.msgid, m.text, m.server_time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z") for m in lines
    ]


def afters(server: ChathistoryServer) -> list[list[str]]:
    return [line.params for line in server.commands("CHATHISTORY")]


def test_a_restarted_gateway_stores_every_missed_line_once_in_order(
    alice: User, history: ChathistoryServer, run_gateway: Callable[..., GatewayThread]
) -> None:
    add_server(alice, history, channels=(CHANNEL,))  # type: ignore[arg-type]
    first = GatewayThread().start()
    try:
        wait_until(lambda: "alice_p" in history.joined(CHANNEL), what="the first join")
        for i in range(5):
            history.say("carol", CHANNEL, f"before {i}")
        history.say("bob", "alice_p", "hi alice")
        wait_until(lambda: len(said_in(alice, CHANNEL)) == 5 and said_in(alice, "bob"))
    finally:
        first.stop()
    # No CHATHISTORY on the first connection: nothing was stored before it.
    assert afters(history) == []
    last_seen = history.history(CHANNEL)[-1]

    # The channel talks while the gateway is away: a highlight, an action, a notice among them,
    # and a private message.
    for i in range(120):
        if i == 40:
            history.say("carol", CHANNEL, "alice_p: are you there?")
        elif i == 41:
            history.say("carol", CHANNEL, "\x01ACTION waves\x01")
        elif i == 42:
            history.say("dave", CHANNEL, "a notice", notice=True)
        else:
            history.say("carol", CHANNEL, f"missed {i}")
    history.say("bob", "alice_p", "missed dm")
    # A live line relayed just before the server answers the first request: the history holds
    # it too, and it must be stored once.
    raced: list[Said] = []

    def race(target: str) -> None:
        if target == CHANNEL and not raced:
            raced.append(history._say("carol!carol@x", CHANNEL, "live while asking", "PRIVMSG"))

    history.before_reply = race
    run_gateway()
    wait_until(lambda: raced, what="the first request")
    everything = history.history(CHANNEL)
    assert len(everything) == 5 + 120 + 1
    wait_until(lambda: len(said_in(alice, CHANNEL)) >= len(everything), 30, "the backfill")
    wait_until(lambda: len(said_in(alice, "bob")) == 2, what="the missed private message")
    stored = said_in(alice, CHANNEL)
    assert as_stored(stored) == as_server_has_it(everything)  # once each, in order, msgid, time
    assert [m.sender for m in stored][5:8] == ["carol"] * 3
    by_text = {m.text: m for m in stored}
    assert by_text["waves"].kind == "action" and by_text["a notice"].kind == "notice"
    # Backfilled lines are stored in the order they were said (ids rising with time).
    missed = [m for m in stored[5:] if m.text != "live while asking"]
    assert [m.pk for m in missed] == sorted(m.pk for m in missed)
    assert all(m.tags.get(HISTORY_TAG) and "batch" not in m.tags for m in missed)
    assert not any(HISTORY_TAG in m.tags for m in stored[:5])

    # Paged by AFTER from the last line stored, 50 (the server's maximum) at a time.
    requests = afters(history)
    channel_requests = [r for r in requests if r[1] == CHANNEL]
    assert channel_requests[0] == ["AFTER", CHANNEL, f"msgid={last_seen.msgid}", "50"]
    assert [r[3] for r in channel_requests] == ["50", "50", "50"]
    assert channel_requests[1][2] == f"msgid={everything[5 + 50 - 1].msgid}"
    assert next(r[:2] for r in requests if r[1] == "bob") == ["AFTER", "bob"]

    # A missed mention and a missed private message still notify: the outage was ours.
    with switch(alice):
        kinds = {(n.kind, n.message.text) for n in Notification.objects.select_related("message")}
        assert Channel.objects.get(name="bob").kind == Channel.Kind.QUERY
    assert ("highlight", "alice_p: are you there?") in kinds
    assert ("private", "missed dm") in kinds


def test_a_dropped_connection_pages_up_to_the_cap_and_resumes_by_time(
    alice: User, history: ChathistoryServer, run_gateway: Callable[..., GatewayThread],
    quick_reconnect: None, settings: Any,
) -> None:  # fmt: skip
    settings.GATEWAY_CHATHISTORY_MAX_LINES = 120
    # A read rate the backfill alone would exceed: lines we asked for do not count against it.
    settings.GATEWAY_MAX_LINES_PER_SECOND = 20
    settings.GATEWAY_LINE_BURST = 50
    server_id = add_server(alice, history, channels=(CHANNEL,))  # type: ignore[arg-type]
    gateway = run_gateway()
    wait_until(lambda: "alice_p" in history.joined(CHANNEL), what="the join")
    for i in range(3):
        history.say("carol", CHANNEL, f"before {i}")
    wait_until(lambda: len(said_in(alice, CHANNEL)) == 3)
    resume = history.history(CHANNEL)[-1]

    history.refuse()
    wait_until(lambda: gateway.connection(alice, server_id).state != "connected")
    for i in range(200):
        history.say("carol", CHANNEL, f"missed {i}")
    # The server no longer holds the line the gateway resumes from: it asks by time instead.
    history.expire(CHANNEL, 3)
    history.allow()
    wait_until(lambda: len(said_in(alice, CHANNEL)) >= 3 + 120, 30, "the backfill")
    wait_until(lambda: messages(alice, text__startswith="Fetched 120 missed lines of #c"))

    stored = said_in(alice, CHANNEL)
    missed = history.history(CHANNEL)
    assert as_stored(stored[3:]) == as_server_has_it(missed[:120])  # the cap: 120, the oldest
    requests = afters(history)
    assert requests[0] == ["AFTER", CHANNEL, f"msgid={resume.msgid}", "50"]
    assert requests[1] == ["AFTER", CHANNEL, f"timestamp={resume.time}", "50"]
    assert [r[3] for r in requests[1:]] == ["50", "50", "20"]
    assert requests[2][2] == f"msgid={missed[49].msgid}"

    assert not messages(alice, text__contains="reading it slower")

    # The live channel goes on as before.
    history.say("carol", CHANNEL, "back to normal")
    wait_until(lambda: messages(alice, text="back to normal"))


def test_a_server_without_chathistory_is_asked_nothing(
    alice: User, run_gateway: Callable[..., GatewayThread], quick_reconnect: None
) -> None:
    with ChathistoryServer(caps=("batch", "message-tags", "server-time")) as plain:
        server_id = add_server(alice, plain, channels=(CHANNEL,))  # type: ignore[arg-type]
        gateway = run_gateway()
        wait_until(lambda: "alice_p" in plain.joined(CHANNEL), what="the join")
        plain.say("carol", CHANNEL, "before")
        wait_until(lambda: messages(alice, text="before"))
        plain.refuse()
        wait_until(lambda: gateway.connection(alice, server_id).state != "connected")
        plain.say("carol", CHANNEL, "missed")
        plain.allow()
        wait_until(lambda: "alice_p" in plain.joined(CHANNEL), what="the rejoin")
        plain.say("carol", CHANNEL, "after")
        wait_until(lambda: messages(alice, text="after"))
        assert "draft/chathistory" not in gateway.connection(alice, server_id).caps
        assert plain.commands("CHATHISTORY") == []
        assert [m.text for m in said_in(alice, CHANNEL)] == ["before", "after"]
