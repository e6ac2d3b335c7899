"""A link said on IRC gets its preview in the open chat, live: a real InspIRCd, the real gateway
(its hook filter lets the line through), a real Celery worker (the hook's task, then the fetch
through the address policy from a site on loopback), the web under uvicorn, and Chromium."""

import time
from collections.abc import Callable

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from accounts.models import User
from media.models import LinkPreview
from tenancy import switch
from tests.gateway_support import GatewayThread
from tests.ircd import BotFactory, InspIRCd
from tests.previews_support import Site, site
from tests.test_agents_e2e import worker
from tests.test_browser import screenshot
from tests.test_chat_e2e import AsgiServer, alice, alice_in_a_channel, asgi_server, chromium

__all__ = ["alice", "alice_in_a_channel", "asgi_server", "chromium", "site", "worker"]


@pytest.mark.browser
def test_a_links_preview_arrives_live_under_its_line(
    alice: User,
    alice_in_a_channel: tuple[str, int, Page],
    asgi_server: AsgiServer,
    inspircd: InspIRCd,
    irc_bot: BotFactory,
    run_gateway: Callable[..., GatewayThread],
    worker: None,
    site: str,
) -> None:
    channel, channel_id, page = alice_in_a_channel
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    page.goto(asgi_server.url + reverse("chat:channel", args=[channel_id]))
    expect(page.locator("#chat-lines .line-join", has_text="carol")).to_have_count(1)

    said_at = time.monotonic()
    carol.say(channel, f"the handbook: {site}/page")
    line = page.locator("#chat-lines .line-message", has_text="the handbook")
    expect(line).to_have_count(1)
    preview = line.locator(".link-preview")
    expect(preview).to_have_count(1, timeout=20_000)  # no reload: the `preview` event brought it
    # For a reader of `pytest -s`: IRC line to preview shown (hook task, fetch, event, fragment).
    print(f"preview shown {time.monotonic() - said_at:.2f} s after the line was said")
    expect(preview.locator(".link-preview-title")).to_have_text("The Palaver handbook")
    expect(preview.locator(".link-preview-site")).to_have_text("Palaver docs")
    expect(preview).to_have_attribute("href", f"{site}/page")
    image = preview.locator("img")
    with switch(alice):
        kept = LinkPreview.objects.get(url=f"{site}/page")
    # The image comes from Palaver, and the browser never asked the site for anything.
    expect(image).to_have_attribute("src", reverse("media:preview_image", args=[kept.pk]))
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 480", arg=image.element_handle()
    )
    assert Site.paths == ["/page", "/cover.png"]  # the worker's two fetches, nothing else
    screenshot(page, "link-preview.png")

    # Opened again, the preview is there with the line.
    page.reload()
    again = page.locator("#chat-lines .line-message", has_text="the handbook")
    expect(again.locator(".link-preview-title")).to_have_text("The Palaver handbook")
    assert Site.paths == ["/page", "/cover.png"]
