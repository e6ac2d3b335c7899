"""The gateway against real IRC servers on loopback (InspIRCd with its IRCv3 modules, ngIRCd),
and against a hostile one of our own for the lines no real server sends."""

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import transaction

from accounts.models import User
from channels_app import events
from channels_app.models import Channel, ChannelUser, Message, Notification, Server
from channels_app.services.servers import delete_server, save_server
from tenancy import switch
from tests.factories import UserFactory
from tests.gateway_support import messages, wait_until
from tests.ircd import IrcBot, IrcServer, unique_channel


def add_server(
    user: User, ircd: IrcServer, *, channels: tuple[str, ...] = (), **fields: Any
) -> int:
    values: dict[str, Any] = {
        "name": fields.pop("name", "Test net"), "host": "127.0.0.1", "port": ircd.port,
        "tls": False, "nick": fields.pop("nick", "alice_p"),
    }  # fmt: skip
    values.update(fields)
    # One transaction: the gateway is told after commit, so it reads the server together with
    # its channels (channels created after the commit could be read as none, with no second
    # command to bring them: the race that made test_web_changes_reach_the_gateway_within_a_
    # second time out now and then).
    with switch(user), transaction.atomic():
        server = save_server(
            account_id=user.account_id, server=Server(**values), alt_nicks=[], secrets={}
        )
        for name in channels:
            Channel.objects.create(server=server, name=name, autojoin=True)
        return server.pk


@pytest.fixture
def alice(clean_schemas: None) -> User:
    return UserFactory(email="alice@example.org")


@pytest.fixture
def bob(clean_schemas: None) -> User:
    return UserFactory(email="bob@example.org")


def test_registers_joins_stores_and_publishes(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub()
    pubsub.subscribe(events.events_channel(alice.account.pk))
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    conn = gateway.connection(alice, server_id)
    assert {"server-time", "echo-message", "multi-prefix", "message-tags"} <= conn.caps

    carol.say(channel, "hello alice_p, \x02bold\x02 move")
    stored = wait_until(lambda: messages(alice, text__startswith="hello"), what="the line")
    line = stored[0]
    assert (line.channel.name, line.sender, line.kind) == (channel, "carol", "message")
    assert line.text == "hello alice_p, \x02bold\x02 move"
    assert "time" in line.tags and line.msgid  # server-time and msgid from InspIRCd
    with switch(alice):
        assert Notification.objects.get().message_id == line.pk  # the nick is a highlight
        members = set(
            ChannelUser.objects.filter(channel__name=channel).values_list("nick", flat=True)
        )
    assert {"alice_p", "carol"} <= members

    seen: list[dict] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e.get("id") == line.pk for e in seen):
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            seen.append(json.loads(message["data"]))
    assert any(e["type"] == "server_state" and e["state"] == "connected" for e in seen)
    event = next(e for e in seen if e.get("id") == line.pk)
    assert event["text"] == line.text and event["highlight"] is True
    pubsub.close()

    # A private message opens a conversation and notifies.
    carol.say("alice_p", "psst")
    wait_until(lambda: messages(alice, text="psst"), what="the private message")
    with switch(alice):
        assert Channel.objects.get(name="carol").kind == Channel.Kind.QUERY
        assert Notification.objects.filter(kind="private").count() == 1


def test_echo_message_stores_what_we_send_once(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    command = {"account_id": str(alice.account.pk), "server_id": server_id}
    assert gateway.gateway is not None
    gateway.call(gateway.gateway.handle_command({**command, "op": "send", "target": channel,
                                                 "text": "hi from the web"}))  # fmt: skip
    gateway.call(gateway.gateway.handle_command({**command, "op": "send", "target": channel,
                                                 "text": "waves", "kind": "action"}))  # fmt: skip
    carol.wait_for(r"PRIVMSG \S+ :hi from the web")
    carol.wait_for(r"\x01ACTION waves\x01")
    wait_until(lambda: len(messages(alice, sender="alice_p", kind__in=["message", "action"])) == 2)
    time.sleep(0.5)
    mine = messages(alice, sender="alice_p", kind__in=["message", "action"])
    assert [(m.kind, m.text) for m in mine] == [("message", "hi from the web"), ("action", "waves")]
    assert all(m.msgid for m in mine)  # they came back from the server (echo-message)


def test_reconnects_and_rejoins_after_server_restart(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable,
    settings: Any,
) -> None:  # fmt: skip
    settings.GATEWAY_RECONNECT_FIRST_SECONDS = 0.5
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).state == "connected")
    inspircd.stop(graceful=False)
    wait_until(lambda: gateway.connection(alice, server_id).state == "disconnected", 20)
    conn = gateway.connection(alice, server_id)
    assert conn.last_error
    inspircd.start()

    def rejoined() -> bool:
        conn = gateway.connection(alice, server_id)
        return conn.state == "connected" and channel.lower() in conn.joined

    wait_until(rejoined, 40, "reconnected and rejoined")
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    carol.say(channel, "welcome back")
    wait_until(lambda: messages(alice, text="welcome back"), what="the line after reconnecting")
    with switch(alice):
        server_lines = Message.objects.filter(channel__kind="server").values_list("text", flat=True)
        assert any(t.startswith("Disconnected:") for t in server_lines)


def test_tls_with_a_self_signed_certificate(
    alice: User, inspircd: IrcServer, run_gateway: Callable
) -> None:
    assert inspircd.tls_port and inspircd.cert_path
    trusted = ssl.create_default_context(cafile=str(inspircd.cert_path))
    verified = add_server(alice, inspircd, name="Verified", nick="alice_v", tls=True,
                          port=inspircd.tls_port)  # fmt: skip
    unverified = add_server(alice, inspircd, name="Unverified", nick="alice_u", tls=True,
                            port=inspircd.tls_port, tls_verify=False)  # fmt: skip
    gateway = run_gateway(tls_context=trusted)
    wait_until(lambda: gateway.connection(alice, verified).state == "connected", 20)
    wait_until(lambda: gateway.connection(alice, unverified).state == "connected", 20)


def test_untrusted_certificate_is_refused_with_a_clear_error(
    alice: User, inspircd: IrcServer, run_gateway: Callable
) -> None:
    server_id = add_server(alice, inspircd, tls=True, port=inspircd.tls_port)
    gateway = run_gateway()  # the system's trust store: the test certificate is not in it
    wait_until(lambda: "certificate" in (gateway.connection(alice, server_id).last_error or ""))
    assert gateway.connection(alice, server_id).state != "connected"


def test_two_accounts_on_one_server_stay_isolated(
    alice: User, bob: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot],
    run_gateway: Callable,
) -> None:  # fmt: skip
    channel = unique_channel()
    add_server(alice, inspircd, channels=(channel,), nick="alice_p")
    add_server(bob, inspircd, channels=(channel,), nick="bob_p")
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN|:bob_p!\S+ JOIN")
    carol.wait_for(r":alice_p!\S+ JOIN|:bob_p!\S+ JOIN")
    carol.say(channel, "to everyone")
    carol.say("bob_p", "only for bob")
    wait_until(lambda: messages(bob, text="only for bob") and messages(alice, text="to everyone"))
    assert len(messages(alice, text="to everyone")) == 1
    assert len(messages(bob, text="to everyone")) == 1
    assert messages(alice, text="only for bob") == []


def test_web_changes_reach_the_gateway_within_a_second(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel = unique_channel()
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    server_id = add_server(alice, inspircd, channels=(channel,))  # published after commit
    started = time.monotonic()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=10)
    assert time.monotonic() - started < 3  # connect + register + join, driven by the command
    with switch(alice):
        delete_server(account_id=alice.account_id, server=Server.objects.get(pk=server_id))
    carol.wait_for(r":alice_p!\S+ QUIT", timeout=5)
    wait_until(lambda: gateway.connection(alice, server_id) is None)


def test_ngircd_simple_server(
    alice: User, ngircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    server_id = add_server(alice, ngircd, channels=("#palaver",))
    carol = irc_bot(ngircd, "carol")
    carol.join("#palaver")
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    carol.say("#palaver", "plain old irc")
    wait_until(lambda: messages(alice, text="plain old irc"))
    with switch(alice):
        assert Channel.objects.get(name="#palaver").topic  # the pre-created channel's topic
    assert gateway.connection(alice, server_id).caps <= {"multi-prefix"}


# --- a hostile server -----------------------------------------------------------------------

HOSTILE_LINES = [
    b"",
    b"\x00\x01\x02",
    b":",
    b"@",
    b"@;;; :x",
    b":onlyprefix",
    b"\xff\xfe\xfd not utf-8 \xe9\xe8",
    b"A" * 20000,
    b"@" + b"a=" * 6000 + b" PRIVMSG #x :tags too long",
    b":x JOIN",
    b":x!u@h PART",
    b":x!u@h KICK #c",
    b":x!u@h MODE #c +ooo a",
    b":x!u@h MODE #c +k",
    b":x!u@h NICK",
    b":x!u@h QUIT",
    b":x!u@h TOPIC",
    b":s 353 me",
    b":s 353 me = #c :@@@ +",
    b":s 366",
    b":s 005 me PREFIX=(qaohv CHANTYPES= CASEMAPPING=bogus :are supported",
    b":s CAP",
    b":s CAP * LS",
    b":s CAP * ACK",
    b":s 332",
    b":x!u@h PRIVMSG",
    b":x!u@h PRIVMSG #c",
    b":x!u@h PRIVMSG #c :\x01",
    b":x!u@h PRIVMSG me :\x01VERSION",
    b":x!u@h PRIVMSG me :\x01PING",
    b"@time=not-a-time :x!u@h PRIVMSG #c :bad time",
    b":x!u@h AWAY",
    b"PING",
    b":s 001",
    b":s 9999 what",
]


def test_hostile_lines_never_crash_the_gateway(alice: User, run_gateway: Callable) -> None:
    received: list[bytes] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    port_box: list[int] = []

    async def serve() -> None:
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while not received or b"USER" not in b"".join(received):
                received.append(await reader.readline())
            for line in [b":s 001 alice_p :Welcome", *HOSTILE_LINES,
                         b":s 001 alice_p :Welcome again",
                         b":x!u@h JOIN #c", b":carol!u@h PRIVMSG #c :still alive"]:  # fmt: skip
                writer.write(line + b"\r\n")
            await writer.drain()
            while True:
                data = await reader.readline()
                if not data:
                    return
                received.append(data)

        server = await asyncio.start_server(client, "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await server.serve_forever()

    def serve_forever() -> None:
        task = loop.create_task(serve())
        loop.run_forever()
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    ready.wait(5)

    class Fake:
        port = port_box[0]

    server_id = add_server(alice, Fake())  # type: ignore[arg-type]
    gateway = run_gateway()
    wait_until(lambda: messages(alice, text="still alive"), what="the valid line after the junk")
    conn = gateway.connection(alice, server_id)
    assert conn.state == "connected"
    # It answered the CTCP VERSION, and nothing took the process down.
    assert any(b"NOTICE x :\x01VERSION" in line for line in received)
    loop.call_soon_threadsafe(loop.stop)


def test_join_and_part_from_the_chat_are_remembered(
    alice: User, inspircd: IrcServer, run_gateway: Callable
) -> None:
    server_id = add_server(alice, inspircd)
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).state == "connected")
    assert gateway.gateway is not None
    command = {"account_id": str(alice.account.pk), "server_id": server_id, "op": "raw"}
    channel = unique_channel()
    gateway.call(gateway.gateway.handle_command({**command, "line": f"JOIN {channel}"}))

    def autojoin() -> bool | None:
        with switch(alice):
            found = Channel.objects.filter(name=channel).first()
            return found.autojoin if found else None

    wait_until(lambda: autojoin() is True, what="the joined channel to be remembered")
    gateway.call(gateway.gateway.handle_command({**command, "line": f"PART {channel}"}))
    wait_until(lambda: autojoin() is False, what="the parted channel to be forgotten")


def test_settings_reach_the_gateway_while_its_writer_is_busy_and_highlight(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    """Configuration is read off the store's writer thread: a writer stuck behind a slow
    batch does not hold up a settings change, and the new highlight words apply at once."""
    from channels_app.services.settings import save_chat_settings

    channel = unique_channel()
    add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    assert gateway.gateway is not None
    store = gateway.gateway.store
    carol.say(channel, "we deploy at noon")
    wait_until(lambda: messages(alice, text__startswith="we deploy"), what="the first line")

    release = threading.Event()

    async def hold_the_writer() -> None:
        store.run_sync(release.wait)

    gateway.call(hold_the_writer())
    try:
        with transaction.atomic():
            save_chat_settings(
                account=alice.account, highlight_words=["deploy"], history_retention_days=None
            )
        accounts = gateway.gateway.accounts
        wait_until(
            lambda: accounts[alice.account.pk].settings.get("highlight_words") == ["deploy"],
            5,
            "the gateway to read the new settings while its writer is busy",
        )
        carol.say(channel, "deploy done")
        wait_until(lambda: store.backlog >= 1, what="the line waiting for the writer")
    finally:
        release.set()
    stored = wait_until(lambda: messages(alice, text__startswith="deploy"), what="the line")
    with switch(alice):
        notified = list(Notification.objects.values_list("message__text", "kind"))
    assert notified == [("deploy done", "highlight")]
    assert stored[0].text == "deploy done"


def _send_errors(pubsub: Any, want: int, timeout: float = 10) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(found) < want:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            event = json.loads(message["data"])
            if event["type"] == "send_error":
                found.append(event)
    return found


def test_a_refusal_is_told_to_the_page_that_sent_the_line(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    """An error numeric naming the target (or the command) of a line sent with a cid is
    published as a send_error event with that cid; lines without a cid, and errors naming
    something else, are not; a line the gateway cannot send is told too."""
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)  # +t: alice may not set the topic
    pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub()
    pubsub.subscribe(events.events_channel(alice.account.pk))
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    assert gateway.gateway is not None
    command = {"account_id": str(alice.account.pk), "server_id": server_id}

    def handle(**fields: Any) -> None:
        gateway.call(gateway.gateway.handle_command({**command, **fields}))

    # InspIRCd labels its answers (labeled-response): the error is the labeled line's even
    # with a later line to the same target on its heels (naming the target alone would blame
    # the newest, ok-0).
    assert "labeled-response" in gateway.connection(alice, server_id).caps
    handle(op="raw", line=f"TOPIC {channel} :mine now", cid="topic-1")
    handle(op="send", target=channel, text="said right after", cid="ok-0")
    handle(op="send", target="nobody_here", text="hello?", cid="msg-2")
    handle(op="raw", line="FROBNICATE x", cid="cmd-3")
    handle(op="raw", line=f"TOPIC {channel} :no cid")  # refused too, but no page waits
    handle(op="send", target=channel, text="this one is fine", cid="ok-4")
    carol.wait_for(r"PRIVMSG \S+ :this one is fine")
    got = {e["cid"]: e for e in _send_errors(pubsub, 3)}
    assert set(got) == {"topic-1", "msg-2", "cmd-3"}
    assert got["topic-1"]["reason"].startswith(f"{channel}: ")
    assert "op" in got["topic-1"]["reason"]
    assert got["msg-2"]["reason"].startswith("nobody_here: ")
    assert got["cmd-3"]["reason"].startswith("FROBNICATE: ")
    assert all(e["server_id"] == server_id for e in got.values())
    assert _send_errors(pubsub, 1, timeout=1) == []  # nothing for ok-4, nothing without a cid
    # Still said in the server buffer, as before.
    wait_until(lambda: messages(alice, channel__kind="server", text__contains="FROBNICATE"))

    # A server id that is not the account's: nothing is said (not even that it is unknown).
    gateway.call(gateway.gateway.handle_command(
        {**command, "server_id": server_id + 1000, "op": "send", "target": channel,
         "text": "x", "cid": "gone-5"}
    ))  # fmt: skip
    assert _send_errors(pubsub, 1, timeout=1) == []  # not this account's server: silent
    pubsub.close()


def test_a_line_sent_before_registration_is_told_to_the_page(
    alice: User, run_gateway: Callable
) -> None:
    from tests.ircd import free_port

    with switch(alice):
        server = save_server(
            account_id=alice.account_id,
            server=Server(name="Down", host="127.0.0.1", port=free_port(), tls=False, nick="a"),
            alt_nicks=[],
            secrets={},
        )
    pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub()
    pubsub.subscribe(events.events_channel(alice.account.pk))
    gateway = run_gateway()
    assert gateway.gateway is not None
    wait_until(lambda: gateway.connection(alice, server.pk) is not None)
    gateway.call(gateway.gateway.handle_command(
        {"account_id": str(alice.account.pk), "server_id": server.pk, "op": "send",
         "target": "#x", "text": "hello", "cid": "early-1"}
    ))  # fmt: skip
    (event,) = _send_errors(pubsub, 1)
    assert event["cid"] == "early-1"
    assert "not connected" in event["reason"]
    pubsub.close()


def test_without_labels_an_error_goes_to_the_line_that_named_its_target(
    alice: User, miniircd: IrcServer, run_gateway: Callable
) -> None:
    """A server without labeled-response (miniircd): the error numeric naming a line's target
    or command within SEND_ERROR_SECONDS is that line's."""
    server_id = add_server(alice, miniircd)
    pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub()
    pubsub.subscribe(events.events_channel(alice.account.pk))
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).state == "connected")
    assert "labeled-response" not in gateway.connection(alice, server_id).caps
    assert gateway.gateway is not None
    command = {"account_id": str(alice.account.pk), "server_id": server_id}
    gateway.call(gateway.gateway.handle_command(
        {**command, "op": "send", "target": "nobody_here", "text": "hi", "cid": "nick-1"}
    ))  # fmt: skip
    (event,) = _send_errors(pubsub, 1)
    assert event["cid"] == "nick-1" and event["reason"].startswith("nobody_here: ")
    pubsub.close()
