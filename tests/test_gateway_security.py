"""The gateway as an attacker would use it (issue 6, items 2 and 5): the address policy at every
connect, nothing typed before registration, commands over Redis it cannot be fooled by, and
passwords it sends never kept. Real InspIRCd, real Redis, real PostgreSQL."""

import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.urls import reverse

from accounts.models import User
from channels_app import events
from channels_app.models import Message, Server
from channels_app.services.servers import delete_server, save_server
from core import crypto
from tenancy import switch
from tests.conftest import signed_in_client
from tests.gateway_support import messages, wait_until
from tests.ircd import IrcBot, IrcServer, unique_channel
from tests.test_gateway import add_server, alice, bob
from tests.test_gateway_auth import ScriptedServer

# The gateway tests' personas, committed (the gateway's writer thread has its own connection).
__all__ = ["alice", "bob"]


@pytest.fixture
def default_policy(settings: Any) -> Iterator[Any]:
    """The policy a deployment has: loopback refused (the test settings allow it)."""
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    settings.OUTBOUND_DENIED_NETWORKS = []
    yield settings


class Listener:
    """A TCP port on loopback that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


InChannel = tuple[Any, int, str, IrcBot]


@pytest.fixture
def in_channel(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> InChannel:
    """A running gateway holding alice's server, joined to a channel where carol listens:
    (gateway thread, server id, channel, carol)."""
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    return gateway, server_id, channel, carol


def closed_port() -> int:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def server_buffer(user: User) -> list[str]:
    return [m.text for m in messages(user, channel__kind="server")]


# --- the address policy at connect time ---------------------------------------------------------


def test_refused_host_is_never_connected_and_gives_no_port_oracle(
    default_policy: Any, alice: User, run_gateway: Callable
) -> None:
    listener = Listener()
    try:
        with switch(alice):
            open_id = save_server(
                account_id=alice.account_id,
                server=Server(name="Open", host="127.0.0.1", port=listener.port, nick="alice_p"),
                alt_nicks=[], secrets={},
            ).pk  # fmt: skip
            closed_id = save_server(
                account_id=alice.account_id,
                server=Server(name="Closed", host="127.0.0.1", port=closed_port(), nick="alice_p"),
                alt_nicks=[], secrets={},
            ).pk  # fmt: skip
        gateway = run_gateway()

        def last_error(server_id: int) -> Any:
            return gateway.connection(alice, server_id).last_error

        errors = {
            server_id: wait_until(
                functools.partial(last_error, server_id), what="a connection error"
            )
            for server_id in (open_id, closed_id)
        }
        # The same words whether something listens there or not: no port scanner.
        assert errors[open_id] == errors[closed_id] == "refused: 127.0.0.1 is a loopback address"
        wait_until(
            lambda: sum("refused: 127.0.0.1 is a loopback address" in t
                        for t in server_buffer(alice)) >= 2,
            what="the refusal in both server buffers",
        )  # fmt: skip
        assert listener.accepted == 0
    finally:
        listener.close()


def test_every_connect_checks_again_so_a_name_cannot_rebind(
    settings: Any, alice: User, inspircd: IrcServer, run_gateway: Callable,
) -> None:  # fmt: skip
    """The host passes the form and the first connect (loopback allowed then); at the next
    connect the same name leads to a refused address (here: the policy no longer allows it,
    which is what a rebinding name looks like to the gateway) and no connection is made."""
    settings.GATEWAY_RECONNECT_FIRST_SECONDS = 0.3
    client = signed_in_client(alice)
    response = client.post(
        reverse("channels:server_create"),
        {"name": "Rebinding", "host": "localhost", "port": inspircd.port, "nick": "alice_p",
         "alt_nicks": "", "autoconnect": "on"},
    )  # fmt: skip
    assert response.status_code == 302
    with switch(alice):
        server_id = Server.objects.get().pk
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).state == "connected", 20)

    settings.OUTBOUND_ALLOWED_NETWORKS = []
    inspircd.stop(graceful=False)
    inspircd.start()
    refusal = "refused: localhost resolves to 127.0.0.1, a loopback address"
    wait_until(lambda: gateway.connection(alice, server_id).last_error == refusal, 20)
    wait_until(lambda: any(refusal in text for text in server_buffer(alice)), what="the buffer")
    time.sleep(1.0)  # several more attempts at this backoff: all refused
    conn = gateway.connection(alice, server_id)
    assert conn.state == "disconnected" and conn.last_error == refusal


# --- nothing typed before registration; one line is one command ---------------------------------


def test_nothing_typed_reaches_the_socket_before_the_welcome(
    alice: User, run_gateway: Callable
) -> None:
    def never_welcome(line: str, send: Callable[[str], None]) -> None:
        if line == "CAP LS 302":
            send(":s CAP * LS :server-time")
        elif line.startswith("CAP REQ"):
            send(":s CAP * ACK :server-time")

    server = ScriptedServer(never_welcome)
    try:
        with switch(alice):
            server_id = save_server(
                account_id=alice.account_id,
                server=Server(name="Slow", host="127.0.0.1", port=server.port, tls=False,
                              nick="alice_p"),
                alt_nicks=[], secrets={},
            ).pk  # fmt: skip
        gateway = run_gateway()
        wait_until(lambda: any(line.startswith("USER ") for line in server.received))
        command = {"account_id": str(alice.account.pk), "server_id": server_id}
        assert gateway.gateway is not None
        gateway.call(gateway.gateway.handle_command(
            {**command, "op": "raw", "line": "SET palaver:pwned 1"}))  # fmt: skip
        gateway.call(gateway.gateway.handle_command(
            {**command, "op": "raw", "line": "PRIVMSG victim :too early"}))  # fmt: skip
        gateway.call(gateway.gateway.handle_command(
            {**command, "op": "send", "target": "victim", "text": "also too early"}))  # fmt: skip
        wait_until(
            lambda: sum("Not sent: not connected to the server yet" in t
                        for t in server_buffer(alice)) == 3,
            what="three refusals in the server buffer",
        )  # fmt: skip
        time.sleep(0.3)
        assert not [line for line in server.received if "palaver:pwned" in line or "early" in line]
    finally:
        server.stop()


def test_a_typed_line_cannot_carry_a_second_command(alice: User, in_channel: InChannel) -> None:
    gateway, server_id, channel, carol = in_channel
    command = {"account_id": str(alice.account.pk), "server_id": server_id}
    assert gateway.gateway is not None
    smuggling = ["one\rQUIT :smuggled", "two\r\nQUIT", "three\nQUIT", "four\x00QUIT"]
    for line in (f"PRIVMSG {channel} :{text}" for text in smuggling):
        gateway.call(gateway.gateway.handle_command({**command, "op": "raw", "line": line}))
    gateway.call(gateway.gateway.handle_command(
        {**command, "op": "send", "target": f"{channel}\r\nQUIT", "text": "five"}))  # fmt: skip
    gateway.call(gateway.gateway.handle_command(
        {**command, "op": "send", "target": channel, "text": "six\r\nQUIT :smuggled"}))  # fmt: skip
    gateway.call(gateway.gateway.handle_command(
        {**command, "op": "raw", "line": f"PRIVMSG {channel} :fine"}))  # fmt: skip
    mark = carol.wait_for(rf"PRIVMSG {channel} :fine")
    assert mark is not None
    carol.assert_no(r":alice_p!\S+ QUIT")
    carol.assert_no(r"PRIVMSG \S+ :(one|two|three|four|five|six)")
    assert gateway.connection(alice, server_id).state == "connected"


# --- commands over Redis ---------------------------------------------------------------------


def test_unsealed_or_replayed_commands_are_ignored_and_not_logged(
    alice: User, in_channel: InChannel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _gateway, server_id, channel, carol = in_channel
    command = {"op": "raw", "account_id": str(alice.account.pk), "server_id": server_id}
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    # What anyone who can PUBLISH to Redis could send: the old wire format, plain JSON.
    forged = {**command, "line": f"PRIVMSG {channel} :forged-by-redis"}
    client.publish(events.GATEWAY_COMMANDS, json.dumps(forged))
    # A sealed command captured and replayed after its time.
    stale = {**command, "line": f"PRIVMSG {channel} :replayed-later"}
    old = crypto.box().encrypt_at_time(
        events.encode(stale).encode(), int(time.time()) - events.COMMAND_TTL_SECONDS - 60
    )
    client.publish(events.GATEWAY_COMMANDS, old)
    # Sealed with someone else's key.
    from cryptography.fernet import Fernet

    other = Fernet(Fernet.generate_key()).encrypt(
        events.encode({**command, "line": f"PRIVMSG {channel} :other-key"}).encode()
    )
    client.publish(events.GATEWAY_COMMANDS, other)
    # The web's own: acted on, and after the others, so they had their chance.
    events.publish_command(
        events.RawCommand(account_id=str(alice.account.pk), server_id=server_id,
                          line=f"PRIVMSG {channel} :sealed-by-the-web")
    )  # fmt: skip
    carol.wait_for(rf"PRIVMSG {channel} :sealed-by-the-web")
    carol.assert_no(r"forged-by-redis|replayed-later|other-key", within=0.3)
    ignored = [r for r in caplog.records if "ignored a gateway command" in r.getMessage()]
    assert len(ignored) >= 3  # pub/sub ignores Redis database numbers: other runs may add some
    assert "forged-by-redis" not in caplog.text and "replayed-later" not in caplog.text
    client.close()


def test_commands_naming_a_server_not_in_the_account_are_ignored(
    alice: User, bob: User, in_channel: InChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, server_id, channel, carol = in_channel
    assert gateway.gateway is not None

    def send(account: User, text: str) -> None:
        gateway.call(gateway.gateway.handle_command(
            {"op": "send", "account_id": str(account.account.pk), "server_id": server_id,
             "target": channel, "text": text}))  # fmt: skip

    send(bob, "bob-through-alice")  # bob's account, alice's server id
    # The row is deleted without the gateway being told (a lost notice): what it holds in
    # memory no longer counts.
    monkeypatch.setattr("channels_app.services.servers._tell_gateway", lambda account_id: None)
    with switch(alice):
        delete_server(account_id=alice.account_id, server=Server.objects.get(pk=server_id))
    send(alice, "after-deletion")
    carol.assert_no(r"bob-through-alice|after-deletion", within=1.0)
    assert gateway.connection(alice, server_id) is not None  # still held, yet refused


# --- passwords the gateway sends (item 5) -----------------------------------------------------


def test_nickserv_passwords_are_never_stored_published_or_logged(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """InspIRCd has echo-message and no SASL, so the gateway falls back to NickServ, and the
    server echoes `PRIVMSG NickServ :IDENTIFY alice <password>` back to us."""
    caplog.set_level(logging.DEBUG)
    fallback, typed, raw = "fallback-pw-8c1e", "typed-pw-57ad", "quoted-pw-90b2"
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,), sasl_username="alice",
                           sasl_password=fallback)  # fmt: skip
    nickserv = irc_bot(inspircd, "NickServ")
    pubsub = redis.Redis.from_url(django_settings.REDIS_URL).pubsub()
    pubsub.subscribe(events.events_channel(alice.account.pk))
    gateway = run_gateway()
    nickserv.wait_for(rf"PRIVMSG NickServ :IDENTIFY alice {fallback}", timeout=20)
    command = {"account_id": str(alice.account.pk), "server_id": server_id}
    assert gateway.gateway is not None
    gateway.call(gateway.gateway.handle_command(
        {**command, "op": "send", "target": "NickServ", "text": f"IDENTIFY {typed}"}))  # fmt: skip
    gateway.call(gateway.gateway.handle_command(
        {**command, "op": "raw", "line": f"PRIVMSG NickServ :REGISTER {raw} a@b.c"}))  # fmt: skip
    nickserv.wait_for(rf"REGISTER {raw}")

    def ours() -> list[Message]:
        return messages(alice, sender="alice_p", channel__name="NickServ")

    wait_until(lambda: len(ours()) == 3, what="our three lines to NickServ, echoed")
    assert [m.text for m in ours()] == ["IDENTIFY ********"] * 2 + ["REGISTER ********"]
    assert all(m.msgid for m in ours())  # stored from the server's echo

    secrets = (fallback, typed, raw)
    with switch(alice):
        stored = [json.dumps([m.text, m.tags]) for m in Message.objects.all()]
    assert not [s for s in stored if any(secret in s for secret in secrets)]
    web = signed_in_client(alice)
    for query in secrets:
        assert web.get(reverse("history:search"), {"q": query}).context["page"].hits == []
    found = web.get(reverse("history:search"), {"q": "IDENTIFY"})
    assert len(found.context["page"].hits) == 2
    assert not any(secret in found.content.decode() for secret in secrets)
    published = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            published.append(message["data"].decode())
    pubsub.close()
    assert any("IDENTIFY ********" in p for p in published)
    assert not [p for p in published if any(secret in p for secret in secrets)]
    assert not any(secret in caplog.text for secret in secrets)
