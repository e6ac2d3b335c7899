"""The server pages of issue 11: connecting in one step (network presets, the channels to join),
the live connection state and last error, the server buffer kept off them, and the /list page
(reading what the gateway leaves in Redis). Each new URL answers 404 to another account."""

import json
import re
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client
from django.urls import reverse

from accounts.models import User
from channels_app import events
from channels_app.models import Channel, Server
from gateway.lists import channel_list_key
from tenancy import switch

ONE_STEP = {"network": "libera", "nick": "alice_p", "channels": "#python, #Palaver #python"}


@pytest.fixture
def r() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def errors_of(response: Any) -> dict[str, list[str]]:
    form = response.context["form"]
    return {k: [str(e) for e in v] for k, v in form.errors.items()}


def test_the_add_form_starts_on_a_preset_with_tls_on(alice_client: Client) -> None:
    response = alice_client.get(reverse("channels:server_create"))
    assert response.status_code == 200
    form = response.context["form"]
    assert list(form.fields)[:2] == ["network", "name"]
    assert form["network"].value() == "libera"
    assert form["tls"].value() is True
    html = response.content.decode()
    for label in ("Libera.Chat (irc.libera.chat)", "OFTC (irc.oftc.net)", "EFnet (irc.efnet.org)"):
        assert label in html
    assert "Channels to join" in html and "js/server-form" in html


@pytest.mark.parametrize(
    ("network", "host", "label"),
    [
        ("libera", "irc.libera.chat", "Libera.Chat"),
        ("oftc", "irc.oftc.net", "OFTC"),
        ("efnet", "irc.efnet.org", "EFnet"),
    ],
)
def test_a_preset_connects_in_one_step(
    alice: User, alice_client: Client, network: str, host: str, label: str
) -> None:
    # No JS: the address fields are posted empty (or left out), TLS unticked: the preset wins.
    response = alice_client.post(
        reverse("channels:server_create"), {**ONE_STEP, "network": network, "host": ""}
    )
    assert response.status_code == 302, errors_of(response)
    with switch(alice):
        server = Server.objects.get()
        channels = list(server.channels.order_by("name").values_list("name", "kind", "autojoin"))
    assert (server.name, server.host, server.port, server.tls, server.tls_verify) == (
        label, host, 6697, True, True,
    )  # fmt: skip
    assert server.nick == "alice_p"
    # Duplicates (ignoring case) dropped; every one a channel to join.
    assert channels == [("#Palaver", "channel", True), ("#python", "channel", True)]
    assert response["Location"] == reverse("channels:server_detail", args=[server.pk])


def test_a_typed_address_wins_over_the_preset(alice: User, alice_client: Client) -> None:
    """Without JS the preset select keeps its first value: an address typed is what counts."""
    response = alice_client.post(
        reverse("channels:server_create"),
        {"network": "libera", "host": "irc.example.org", "port": "6697", "tls": "on", "nick": "al"},
    )
    assert response.status_code == 302, errors_of(response)
    with switch(alice):
        server = Server.objects.get()
    assert (server.name, server.host) == ("irc.example.org", "irc.example.org")


def test_an_error_shows_what_was_typed_not_the_preset(alice_client: Client) -> None:
    response = alice_client.post(
        reverse("channels:server_create"), {**ONE_STEP, "host": "", "channels": "oops"}
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert form["host"].value() in ("", None) and form["name"].value() in ("", None)


def test_a_custom_server(alice: User, alice_client: Client) -> None:
    response = alice_client.post(
        reverse("channels:server_create"),
        {"network": "custom", "host": "IRC.Example.org", "port": "6667", "nick": "al", "tls": ""},
    )
    assert response.status_code == 302, errors_of(response)
    with switch(alice):
        server = Server.objects.get()
    # The name defaults to the host; TLS off as asked.
    assert (server.name, server.host, server.port, server.tls) == (
        "IRC.Example.org", "irc.example.org", 6667, False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"network": "custom"}, "host", "A custom server needs its address"),
        ({"network": "custom", "host": "irc..example"}, "host", "Enter a host name"),
        ({"channels": "#ok python"}, "channels", "“python” is not a channel name"),
        ({"channels": "#ok #a:b"}, "channels", "“#a:b” is not a channel name"),
        ({"nick": ""}, "nick", "This field is required."),
        ({"nick": "9lives"}, "nick", "A nick starts with"),
        ({"network": "nowhere"}, "network", "Select a valid choice."),
    ],
)
def test_each_field_says_what_is_wrong(
    alice: User, alice_client: Client, data: dict[str, str], field: str, message: str
) -> None:
    response = alice_client.post(reverse("channels:server_create"), {**ONE_STEP, **data})
    assert response.status_code == 400
    errors = errors_of(response)
    assert any(message in e for e in errors[field]), errors
    with switch(alice):
        assert not Server.objects.exists() and not Channel.objects.exists()


def test_a_second_server_of_the_same_network_needs_another_name(
    alice: User, alice_client: Client
) -> None:
    assert alice_client.post(reverse("channels:server_create"), ONE_STEP).status_code == 302
    response = alice_client.post(reverse("channels:server_create"), ONE_STEP)
    assert response.status_code == 400
    assert "already have a server named “Libera.Chat”" in errors_of(response)["name"][0]


def test_too_many_channels(alice_client: Client, settings: Any) -> None:
    settings.LIMIT_CHANNELS_PER_SERVER = 2
    response = alice_client.post(
        reverse("channels:server_create"), {**ONE_STEP, "channels": "#a #b #c"}
    )
    assert response.status_code == 400
    assert errors_of(response)["channels"] == ["2 channels per server at most."]


def test_editing_has_no_preset_nor_channels(alice: User, alice_client: Client) -> None:
    alice_client.post(reverse("channels:server_create"), ONE_STEP)
    with switch(alice):
        server = Server.objects.get()
    form = alice_client.get(reverse("channels:server_edit", args=[server.pk])).context["form"]
    assert "network" not in form.fields and "channels" not in form.fields


def _server_with_buffer(user: User) -> tuple[Server, Channel, Channel]:
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
        buffer = Channel.objects.create(server=server, name="*server*", kind=Channel.Kind.SERVER)
    return server, channel, buffer


def test_the_server_buffer_is_never_a_channel_on_the_server_pages(
    alice: User, alice_client: Client
) -> None:
    server, channel, buffer = _server_with_buffer(alice)
    page = alice_client.get(reverse("channels:server_detail", args=[server.pk])).content.decode()
    assert reverse("channels:channel_edit", args=[channel.pk]) in page
    assert "*server*" not in page
    assert reverse("channels:channel_edit", args=[buffer.pk]) not in page
    for name in ("channels:channel_edit", "channels:channel_delete"):
        assert alice_client.get(reverse(name, args=[buffer.pk])).status_code == 404
        assert alice_client.post(reverse(name, args=[buffer.pk])).status_code == 404
    with switch(alice):
        assert Channel.objects.filter(pk=buffer.pk).exists()


def test_live_state_and_last_error(alice: User, alice_client: Client, r: redis.Redis) -> None:
    server, _, _ = _server_with_buffer(alice)
    detail = reverse("channels:server_detail", args=[server.pk])
    state_url = reverse("channels:server_state", args=[server.pk])
    assert "Not connected" in alice_client.get(detail).content.decode()
    assert state_url in alice_client.get(detail).content.decode()  # the page polls it

    def publish(state: str, error: str = "") -> None:
        r.set(
            events.server_state_key(alice.account_id, server.pk),
            json.dumps({"state": state, "error": error, "next_retry": None, "nick": "alice_"}),
        )

    publish("connected")
    fragment = alice_client.get(state_url).content.decode()
    assert "Connected as alice_" in fragment and 'hx-swap-oob="true"' in fragment
    # The poll's next URL carries a digest: unchanged, it answers 204 and nothing is swapped.
    next_url = re.search(r'hx-get="([^"]+)"', fragment)
    assert next_url is not None and "?seen=" in next_url[1]
    assert alice_client.get(next_url[1].replace("&amp;", "&")).status_code == 204
    publish("disconnected", "connection refused")
    r.set(
        events.server_error_key(alice.account_id, server.pk),
        json.dumps({"error": "connection refused", "at": "2026-12-01T03:00:00+00:00"}),
    )
    fragment = alice_client.get(state_url).content.decode()
    assert "Error: connection refused" in fragment and "state-error" in fragment
    publish("connecting")  # the state clears its error; the last error stays
    fragment = alice_client.get(state_url).content.decode()
    assert "Connecting" in fragment and "connection refused" in fragment
    listing = alice_client.get(reverse("channels:server_states")).content.decode()
    assert f'id="server-state-{server.pk}"' in listing and "Connecting" in listing
    page = alice_client.get(reverse("channels:server_list")).content.decode()
    assert "Connecting" in page and reverse("channels:server_states") in page


def _store_list(user: User, server: Server, r: redis.Redis, *, done: bool = True) -> None:
    channels = [[f"#chan{i}", i, f"topic {i} about {'python' if i % 3 == 0 else 'rust'}"]
                for i in range(250, 0, -1)]  # fmt: skip
    payload = {"done": done, "seen": 300, "truncated": True, "at": "2026-12-01T03:00:00+00:00",
               "channels": channels if done else []}  # fmt: skip
    r.set(channel_list_key(user.account_id, server.pk), json.dumps(payload))


def test_the_list_page_filters_pages_and_joins(
    alice: User, alice_client: Client, r: redis.Redis
) -> None:
    server, _, _ = _server_with_buffer(alice)
    url = reverse("channels:channel_list", args=[server.pk])
    r.delete(channel_list_key(alice.account_id, server.pk))
    assert "No list yet" in alice_client.get(url).content.decode()
    _store_list(alice, server, r, done=False)
    page = alice_client.get(url).content.decode()
    assert "Receiving the list" in page and "hx-trigger" in page
    _store_list(alice, server, r)
    response = alice_client.get(url, {"q": "PYTHON"})
    listing = response.context["listing"]
    assert listing.matching == 83 and len(listing.channels) == 83
    assert listing.channels[0].name == "#chan249"  # biggest first
    assert all("python" in c.topic for c in listing.channels)
    everything = alice_client.get(url).context["listing"]
    assert everything.matching == 250 and len(everything.channels) == 100
    second = alice_client.get(url, {"offset": "100"}).context["listing"]
    assert second.channels[0].name == "#chan150"
    assert "the server listed 300" in alice_client.get(url).content.decode()
    assert alice_client.get(url, {"q": "#chan7"}).context["listing"].matching == 11

    response = alice_client.post(
        reverse("channels:channel_list_join", args=[server.pk]), {"channel": "#chan7"}
    )
    with switch(alice):
        joined = Channel.objects.get(name="#chan7")
    assert joined.autojoin and joined.kind == Channel.Kind.CHANNEL
    assert response["Location"] == reverse("chat:channel", args=[joined.pk])
    # Joining it again opens it; a bad name is refused with a message, nothing created.
    again = alice_client.post(
        reverse("channels:channel_list_join", args=[server.pk]), {"channel": "#CHAN7"}
    )
    assert again["Location"] == reverse("chat:channel", args=[joined.pk])
    bad = alice_client.post(
        reverse("channels:channel_list_join", args=[server.pk]), {"channel": "no spaces"},
        follow=True,
    )  # fmt: skip
    assert "Could not join" in bad.content.decode()
    with switch(alice):
        assert Channel.objects.filter(kind=Channel.Kind.CHANNEL).count() == 2


def test_asking_for_the_list_publishes_list_and_shows_receiving(
    alice: User, alice_client: Client, r: redis.Redis
) -> None:
    server, _, _ = _server_with_buffer(alice)
    pubsub = r.pubsub()
    pubsub.subscribe(events.GATEWAY_COMMANDS)
    response = alice_client.post(reverse("channels:channel_list_refresh", args=[server.pk]))
    assert response.status_code == 302
    sealed = None
    for _ in range(50):
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            sealed = message["data"]
            break
    pubsub.close()
    assert sealed is not None
    command = events.open_command(sealed)
    assert command is not None
    assert (command["op"], command["line"], command["server_id"]) == ("raw", "LIST", server.pk)
    page = alice_client.get(reverse("channels:channel_list", args=[server.pk])).content.decode()
    assert "Receiving the list" in page
    # From htmx (the page opened by /list in the chat): the results part comes back.
    fragment = alice_client.post(
        reverse("channels:channel_list_refresh", args=[server.pk]), HTTP_HX_REQUEST="true"
    )
    assert fragment.status_code == 200
    assert 'id="list-results"' in fragment.content.decode()
    assert "<html" not in fragment.content.decode()


def test_list_typed_in_the_chat_opens_the_page_that_asks_for_it(
    alice: User, alice_client: Client, r: redis.Redis
) -> None:
    server, channel, _ = _server_with_buffer(alice)
    r.delete(channel_list_key(alice.account_id, server.pk))
    response = alice_client.post(reverse("chat:send", args=[channel.pk]), {"text": "/list py"})
    assert response.status_code == 204
    url = response["HX-Redirect"]
    assert url == reverse("channels:channel_list", args=[server.pk]) + "?fetch=1&q=py"
    page = alice_client.get(url).content.decode()
    assert "hx-post" in page and reverse("channels:channel_list_refresh", args=[server.pk]) in page
    assert "Asking Libera for its channels" in page


def test_every_new_url_is_404_for_another_account(
    alice: User, alice_client: Client, bob: User, bob_client: Client, r: redis.Redis
) -> None:
    server, _, _ = _server_with_buffer(alice)
    _store_list(alice, server, r)
    r.set(
        events.server_state_key(alice.account_id, server.pk),
        json.dumps({"state": "connected", "error": "", "next_retry": None, "nick": "alice_p"}),
    )
    gets = [
        reverse("channels:server_state", args=[server.pk]),
        reverse("channels:channel_list", args=[server.pk]),
    ]
    posts = [
        reverse("channels:channel_list_refresh", args=[server.pk]),
        reverse("channels:channel_list_join", args=[server.pk]),
    ]
    for url in gets:
        assert alice_client.get(url).status_code == 200
        assert bob_client.get(url).status_code == 404, url
    for url in posts:
        assert bob_client.post(url, {"channel": "#chan7"}).status_code == 404, url
    # The states fragment lists Bob's servers only (none): nothing of Alice's.
    states = bob_client.get(reverse("channels:server_states")).content.decode()
    assert f"server-state-{server.pk}" not in states and "alice_p" not in states
    with switch(bob):
        assert not Channel.objects.exists()
