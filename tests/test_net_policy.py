"""The one address policy (core/net_policy.py) and the server form that applies it.

The test settings allow 127.0.0.0/8 and ::1 (the IRC servers of the tests listen there); these
tests put the default policy back with the `default_policy` fixture."""

import asyncio
import socket
import threading
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from channels_app.models import Server
from core import net_policy
from tenancy import switch

SERVER = {"name": "Libera", "host": "irc.libera.chat", "port": 6697, "tls": "on",
          "tls_verify": "on", "nick": "alice_p", "alt_nicks": ""}  # fmt: skip

# Each with the reason the refusal gives.
REFUSED = [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("127.1", "127.1 resolves to 127.0.0.1, a loopback address"),
    ("2130706433", "resolves to 127.0.0.1, a loopback address"),
    ("localhost", "localhost resolves to 127.0.0.1, a loopback address"),
    ("10.1.2.3", "10.1.2.3 is a private address"),
    ("192.168.0.10", "a private address"),
    ("172.16.5.4", "a private address"),
    ("169.254.169.254", "169.254.169.254 is a link-local address"),
    ("100.64.0.1", "100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("0.0.0.0", "0.0.0.0 is an unspecified address"),  # noqa: S104 (a refused address)
    ("255.255.255.255", "a broadcast address"),
    ("224.0.0.1", "224.0.0.1 is a multicast address"),
    ("240.0.0.1", "a private address"),  # reserved for future use; Python files it as private
    ("::1", "::1 is a loopback address"),
    ("::", "an unspecified address"),
    ("fe80::1", "fe80::1 is a link-local address"),
    ("fc00::5", "a private address"),
    ("fec0::1", "a site-local address"),
    ("ff02::1", "a multicast address"),
    ("ff0e::1", "a multicast address"),  # global scope multicast: still not a server
    ("::ffff:127.0.0.1", "a form of 127.0.0.1, a loopback address"),
    ("::ffff:10.0.0.1", "a form of 10.0.0.1, a private address"),
    ("::127.0.0.1", "a reserved address"),  # IPv4-compatible (deprecated)
    ("2002:7f00:1::1", "a form of 127.0.0.1, a loopback address"),  # 6to4
    ("64:ff9b::a9fe:a9fe", "a form of 169.254.169.254, a link-local address"),  # NAT64
    ("2001:db8::1", "a private address"),  # documentation
]
ALLOWED = ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.fixture
def default_policy(settings: Any) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    settings.OUTBOUND_DENIED_NETWORKS = []


@pytest.mark.parametrize(("host", "reason"), REFUSED)
def test_default_policy_refuses_internal_addresses(
    default_policy: None, host: str, reason: str
) -> None:
    with pytest.raises(net_policy.AddressRefused) as refused:
        net_policy.resolve(host, 6667)
    assert reason in str(refused.value)
    assert str(refused.value).startswith("refused: ")
    with pytest.raises(net_policy.AddressRefused):
        asyncio.run(net_policy.aresolve(host, 6667))


@pytest.mark.parametrize("host", ALLOWED)
def test_default_policy_allows_public_addresses(default_policy: None, host: str) -> None:
    destination = net_policy.resolve(host, 6697)
    assert [str(a) for a in destination.addresses] == [host]
    assert (destination.host, destination.port) == (host, 6697)


def test_operator_networks_denied_beats_allowed(settings: Any) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    settings.OUTBOUND_DENIED_NETWORKS = []
    assert net_policy.resolve("10.1.2.3", 6667).addresses
    assert net_policy.resolve("::ffff:10.1.2.3", 6667).addresses  # the same address
    settings.OUTBOUND_DENIED_NETWORKS = ["10.1.0.0/16", "8.8.8.0/24"]
    with pytest.raises(net_policy.AddressRefused, match="does not connect to"):
        net_policy.resolve("10.1.2.3", 6667)
    assert net_policy.resolve("10.2.0.1", 6667).addresses
    with pytest.raises(net_policy.AddressRefused, match="does not connect to"):
        net_policy.resolve("8.8.8.8", 6667)  # public, and denied by the operator


def test_unresolvable_name_is_a_resolution_failure(default_policy: None) -> None:
    with pytest.raises(net_policy.ResolutionFailed, match="does not resolve"):
        net_policy.resolve("no-such-host.invalid", 6667)


def test_bad_network_setting_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from config.env import networks, setting

    monkeypatch.setenv("OUTBOUND_DENIED_NETWORKS", "10.0.0.0/8, not-a-network")
    with pytest.raises(ImproperlyConfigured, match="OUTBOUND_DENIED_NETWORKS has a bad value"):
        setting("OUTBOUND_DENIED_NETWORKS", cast=networks("X"), default=[])
    monkeypatch.setenv("OUTBOUND_DENIED_NETWORKS", "10.0.0.0/8, fd00::/8")
    assert setting("OUTBOUND_DENIED_NETWORKS", cast=networks("X"), default=[]) == [
        "10.0.0.0/8",
        "fd00::/8",
    ]


def test_connections_go_to_the_checked_address_not_a_new_lookup() -> None:
    """create_connection / open_connection connect to what the policy checked (loopback is
    allowed by the test settings)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[str] = []

    def accept() -> None:
        for _ in range(2):
            conn, peer = listener.accept()
            accepted.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    net_policy.create_connection("localhost", port).close()

    async def open_async() -> None:
        _reader, writer = await net_policy.open_connection("localhost", port)
        writer.close()

    asyncio.run(open_async())
    thread.join(5)
    listener.close()
    assert accepted == ["127.0.0.1", "127.0.0.1"]


def test_open_connection_refuses_before_any_packet(default_policy: None) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    with pytest.raises(net_policy.AddressRefused):
        asyncio.run(net_policy.open_connection("127.0.0.1", port))
    with pytest.raises(net_policy.AddressRefused):
        net_policy.create_connection("localhost", port)
    with pytest.raises(TimeoutError):
        listener.accept()  # nobody knocked
    listener.close()


# --- the server form ---------------------------------------------------------------------------


def errors_of(response: Any) -> dict[str, list[str]]:
    return {name: list(errors) for name, errors in response.context["form"].errors.items()}


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        (h, r)
        for h, r in REFUSED
        if h
        in {"127.0.0.1", "localhost", "10.1.2.3", "169.254.169.254", "100.64.0.1", "::1",
            "fe80::1", "::ffff:127.0.0.1", "224.0.0.1", "ff02::1", "127.1"}
    ],
)  # fmt: skip
def test_server_form_refuses_internal_hosts(
    default_policy: None, alice: User, alice_client: Client, host: str, reason: str
) -> None:
    response = alice_client.post(reverse("channels:server_create"), {**SERVER, "host": host})
    assert response.status_code == 400
    assert any(
        "Palaver does not connect to this host" in e and reason in e
        for e in errors_of(response)["host"]
    ), errors_of(response)
    with switch(alice):
        assert not Server.objects.exists()


def test_server_form_refuses_an_edit_to_an_internal_host(
    default_policy: None, alice: User, alice_client: Client
) -> None:
    response = alice_client.post(reverse("channels:server_create"), SERVER)
    assert response.status_code == 302
    with switch(alice):
        server = Server.objects.get()
    response = alice_client.post(
        reverse("channels:server_edit", args=[server.pk]), {**SERVER, "host": "169.254.169.254"}
    )
    assert response.status_code == 400
    assert "169.254.169.254 is a link-local address" in str(errors_of(response)["host"])
    with switch(alice):
        assert Server.objects.get().host == "irc.libera.chat"


def test_server_form_accepts_a_name_that_does_not_resolve_now(
    default_policy: None, alice: User, alice_client: Client
) -> None:
    """irc.libera.chat does not resolve on this machine: accepted (argued in forms.py)."""
    response = alice_client.post(
        reverse("channels:server_create"), {**SERVER, "host": "no-such-host.invalid"}
    )
    assert response.status_code == 302
