"""The chat on a phone (390x844) in a real browser (Chromium through Playwright, against
uvicorn): the site header folds into the chat header, the servers-and-channels, members and
site-menu drawers open with a backdrop, take focus, keep the rest of the page out of reach,
and close by Escape, the backdrop, their close control or a swipe, giving focus back to their
toggle; closed, they are out of the Tab order. Lines put nick and text on one line. Screenshots
of the chat, the dashboard and the servers page at 390x844 are kept in var/artifacts/screenshots/
(CI keeps that folder as its artifacts)."""

from collections.abc import Iterator
from typing import Any, cast

import pytest
from django.conf import settings
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from accounts.models import User
from tests.conftest import signed_in_client
from tests.test_accessibility import furnished, settle
from tests.test_browser import ARTIFACTS
from tests.test_chat_e2e import PHONE, AsgiServer, asgi_server, chromium

__all__ = ["asgi_server", "chromium"]  # fixtures, used here by name

SCREENSHOTS = ARTIFACTS


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


@pytest.fixture
def phone(asgi_server: AsgiServer, chromium: Browser) -> Iterator[tuple[Page, dict[str, Any], str]]:
    erin, world = furnished("erin@example.org")
    context = chromium.new_context(
        viewport=PHONE,
        timezone_id="UTC",
        has_touch=True,
        is_mobile=True,
        device_scale_factor=2,
        reduced_motion="reduce",  # drawers in place at once, for the screenshots
    )
    context.set_default_timeout(10_000)
    cookie = signed_in_client(cast(User, erin)).cookies[settings.SESSION_COOKIE_NAME].value
    base = asgi_server.url
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": base}])
    page = context.new_page()
    page.goto(base + reverse("chat:channel", args=[world["channel"].pk]))
    settle(page)
    yield page, world, base
    context.close()


def focus_inside(page: Page, selector: str) -> bool:
    return cast(
        bool,
        page.evaluate(
            "(s) => document.querySelector(s).contains(document.activeElement)", selector
        ),
    )


def tab_stops(page: Page, count: int) -> list[str]:
    """Where focus goes on `count` presses of Tab from the top of the page."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    stops = []
    for _ in range(count):
        page.keyboard.press("Tab")
        stops.append(
            page.evaluate(
                "(() => { const e = document.activeElement; const d = e.closest('.drawer');"
                " return (d ? d.id + ':' : '') + (e.id || e.textContent.trim().slice(0, 30)); })()"
            )
        )
    return cast(list[str], stops)


@pytest.mark.browser
def test_the_chat_gets_the_whole_phone(phone: tuple[Page, dict[str, Any], str]) -> None:
    page, _, base = phone
    # The site header is folded away: the chat header is at the top of the screen.
    expect(page.locator("#site-header")).to_be_hidden()
    head = page.locator(".chat-head").bounding_box()
    assert head is not None and head["y"] < 2, f"the chat header is not at the top: {head}"
    menu = page.get_by_role("button", name="Palaver menu")
    expect(menu).to_be_visible()
    # Nothing wider than the screen; the input is on screen.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the chat overflows the phone: {width}px"
    box = page.locator("#chat-text").bounding_box()
    assert box is not None and box["y"] + box["height"] <= PHONE["height"]
    # A message: time, nick and text start on one line.
    line = page.locator("#chat-lines .line-message", has_text="line 59")
    nick = line.locator(".nick").bounding_box()
    text = line.locator(".text").bounding_box()
    assert nick is not None and text is not None
    assert abs(nick["y"] - text["y"]) < 4, f"nick and text on two lines: {nick} {text}"
    screenshot(page, "phone-chat.png")
    # Closed drawers are out of the Tab order: Tab never lands inside one.
    stops = tab_stops(page, 12)
    assert not [s for s in stops if s.startswith(("chat-sidebar-drawer:", "chat-members-drawer:"))]
    assert not [s for s in stops if s.startswith("site-header:")], stops

    # The menu reaches the site's nav.
    menu.click()
    header = page.locator("#site-header")
    expect(header).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "true")
    assert focus_inside(page, "#site-header")
    expect(header.get_by_role("link", name="Servers")).to_be_visible()
    screenshot(page, "phone-chat-menu.png")
    page.keyboard.press("Escape")
    expect(header).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(menu).to_be_focused()
    menu.click()
    header.get_by_role("link", name="Servers").click()
    expect(page).to_have_url(base + reverse("channels:server_list"))


@pytest.mark.browser
def test_drawers_open_take_focus_and_close_every_way(
    phone: tuple[Page, dict[str, Any], str],
) -> None:
    page, _, _ = phone
    sidebar = page.locator("#chat-sidebar-drawer")
    toggle = page.get_by_role("button", name="Servers and channels", exact=True)
    backdrop = page.locator("#drawer-backdrop")
    expect(sidebar).to_be_hidden()
    expect(backdrop).to_be_hidden()

    # Open: focus moves into it (on the open channel), the backdrop shows, the rest is inert.
    toggle.focus()
    page.keyboard.press("Enter")
    expect(sidebar).to_be_visible()
    expect(backdrop).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(sidebar.locator("[aria-current='page']")).to_be_focused()
    assert page.evaluate("document.querySelector('.chat-main').inert")
    # The sidebar is re-rendered (as chat.js does when counts change): focus stays on the link.
    page.evaluate(
        """() => {
            const nav = document.getElementById('chat-sidebar');
            nav.replaceChildren(...Array.from(nav.cloneNode(true).children));
        }"""
    )
    expect(sidebar.locator("[aria-current='page']")).to_be_focused()
    # Tab stays inside the open drawer.
    for _ in range(8):
        page.keyboard.press("Tab")
        assert focus_inside(page, "#chat-sidebar-drawer"), "Tab left the open drawer"
    screenshot(page, "phone-chat-sidebar.png")

    # Escape: closed, aria-expanded false, focus back on the toggle, nothing inert.
    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()
    expect(backdrop).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(toggle).to_be_focused()
    assert not page.evaluate("document.querySelector('.chat-main').inert")

    # The backdrop closes it.
    toggle.click()
    expect(sidebar).to_be_visible()
    page.mouse.click(PHONE["width"] - 20, PHONE["height"] // 2)
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")

    # Its close control closes it.
    toggle.click()
    sidebar.get_by_role("button", name="Close servers and channels").click()
    expect(sidebar).to_be_hidden()
    expect(toggle).to_be_focused()

    # A swipe toward its edge closes it; one from the screen's left edge opens it.
    toggle.click()
    expect(sidebar).to_be_visible()
    swipe(page, 250, 120)
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    swipe(page, 5, 200)
    expect(sidebar).to_be_visible()
    page.keyboard.press("Escape")

    # The members drawer, from the right: same rules.
    members_toggle = page.get_by_role("button", name="members")
    members = page.locator("#chat-members-drawer")
    members_toggle.click()
    expect(members).to_be_visible()
    expect(members_toggle).to_have_attribute("aria-expanded", "true")
    assert focus_inside(page, "#chat-members-drawer")
    expect(members.locator(".member-away").first).to_have_text("away")
    screenshot(page, "phone-chat-members.png")
    swipe(page, 150, 350)
    expect(members).to_be_hidden()
    expect(members_toggle).to_have_attribute("aria-expanded", "false")
    expect(members_toggle).to_be_focused()


def swipe(page: Page, from_x: int, to_x: int, y: int = 400) -> None:
    """A one-finger horizontal swipe (touch events, as a phone's browser sends them)."""
    page.evaluate(
        """([fromX, toX, y]) => {
            const target = document.elementFromPoint(fromX, y) || document.body;
            const touch = (x) => new Touch({identifier: 1, target, clientX: x, clientY: y});
            target.dispatchEvent(new TouchEvent("touchstart", {touches: [touch(fromX)],
                changedTouches: [touch(fromX)], bubbles: true}));
            target.dispatchEvent(new TouchEvent("touchend", {touches: [],
                changedTouches: [touch(toX)], bubbles: true}));
        }""",
        [from_x, to_x, y],
    )


@pytest.mark.browser
def test_dashboard_and_servers_fit_a_phone(phone: tuple[Page, dict[str, Any], str]) -> None:
    page, _, base = phone
    for name, shot in (
        ("dashboard", "phone-dashboard.png"),
        ("channels:server_list", "phone-servers.png"),
    ):
        page.goto(base + reverse(name))
        settle(page)
        # Outside the chat the site header stays where it is.
        expect(page.locator("#site-header")).to_be_visible()
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name} overflows the phone: {width}px"
        screenshot(page, shot)
