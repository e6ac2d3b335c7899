"""End to end in a real browser: two people sign up, one adds a server, the other cannot see it.

Drives Debian's Chromium (headless) through Playwright's sync API against pytest-django's
live server. Playwright's own browser builds cannot be downloaded on these machines, so the
system Chromium is used; when it is missing the test fails, it never skips.
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse
from playwright.sync_api import Browser, Error, Page, ViewportSize, expect, sync_playwright

# Playwright's sync API runs an asyncio event loop in this thread, and Django then refuses any
# ORM call made from it (fixture setup and teardown included) with SynchronousOnlyOperation.
# Nothing here runs concurrently with that loop: it only drives the browser.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Screenshots for whoever reviews the pages (CI keeps this folder as its artifacts).
ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "artifacts" / "screenshots"

PASSWORD = "a long pass phrase 42"
SERVER_PASSWORD = "hunter2-server-secret"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}; the browser tests need Debian's "
            "chromium package (apt-get install chromium).",
            pytrace=False,
        )
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Error as exc:
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}", pytrace=False)
        # Once, in CI's isolated run (2026-12-01), this process's database connection was found
        # lost right after this fixture's setup (the autouse fixtures had just used it): the
        # cause is not found yet. A lost connection is replaced here, so that the test, not a
        # socket from before, is what gets judged.
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        try:
            yield browser
        finally:
            browser.close()


def sign_up(page: Page, base: str, *, account_name: str, email: str) -> None:
    page.goto(base + reverse("accounts:sign_up"))
    page.get_by_label("Account name").fill(account_name)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(base + reverse("dashboard"))
    expect(page.get_by_role("heading", level=1)).to_have_text(account_name)
    expect(page.locator(".flash")).to_contain_text("Welcome to Palaver")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.mark.browser
def test_two_people_sign_up_and_see_only_their_own_servers(
    live_server: Any, clean_schemas: None, browser: Browser
) -> None:
    base = live_server.url
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()

    # --- A signs up and lands on an empty dashboard ---
    sign_up(page, base, account_name="Alice's place", email="alice@example.org")
    expect(page.get_by_text("No IRC servers yet.")).to_be_visible()

    # --- A adds a server; a bad host first: field error, typed values kept, secret not echoed ---
    page.get_by_role("link", name="Add a server").click()
    expect(page).to_have_url(base + reverse("channels:server_create"))
    # A known network hides the address fields; "Custom" shows them.
    expect(page.get_by_label("Host", exact=True)).to_be_hidden()
    page.get_by_label("Network").select_option("custom")
    page.get_by_label("Name", exact=True).fill("Libera")
    page.get_by_label("Host", exact=True).fill("irc..libera chat")
    page.get_by_label("Nick", exact=True).fill("alice_p")
    page.get_by_label("Server password").fill(SERVER_PASSWORD)
    page.get_by_role("button", name="Add server").click()

    host_field = page.locator(".field.has-error", has=page.get_by_label("Host", exact=True))
    expect(host_field.get_by_role("alert")).to_have_text(
        "Enter a host name such as irc.libera.chat, or an IP address."
    )
    expect(page.locator(".field.has-error")).to_have_count(1)
    expect(page.get_by_label("Name", exact=True)).to_have_value("Libera")
    expect(page.get_by_label("Host", exact=True)).to_have_value("irc..libera chat")
    expect(page.get_by_label("Nick", exact=True)).to_have_value("alice_p")
    expect(page.get_by_label("Server password")).to_have_value("")
    assert SERVER_PASSWORD not in page.content()

    page.get_by_label("Host", exact=True).fill("irc.libera.chat")
    page.get_by_label("Server password").fill(SERVER_PASSWORD)
    page.get_by_role("button", name="Add server").click()

    # --- the server's detail page: the password is "Set", never shown ---
    expect(page).to_have_url(re.compile(re.escape(base) + r"/servers/\d+/$"))
    server_url = page.url
    server_path = server_url.removeprefix(base)
    expect(page.get_by_role("heading", level=1)).to_have_text("Libera")
    expect(page.locator(".facts")).to_contain_text("irc.libera.chat")
    expect(page.locator(".facts")).to_contain_text("alice_p")
    password_fact = page.locator(".facts dt", has_text="Server password").locator("+ dd")
    expect(password_fact).to_have_text("Set")
    assert SERVER_PASSWORD not in page.content()
    screenshot(page, "a-server-detail.png")

    # --- the servers page lists it, and fits a phone's width ---
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Servers").click()
    row = page.locator("tbody tr")
    expect(row).to_have_count(1)
    expect(row.get_by_role("link", name="Libera")).to_have_attribute("href", server_path)
    expect(row).to_contain_text("irc.libera.chat:+6697")
    expect(row).to_contain_text("alice_p")

    page.set_viewport_size(PHONE)
    page.reload()
    expect(page.get_by_role("link", name="Libera")).to_be_visible()
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= PHONE["width"], f"servers page overflows a phone: {scroll_width}px wide"
    page.set_viewport_size(DESKTOP)

    # --- and so does the dashboard ---
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator(".stats li", has_text="Servers").locator("strong")).to_have_text("1")
    expect(page.locator(".rows")).to_contain_text("Libera")
    expect(page.locator(".rows")).to_contain_text("alice_p @ irc.libera.chat:+6697")
    screenshot(page, "a-dashboard.png")

    # --- A signs out: the top bar's Sign out is a POST form ---
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(base + reverse("accounts:sign_in"))
    expect(page.locator(".flash")).to_contain_text("You are signed out.")
    page.goto(base + reverse("dashboard"))
    expect(page).to_have_url(re.compile(re.escape(base + reverse("accounts:sign_in")) + r"\?"))

    # --- B signs up and sees none of A's world ---
    sign_up(page, base, account_name="Bob's place", email="bob@example.org")
    expect(page.get_by_text("No IRC servers yet.")).to_be_visible()
    expect(page.locator(".stats li", has_text="Servers").locator("strong")).to_have_text("0")
    expect(page.get_by_role("link", name="Libera", exact=True)).to_have_count(0)
    html = page.content()
    assert "irc.libera.chat" not in html
    assert "alice_p" not in html
    assert "alice@example.org" not in html

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Servers").click()
    expect(page).to_have_url(base + reverse("channels:server_list"))
    expect(page.get_by_text("No servers yet.")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(0)
    expect(page.get_by_role("link", name="Libera", exact=True)).to_have_count(0)
    html = page.content()
    assert "irc.libera.chat" not in html
    assert "alice_p" not in html
    screenshot(page, "b-servers.png")

    response = page.goto(server_url)
    assert response is not None
    assert response.status == 404, f"B opened A's server at {server_url}: {response.status}"
    html = page.content()
    assert "Libera" not in html
    assert "irc.libera.chat" not in html

    context.close()
