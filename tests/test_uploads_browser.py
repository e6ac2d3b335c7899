"""Files into the chat in Chromium: dropped, pasted and attached, each stored and its link said
in a real InspIRCd channel, where someone without Palaver follows it; a file over the limit is
refused with the reason shown in the input."""

import contextlib
import http.client
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from accounts.models import User
from channels_app.models import Channel
from media.models import Upload
from tenancy import switch
from tests.conftest import signed_in_client
from tests.gateway_support import GatewayThread, wait_until
from tests.ircd import BotFactory, InspIRCd, unique_channel
from tests.previews_support import png
from tests.test_browser import screenshot
from tests.test_chat_e2e import (
    DESKTOP,
    PHONE,
    AsgiServer,
    add_server,
    alice,
    chromium,
    on_irc,
    serving,
    uvicorn_env,
)

__all__ = ["alice", "chromium"]

LIMIT = 4000
# The three files the test sends take ~130 bytes: a fourth of 3,990 passes the account's total.
TOTAL = 4100


@pytest.fixture
def web(clean_schemas: None, tmp_path: Path) -> Iterator[AsgiServer]:
    """The web under uvicorn with its uploads in a directory of the test's own and a small
    LIMIT_UPLOAD_BYTES."""
    redis_url = settings.CACHES["default"]["LOCATION"]
    env = uvicorn_env(redis_url) | {
        "UPLOADS_DIR": str(tmp_path / "uploads"),
        "LIMIT_UPLOAD_BYTES": str(LIMIT),
        "LIMIT_UPLOADS_TOTAL_BYTES": str(TOTAL),
    }
    with override_settings(REDIS_URL=redis_url), serving(env, tmp_path) as server:
        yield server


def _get(server: AsgiServer, path: str) -> tuple[int, Message, bytes]:
    parts = urlsplit(server.url)
    assert parts.hostname and parts.port
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    with contextlib.closing(connection):
        connection.request("GET", path)  # no cookie: a person from the IRC channel
        response = connection.getresponse()
        # Header names are case-insensitive (uvicorn with httptools sends them lower-cased).
        return response.status, response.headers, response.read()


DROP = """([name, text, type]) => {
  const data = new DataTransfer();
  data.items.add(new File([text], name, { type }));
  const zone = document.getElementById("chat-text");
  const options = { bubbles: true, cancelable: true, dataTransfer: data };
  zone.dispatchEvent(new DragEvent("dragenter", options));
  zone.dispatchEvent(new DragEvent("dragover", options));
  zone.dispatchEvent(new DragEvent("drop", options));
}"""

PASTE = """([name, text, type]) => {
  const data = new DataTransfer();
  data.items.add(new File([text], name, { type }));
  document.getElementById("chat-text").dispatchEvent(
    new ClipboardEvent("paste", { bubbles: true, cancelable: true, clipboardData: data }));
}"""


@pytest.mark.browser
def test_drop_paste_and_attach_send_links_to_the_irc_channel(
    alice: User,
    web: AsgiServer,
    chromium: Browser,
    inspircd: InspIRCd,
    irc_bot: BotFactory,
    run_gateway: Callable[..., GatewayThread],
    tmp_path: Path,
) -> None:
    channel = unique_channel()
    add_server(alice, inspircd, nick="alice_p", channel=channel)
    run_gateway()
    with switch(alice):
        channel_id = Channel.objects.get(name=channel).pk
    wait_until(lambda: on_irc(alice, channel_id, "alice_p"), what="alice_p joined")
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)

    context = chromium.new_context(viewport=DESKTOP, timezone_id="UTC")
    context.set_default_timeout(10_000)
    cookie = settings.SESSION_COOKIE_NAME
    session = signed_in_client(alice).cookies[cookie].value
    context.add_cookies([{"name": cookie, "value": session, "url": web.url}])
    page: Page = context.new_page()
    try:
        page.goto(web.url + reverse("chat:channel", args=[channel_id]))
        expect(page.locator("#chat-attach")).to_be_visible()

        # Dropped: its link reaches the IRC channel, where carol (no Palaver) follows it.
        page.evaluate(DROP, ["report.html", "<script>alert(1)</script>", "text/html"])
        said = carol.wait_for(rf"PRIVMSG {channel} :\S+/u/\S+/report\.html", timeout=15)
        url = said.params[-1].strip()
        status, headers, body = _get(web, urlsplit(url).path)
        assert status == 200 and body == b"<script>alert(1)</script>"
        assert headers["Content-Disposition"].startswith("attachment")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Security-Policy"].startswith("sandbox")
        # And the line is in the chat, as a link.
        expect(page.locator("#chat-lines .line-self a", has_text="report.html")).to_have_count(1)

        # Pasted.
        page.evaluate(PASTE, ["notes.txt", "pasted words", "text/plain"])
        carol.wait_for(rf"PRIVMSG {channel} :\S+/u/\S+/notes\.txt", timeout=15)

        # Attached, with the button's file chooser.
        image = tmp_path / "photo.png"
        image.write_bytes(png(30, 20))
        page.locator("#chat-file").set_input_files(str(image))
        carol.wait_for(rf"PRIVMSG {channel} :\S+/u/\S+/photo\.png", timeout=15)
        expect(page.locator("#chat-error")).to_be_empty()

        # Past the account's total: the server refuses, the input says why.
        page.evaluate(DROP, ["more.txt", "y" * 3990, "text/plain"])
        expect(page.locator("#chat-error")).to_contain_text("more.txt was not sent")
        expect(page.locator("#chat-error")).to_contain_text("LIMIT_UPLOADS_TOTAL_BYTES")

        # Too large: refused before sending, the reason in the input's error box.
        page.evaluate(DROP, ["big.txt", "x" * (LIMIT + 1), "text/plain"])
        expect(page.locator("#chat-error")).to_contain_text("big.txt was not sent")
        expect(page.locator("#chat-error")).to_contain_text("LIMIT_UPLOAD_BYTES")
        screenshot(page, "upload-refused.png")
        with switch(alice):
            assert sorted(Upload.objects.values_list("name", flat=True)) == [
                "notes.txt", "photo.png", "report.html",
            ]  # fmt: skip

        # The uploads page lists them; deleting one ends its link.
        page.goto(web.url + reverse("media:upload_list"))
        expect(page.locator(".uploads-table tbody tr")).to_have_count(3)
        page.locator("#upload-usage").wait_for()
        row = page.locator("tr", has_text="report.html")
        row.get_by_role("link", name="Delete report.html").click()
        page.get_by_role("button", name="Delete").click()
        expect(page.locator(".uploads-table tbody tr")).to_have_count(2)
        assert _get(web, urlsplit(url).path)[0] == 404

        # On a phone, in the dark theme: the page and the chat's Attach button still fit.
        page.set_viewport_size(PHONE)
        page.emulate_media(color_scheme="dark")
        page.reload()
        screenshot(page, "uploads-phone-dark.png")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.goto(web.url + reverse("chat:channel", args=[channel_id]))
        expect(page.locator("#chat-attach")).to_be_in_viewport()
        expect(page.locator("#chat-input button[type=submit]")).to_be_in_viewport()
        screenshot(page, "chat-attach-phone-dark.png")
    finally:
        context.close()
