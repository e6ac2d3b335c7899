"""The chat's script in a real browser (Chromium) against uvicorn: reading a channel in one tab
clears its unread count in the account's other tabs, and a stream refused for being one too
many says so on the page."""

import contextlib
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from django.conf import settings
from django.urls import reverse
from playwright.sync_api import Browser, BrowserContext, expect

from accounts.models import User
from channels_app.models import Channel, Message, Server
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.test_chat_e2e import DESKTOP, AsgiServer, SseClient, asgi_server, chromium

__all__ = ["asgi_server", "chromium"]  # fixtures, used here by name

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _signed_in(chromium: Browser, base: str) -> tuple[BrowserContext, User]:
    erin = cast(User, UserFactory(email="erin@example.org"))
    context = chromium.new_context(viewport=DESKTOP, timezone_id="UTC")
    context.set_default_timeout(10_000)
    cookie = signed_in_client(erin).cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": base}])
    return context, erin


@pytest.mark.browser
def test_reading_in_one_tab_clears_the_count_in_another(
    clean_schemas: None, asgi_server: AsgiServer, chromium: Browser
) -> None:
    base = asgi_server.url
    context, erin = _signed_in(chromium, base)
    with switch(erin):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="erin")
        busy = Channel.objects.create(server=server, name="#busy")
        quiet = Channel.objects.create(server=server, name="#quiet")
        for n in range(3):
            Message.objects.create(
                channel=busy, sender="carol", text=f"line {n}", server_time=T0 + timedelta(n)
            )
    other_tab = context.new_page()
    other_tab.goto(base + reverse("chat:channel", args=[quiet.pk]))
    unread = other_tab.locator(f'a[data-channel-id="{busy.pk}"] [data-unread]')
    expect(unread).to_have_text("3")
    expect(unread).to_be_visible()
    expect(other_tab.locator(".chat-live-status")).to_have_count(0)

    # Opening the busy channel in a tab: the page marks what it shows read (a POST), and the
    # other tab is told over its stream.
    reading_tab = context.new_page()
    reading_tab.goto(base + reverse("chat:channel", args=[busy.pk]))
    expect(reading_tab.locator("#chat-lines .line", has_text="line 2")).to_have_count(1)
    expect(unread).to_be_hidden()
    with switch(erin):
        busy.refresh_from_db()
        assert busy.last_read_message_id == Message.objects.filter(channel=busy).latest("id").pk
    context.close()


@pytest.mark.browser
def test_a_stream_over_the_limit_says_why_on_the_page(
    clean_schemas: None, asgi_server: AsgiServer, chromium: Browser
) -> None:
    base = asgi_server.url
    context, erin = _signed_in(chromium, base)
    with switch(erin):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="erin")
        channel = Channel.objects.create(server=server, name="#palaver")
    with contextlib.ExitStack() as streams:
        # Every slot taken (the server runs with the default limit).
        for _ in range(settings.LIMIT_SSE_STREAMS_PER_USER):
            streams.callback(SseClient(asgi_server, erin).close)
        page = context.new_page()
        page.goto(base + reverse("chat:channel", args=[channel.pk]))
        expect(page.locator(".chat-live-status")).to_contain_text(
            "Too many live streams are open for your user"
        )
    context.close()


@pytest.mark.browser
def test_lines_carrying_a_password_stay_out_of_the_saved_input_history(
    clean_schemas: None, asgi_server: AsgiServer, chromium: Browser
) -> None:
    """The input history is kept in localStorage, in clear: a line that carries a password must
    never be put there (Up arrow still brings back the ordinary lines)."""
    base = asgi_server.url
    context, erin = _signed_in(chromium, base)
    with switch(erin):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="erin")
        channel = Channel.objects.create(server=server, name="#palaver")
    page = context.new_page()
    page.goto(base + reverse("chat:channel", args=[channel.pk]))
    typed = [
        "hello there",
        "/msg NickServ IDENTIFY erin s3cret-one",
        "/quote PASS s3cret-two",
        "/join #keyed s3cret-three",
        "/me waves",
    ]
    box = page.locator("#chat-text")
    for line in typed:
        box.fill(line)
        box.press("Enter")
        expect(box).to_have_value("")
    saved = page.evaluate("localStorage.getItem('palaver.inputHistory')")
    assert saved is not None
    assert "hello there" in saved and "/me waves" in saved
    assert "s3cret" not in saved
    context.close()


@pytest.mark.browser
def test_the_top_bar_count_stays_live_on_the_chat_without_htmx(
    clean_schemas: None, asgi_server: AsgiServer, chromium: Browser
) -> None:
    """The chat page leaves htmx out (its own script keeps it live): the top bar's
    notification count is loaded after the page and follows changes all the same."""
    from channels_app.models import Notification

    base = asgi_server.url
    context, erin = _signed_in(chromium, base)
    with switch(erin):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="erin")
        channel = Channel.objects.create(server=server, name="#palaver")
        # Elsewhere: opening #palaver marks what it shows read, its highlights with it.
        elsewhere = Channel.objects.create(server=server, name="#elsewhere")
        lines = [
            Message.objects.create(
                channel=elsewhere, sender="carol", text=f"erin: {n}", server_time=T0 + timedelta(n)
            )
            for n in range(3)
        ]
        for line in lines[:2]:
            Notification.objects.create(message=line, kind=Notification.Kind.HIGHLIGHT)
    page = context.new_page()
    page.goto(base + reverse("chat:channel", args=[channel.pk]))
    assert page.evaluate("typeof window.htmx") == "undefined"
    badge = page.locator("#site-header [data-notification-badge] .badge")
    expect(badge).to_have_text("2")
    with switch(erin):
        Notification.objects.create(message=lines[2], kind=Notification.Kind.HIGHLIGHT)
    page.evaluate("document.body.dispatchEvent(new CustomEvent('notifications-changed'))")
    expect(badge).to_have_text("3")
    context.close()
