"""Link previews: read from a page on loopback (allowed by the test settings) through the address
policy, refused for a private address by default, kept per account, shown only to that account,
their images served from Palaver's origin (never a redirect), nothing fetched when the account
switched previews off, and the fetches per minute bounded."""

import dataclasses
import io
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from accounts.models import Account, User
from channels_app import events
from channels_app.models import Channel, Message, Server
from config.celery import app
from gateway.manager import Gateway
from gateway.storage import Store
from media import listeners, previews
from media.models import LinkPreview
from media.services.previews import LineLinks, queue_previews, refresh_preview
from tenancy import switch
from tests.previews_support import PAGE, Site, site

__all__ = ["site"]  # the fixture, imported for pytest


@pytest.fixture
def eager_celery() -> Iterator[None]:
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False


def _channel(user: User) -> Channel:
    server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
    return Channel.objects.create(server=server, name="#palaver")


def _say(channel: Channel, text: str) -> int:
    return Message.objects.create(
        channel=channel, sender="carol", text=text, server_time=timezone.now()
    ).pk


def _set_previews(user: User, on: bool) -> None:
    account = Account.objects.get(pk=user.account_id)
    account.settings = {**(account.settings or {}), "link_previews": on}
    account.save(update_fields=["settings"])


# --- reading a page ---------------------------------------------------------------------------


def test_open_graph_then_twitter_then_plain_tags() -> None:
    meta = previews.parse_page(PAGE, "utf-8", "https://docs.example.org/guide/")
    assert meta.title == "The Palaver handbook"
    assert meta.description == "How to talk on IRC from a browser, and stay."
    assert meta.site_name == "Palaver docs"
    assert meta.image_url == "https://docs.example.org/cover.png"  # relative, resolved
    plain = previews.parse_page(
        b"<title> A  page </title><meta name='description' content='d'>"
        b"<meta name='twitter:image' content='javascript:alert(1)'>",
        None,
        "https://example.org/x",
    )
    assert (plain.title, plain.description, plain.site_name) == ("A page", "d", "example.org")
    assert plain.image_url == ""  # only http(s) images


def test_links_in_a_line() -> None:
    text = "see \x02https://a.example/x\x02, www.b.example and https://a.example/x again (ftp://c)"
    assert previews.links_in(text) == ["https://a.example/x", "https://www.b.example"]
    many = " ".join(f"https://e{i}.example/" for i in range(10))
    assert len(previews.links_in(many)) == previews.MAX_LINKS_PER_LINE


def test_an_image_is_re_encoded_and_bounded() -> None:
    source = io.BytesIO()
    Image.new("RGBA", (2000, 1000), (0, 0, 0, 0)).save(source, format="PNG")
    thumb = previews.thumbnail(source.getvalue())
    assert thumb.content_type == "image/png"  # transparency kept
    assert (thumb.width, thumb.height) == (480, 240)
    assert Image.open(io.BytesIO(thumb.data)).size == (480, 240)
    with pytest.raises(previews.PreviewError):
        previews.thumbnail(b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>")


# --- fetching through the address policy --------------------------------------------------------


def test_a_preview_is_fetched_from_a_loopback_site(alice: User, site: str) -> None:
    with switch(alice):
        preview = refresh_preview(url=f"{site}/page")
        assert preview.status == LinkPreview.Status.OK
        assert (preview.title, preview.site_name) == ("The Palaver handbook", "Palaver docs")
        assert preview.description.startswith("How to talk on IRC")
        assert preview.image_type == "image/jpeg"
        assert (preview.image_width, preview.image_height) == (480, 240)
        assert Image.open(io.BytesIO(bytes(preview.image or b""))).format == "JPEG"
        assert preview.expires_at > timezone.now()
    assert Site.paths == ["/page", "/cover.png"]


def test_a_link_to_an_image_is_its_own_preview_and_a_fake_image_is_none(
    alice: User, site: str
) -> None:
    with switch(alice):
        photo = refresh_preview(url=f"{site}/photo.png")
        assert photo.status == LinkPreview.Status.OK
        assert (photo.title, photo.image_width) == ("photo.png", 100)
        fake = refresh_preview(url=f"{site}/fake.png")
        assert fake.status == LinkPreview.Status.FAILED
        assert not fake.image
        bare = refresh_preview(url=f"{site}/bare")
        assert bare.status == LinkPreview.Status.FAILED
        # A failure is kept, briefly.
        assert bare.expires_at < timezone.now() + timedelta(minutes=11)


@override_settings(OUTBOUND_ALLOWED_NETWORKS=[])
def test_a_private_address_is_refused_by_default(alice: User, site: str) -> None:
    with switch(alice):
        loopback = refresh_preview(url=f"{site}/page")
        private = refresh_preview(url="http://10.1.2.3/")
    assert loopback.status == private.status == LinkPreview.Status.FAILED
    assert "refuse" in loopback.error.lower() or "not allowed" in loopback.error.lower()
    assert Site.paths == []  # nothing reached the site


def test_a_redirect_to_a_private_address_is_refused(alice: User, site: str) -> None:
    with switch(alice):
        preview = refresh_preview(url=f"{site}/redirect-to-private")
    assert preview.status == LinkPreview.Status.FAILED
    assert Site.paths == ["/redirect-to-private"]


# --- from a stored line to the browser -------------------------------------------------------


def _listen(user: User) -> Any:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    channel = events.events_channel(user.account_id)
    pubsub.subscribe(channel)
    deadline = time.monotonic() + 5
    while not client.pubsub_numsub(channel)[0][1] and time.monotonic() < deadline:
        pubsub.get_message(timeout=0.05)  # lets the subscription through
    # Held with the subscription: a collected client closes its pool, the subscription's too.
    pubsub.owner = client
    return pubsub


def _received(pubsub: Any, seconds: float = 1.0) -> list[dict[str, Any]]:
    found = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            found.append(json.loads(message["data"]))
    return found


def test_a_stored_line_gets_its_preview_and_the_chat_is_told(
    alice: User,
    site: str,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    pubsub = _listen(alice)
    with switch(alice):
        channel = _channel(alice)
        first = _say(channel, f"look: {site}/page")
        with django_capture_on_commit_callbacks(execute=True):
            listeners.preview_links(alice.account_id, [first])
        assert LinkPreview.objects.get().title == "The Palaver handbook"
        # Posted again: announced from the cache, not fetched again.
        second = _say(channel, f"again {site}/page")
        with django_capture_on_commit_callbacks(execute=True):
            listeners.preview_links(alice.account_id, [second])
    assert Site.paths == ["/page", "/cover.png"]
    told = [e for e in _received(pubsub) if e["type"] == "preview"]
    assert told == [
        {"type": "preview", "message_id": first, "channel_id": channel.pk},
        {"type": "preview", "message_id": second, "channel_id": channel.pk},
    ]


def test_switched_off_nothing_is_fetched(alice: User, site: str, eager_celery: None) -> None:
    _set_previews(alice, False)
    with switch(alice):
        channel = _channel(alice)
        line = _say(channel, f"{site}/page")
        listeners.preview_links(alice.account_id, [line])
        assert not LinkPreview.objects.exists()
    assert Site.paths == []
    # Nor does the gateway send such a batch to the hook.
    gateway = Gateway(store=Store(publish=False))
    gateway._set_account(Account.objects.get(pk=alice.account_id))
    event = events.MessageEvent(
        id=line, channel_id=channel.pk, server_id=1, kind="message", sender="carol",
        text=f"{site}/page", server_time=timezone.now(), msgid="", highlight=False,
    )  # fmt: skip
    assert not gateway.hook_wanted(alice.account_id, [event])
    _set_previews(alice, True)
    gateway._set_account(Account.objects.get(pk=alice.account_id))
    assert gateway.hook_wanted(alice.account_id, [event])
    no_link = dataclasses.replace(event, text="no link here")
    assert not gateway.hook_wanted(alice.account_id, [no_link])


@override_settings(LIMIT_LINK_PREVIEWS_PER_MINUTE=2)
def test_fetches_per_minute_are_bounded_per_account(alice: User, bob: User) -> None:
    queued = []
    for user in (alice, bob):
        with switch(user):
            lines = [LineLinks(i, 1, [f"https://e{i}.example/"]) for i in range(1, 4)]
            queued.append(queue_previews_without_worker(user, lines))
    assert queued == [["https://e1.example/", "https://e2.example/"]] * 2  # bob has his own
    with switch(alice):
        assert (
            queue_previews_without_worker(alice, [LineLinks(9, 1, ["https://e9.example/"])]) == []
        )


def queue_previews_without_worker(user: User, lines: list[LineLinks]) -> list[str]:
    from media import tasks

    sent: list[Any] = []
    original = tasks.fetch_previews.delay
    tasks.fetch_previews.delay = lambda *args: sent.append(args)
    try:
        return queue_previews(account_id=user.account_id, lines=lines)
    finally:
        tasks.fetch_previews.delay = original


# --- the chat's views ------------------------------------------------------------------------


def _kept(url: str, **fields: Any) -> LinkPreview:
    png = io.BytesIO()
    Image.new("RGB", (10, 10)).save(png, format="PNG")
    defaults: dict[str, Any] = {
        "status": LinkPreview.Status.OK,
        "title": "Kept <b>title</b>",
        "description": "",
        "image": png.getvalue(),
        "image_type": "image/png",
        "image_width": 10,
        "image_height": 10,
        "fetched_at": timezone.now(),
        "expires_at": timezone.now() + timedelta(hours=1),
    }
    return LinkPreview.objects.create(url=url, **{**defaults, **fields})


def test_the_chat_reads_previews_of_its_lines_only(
    alice: User, bob: User, alice_client: Client, bob_client: Client
) -> None:
    with switch(alice):
        channel = _channel(alice)
        line = _say(channel, "https://example.org/a and https://example.org/b")
        quiet = _say(channel, "no links")
        preview = _kept("https://example.org/a")
        _kept("https://example.org/b", status=LinkPreview.Status.FAILED, title="failed one")
    url = reverse("media:line_previews") + f"?ids={line},{quiet},x,"
    html = alice_client.get(url).content.decode()
    assert f'data-for="{line}"' in html and f'data-for="{quiet}"' not in html
    assert "Kept &lt;b&gt;title&lt;/b&gt;" in html  # escaped
    assert "failed one" not in html
    assert reverse("media:preview_image", args=[preview.pk]) in html
    # Bob asks for alice's line ids: his schema has no such lines, or not these.
    assert "Kept" not in bob_client.get(url).content.decode()
    _set_previews(alice, False)
    assert "Kept" not in alice_client.get(url).content.decode()


def test_the_image_is_served_from_palaver_never_redirected(
    alice: User, alice_client: Client, bob_client: Client, client: Client
) -> None:
    with switch(alice):
        preview = _kept("https://example.org/a")
        bare = _kept("https://example.org/b", image=None, image_type="")
    url = reverse("media:preview_image", args=[preview.pk])
    response = alice_client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert "Location" not in response
    assert Image.open(io.BytesIO(response.content)).size == (10, 10)
    assert alice_client.get(reverse("media:preview_image", args=[bare.pk])).status_code == 404
    assert bob_client.get(url).status_code == 404  # another account's preview
    assert client.get(url).status_code == 302  # signed out: to sign in, not to the image
    assert "example.org" not in client.get(url)["Location"]


def test_previews_long_expired_are_forgotten_by_the_next_fetch(alice: User, site: str) -> None:
    from media.services.previews import fetch_and_announce

    with switch(alice):
        old = _kept("https://old.example/", expires_at=timezone.now() - timedelta(days=2))
        recent = _kept("https://recent.example/", expires_at=timezone.now() - timedelta(hours=1))
        fetch_and_announce(account_id=alice.account_id, urls=[f"{site}/page"], lines=[])
        kept = set(LinkPreview.objects.values_list("url", flat=True))
    assert kept == {recent.url, f"{site}/page"}
    assert old.url not in kept


def test_previews_of_a_page_of_lines_cost_the_same_few_queries(
    alice: User, alice_client: Client, django_assert_max_num_queries: Any
) -> None:
    with switch(alice):
        channel = _channel(alice)
        ids = [
            _say(channel, f"https://example.org/{n} and https://example.org/x") for n in range(100)
        ]
        for n in range(100):
            _kept(f"https://example.org/{n}")
    url = reverse("media:line_previews") + "?ids=" + ",".join(map(str, ids))
    alice_client.get(url)  # the session's first use
    # The session and user, the account's switch, the lines, the previews.
    with django_assert_max_num_queries(6):
        started = time.perf_counter()
        html = alice_client.get(url).content.decode()
        # For a reader of `pytest -s` (docs/benchmarks.md, "Link previews").
        print(f"previews of 100 lines: {(time.perf_counter() - started) * 1000:.1f} ms")
    assert html.count('class="link-previews"') == 100
