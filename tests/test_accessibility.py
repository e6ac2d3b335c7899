"""Accessibility, checked in a real browser (Debian's Chromium through Playwright, against
uvicorn): axe-core (WCAG 2.1 A and AA, and axe's best practices) over every page, signed out and
signed in, in every theme (light, dark, high contrast on a light and on a dark device), failing
on any serious or critical violation; the theme setting applied to <html>; the nick palette's
contrast; and the chat by keyboard (Tab leaves the input, "Load older lines" keeps focus in the
list, the topic opens by keyboard, the lines scroll by keyboard).

axe-core comes from PyPI, pinned in requirements/dev.txt: axe-playwright-python bundles
axe.min.js (axe-core 4.12), which is injected into each page.
"""

import math
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from axe_playwright_python.base import AXE_SCRIPT
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Browser, BrowserContext, Page, expect

from accounts.models import User
from agents.models import Task
from channels_app.models import Channel, ChannelUser, Message, Notification
from channels_app.selectors.chat import NICK_COLOURS
from exports.models import Export
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.helpers import populate, say
from tests.test_browser import ARTIFACTS
from tests.test_chat_e2e import DESKTOP, AsgiServer, asgi_server, chromium

__all__ = ["asgi_server", "chromium"]  # fixtures, used here by name

STATIC = Path(settings.BASE_DIR) / "static" / "css"
SCREENSHOTS = ARTIFACTS
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
FAILING_IMPACTS = {"serious", "critical"}
# (the account's theme setting, the device's colour scheme): each theme, and a chosen one against
# the device's (a dark theme on a light device, a light one on a dark device).
THEMES = [
    ("light", "dark"),
    ("dark", "light"),
    ("auto", "light"),
    ("auto", "dark"),
    ("contrast", "light"),
    ("contrast", "dark"),
]


# --- axe ---------------------------------------------------------------------------------------


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (serious and critical only)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_SCRIPT)
    result = page.evaluate(
        """(tags) => axe.run(document, {
            runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]})""",
        AXE_TAGS,
    )
    return [v for v in result["violations"] if v["impact"] in FAILING_IMPACTS]


def dangling_references(page: Page) -> list[str]:
    """aria-describedby, aria-labelledby and aria-controls ids that name no element."""
    return cast(
        list[str],
        page.evaluate(
            """() => {
            const out = [];
            for (const attr of ["aria-describedby", "aria-labelledby", "aria-controls"]) {
                for (const el of document.querySelectorAll(`[${attr}]`)) {
                    for (const id of el.getAttribute(attr).split(/\\s+/).filter(Boolean)) {
                        if (document.getElementById(id)) continue;
                        out.push(`${attr}="${id}" on ${el.outerHTML.slice(0, 120)}`);
                    }
                }
            }
            return out;
        }"""
        ),
    )


def describe(url: str, violations: list[dict[str, Any]]) -> list[str]:
    lines = []
    for violation in violations:
        for node in violation["nodes"][:4]:
            summary = (node.get("failureSummary") or "").replace("\n", " ")[:300]
            lines.append(
                f"{url}: {violation['id']} ({violation['impact']}) {node['target']} "
                f"{node['html'][:160]} :: {summary}"
            )
    return lines


def settle(page: Page) -> None:
    """Wait for what the page's scripts do on load (htmx swaps, the chat's first fetches)."""
    page.wait_for_load_state("load")
    page.wait_for_timeout(150)


# --- the world the pages show ------------------------------------------------------------------


def set_theme(user: User, theme: str) -> None:
    account = user.account
    account.settings = {**(account.settings or {}), "theme": theme}
    account.save(update_fields=["settings"])


def furnished(email: str) -> tuple[User, dict[str, Any]]:
    """An account with one of everything, and a channel with lines, members, a topic and
    notifications."""
    user = cast(User, UserFactory(email=email, account_name="Erin's place"))
    world = populate(user)
    with switch(user):
        channel: Channel = world["channel"]
        channel.topic = (
            "Palaver development: see https://example.org/palaver/roadmap for what is next, "
            "and be kind to each other in here, always"
        )
        channel.save(update_fields=["topic"])
        nicks = ["carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory"]
        for n, nick in enumerate(nicks):
            ChannelUser.objects.create(
                channel=channel, nick=nick, prefixes="@" if n == 0 else "", away=n % 4 == 3
            )
        say(channel, "", sender="carol", kind=Message.Kind.JOIN, minutes=-3000)
        for n in range(60):
            say(channel, f"line {n}: see https://example.org/{n}", sender=nicks[n % 9], minutes=n)
        # mIRC colours, black and navy among them: readable in every theme.
        say(channel, "\x0301black\x03 \x0302navy\x03 \x0308yellow\x03 \x0300white", minutes=60)
        say(channel, "waves", sender="dave", kind=Message.Kind.ACTION, minutes=61)
        say(channel, "is on the move", sender="frank", kind=Message.Kind.NOTICE, minutes=62)
        mention = say(channel, "erin: look at this", sender="grace", minutes=63)
        Notification.objects.create(message=mention, kind=Notification.Kind.HIGHLIGHT)
        world["task"].status = Task.Status.SUCCEEDED
        world["task"].output = "Done."
        world["task"].save(update_fields=["status", "output"])
        # Data exports: one ready to download, and one being made (its bar and counts).
        now = timezone.now()
        world["export"] = Export.objects.create(
            status=Export.Status.READY, lines_total=60, lines_done=60, size=4096,
            file_name="a/export.zip", started_at=now, finished_at=now,
            expires_at=now + timedelta(days=7),
        )  # fmt: skip
        Export.objects.create(
            status=Export.Status.RUNNING, lines_total=60, lines_done=20, started_at=now
        )
    return user, world


def signed_in_context(browser: Browser, base: str, user: User, scheme: str) -> BrowserContext:
    context = browser.new_context(
        viewport=DESKTOP, timezone_id="UTC", color_scheme=cast(Any, scheme)
    )
    context.set_default_timeout(10_000)
    cookie = signed_in_client(user).cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": base}])
    return context


def signed_in_pages(world: dict[str, Any]) -> list[str]:
    server, channel, agent = world["server"], world["channel"], world["agent"]
    kb, document, task, provider = world["kb"], world["document"], world["task"], world["provider"]
    return [
        reverse("dashboard"),
        reverse("channels:server_list"),
        reverse("channels:server_create"),
        reverse("channels:server_detail", args=[server.pk]),
        reverse("channels:server_edit", args=[server.pk]),
        reverse("channels:server_delete", args=[server.pk]),
        reverse("channels:channel_create", args=[server.pk]),
        reverse("channels:channel_edit", args=[channel.pk]),
        reverse("chat:channel", args=[channel.pk]),
        reverse("history:search"),
        reverse("history:search") + "?q=line",
        reverse("history:notifications"),
        reverse("history:chat_settings"),
        reverse("accounts:session_list"),
        reverse("accounts:password_change"),
        reverse("agents:agent_list"),
        reverse("agents:agent_create"),
        reverse("agents:agent_detail", args=[agent.pk]),
        reverse("agents:agent_edit", args=[agent.pk]),
        reverse("agents:task_list"),
        reverse("agents:task_detail", args=[task.pk]),
        reverse("agents:usage"),
        reverse("knowledge:kb_list"),
        reverse("knowledge:kb_create"),
        reverse("knowledge:kb_detail", args=[kb.pk]),
        reverse("knowledge:kb_search", args=[kb.pk]) + "?q=kind",
        reverse("knowledge:document_create", args=[kb.pk]),
        reverse("knowledge:document_detail", args=[document.pk]),
        reverse("llms:provider_list"),
        reverse("llms:provider_create"),
        reverse("llms:provider_edit", args=[provider.pk]),
        reverse("llms:tool_list"),
        reverse("exports:index"),
        reverse("exports:detail", args=[world["export"].pk]),
    ]


EMPTY_PAGES = [
    "dashboard",
    "channels:server_list",
    "chat:index",
    "history:notifications",
    "agents:agent_list",
    "agents:task_list",
    "knowledge:kb_list",
]
SIGNED_OUT_PAGES = [
    reverse("accounts:sign_in"),
    reverse("accounts:sign_up"),
    reverse("accounts:password_reset"),
    reverse("accounts:password_reset_confirm", args=["MQ", "set-password"]),
    "/no-such-page/",
]


@pytest.mark.browser
@pytest.mark.parametrize(("theme", "scheme"), THEMES, ids=[f"{t}-{s}" for t, s in THEMES])
def test_axe_finds_nothing_serious_on_any_page(
    asgi_server: AsgiServer, chromium: Browser, theme: str, scheme: str
) -> None:
    base = asgi_server.url
    erin, world = furnished("erin@example.org")
    frank = cast(User, UserFactory(email="frank@example.org", account_name="Frank's place"))
    set_theme(erin, theme)
    set_theme(frank, theme)
    problems: list[str] = []
    visited = 0

    def check(page: Page, url: str) -> None:
        nonlocal visited
        page.goto(base + url)
        settle(page)
        expect(page.locator("html")).to_have_attribute("data-theme", theme)
        problems.extend(describe(url, axe_violations(page)))
        problems.extend(f"{url}: {ref}" for ref in dangling_references(page))
        visited += 1

    # Signed out: the theme is the device's ("auto").
    context = cast(Any, chromium).new_context(viewport=DESKTOP, color_scheme=scheme)
    page = context.new_page()
    for url in SIGNED_OUT_PAGES:
        page.goto(base + url)
        settle(page)
        expect(page.locator("html")).to_have_attribute("data-theme", "auto")
        problems.extend(describe(url, axe_violations(page)))
        problems.extend(f"{url}: {ref}" for ref in dangling_references(page))
        visited += 1
    # A form sent back with errors: each error is named by its field's aria-describedby.
    page.goto(base + reverse("accounts:sign_up"))
    page.evaluate("document.querySelector('main form').noValidate = true")
    page.get_by_label("Email").fill("not an address")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator(".field.has-error").first).to_be_visible()
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")
    problems.extend(describe("sign-up with errors", axe_violations(page)))
    problems.extend(f"sign-up with errors: {ref}" for ref in dangling_references(page))
    context.close()

    context = signed_in_context(chromium, base, erin, scheme)
    page = context.new_page()
    for url in signed_in_pages(world):
        check(page, url)
    # How the chat looks in this theme, for whoever reviews it (var/artifacts/screenshots/).
    page.goto(base + reverse("chat:channel", args=[world["channel"].pk]))
    settle(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"chat-{theme}-on-{scheme}-device.png"))
    # The chat with the member list open (a drawer below 1000 px).
    page.set_viewport_size({"width": 900, "height": 800})
    page.goto(base + reverse("chat:channel", args=[world["channel"].pk]))
    settle(page)
    page.get_by_role("button", name="members").click()
    expect(page.locator("#chat-members-drawer")).to_be_visible()
    problems.extend(describe("chat, members open", axe_violations(page)))
    context.close()

    context = signed_in_context(chromium, base, frank, scheme)
    page = context.new_page()
    for name in EMPTY_PAGES:
        check(page, reverse(name))
    context.close()

    assert visited == len(SIGNED_OUT_PAGES) + len(signed_in_pages(world)) + len(EMPTY_PAGES)
    assert not problems, "axe found serious or critical violations:\n" + "\n".join(problems)


# --- themes ------------------------------------------------------------------------------------


def background(page: Page) -> str:
    return cast(str, page.evaluate("getComputedStyle(document.body).backgroundColor"))


@pytest.mark.browser
def test_the_theme_setting_is_on_html_and_auto_follows_the_device(
    asgi_server: AsgiServer, chromium: Browser
) -> None:
    base = asgi_server.url
    erin = cast(User, UserFactory(email="erin@example.org"))
    seen: dict[tuple[str, str], str] = {}
    for theme in ("auto", "light", "dark", "contrast"):
        set_theme(erin, theme)
        for scheme in ("light", "dark"):
            context = signed_in_context(chromium, base, erin, scheme)
            page = context.new_page()
            # The colours are right in the first paint: no script decides them.
            page.route(re.compile(r"\.js$"), lambda route: route.abort())
            page.goto(base + reverse("dashboard"))
            expect(page.locator("html")).to_have_attribute("data-theme", theme)
            seen[(theme, scheme)] = background(page)
            context.close()
    light, dark = "rgb(246, 247, 251)", "rgb(18, 20, 27)"
    assert seen[("light", "light")] == seen[("light", "dark")] == light
    assert seen[("dark", "light")] == seen[("dark", "dark")] == dark
    assert seen[("auto", "light")] == light
    assert seen[("auto", "dark")] == dark
    assert seen[("contrast", "light")] == "rgb(255, 255, 255)"
    assert seen[("contrast", "dark")] == "rgb(0, 0, 0)"
    # A signed-out page follows the device.
    context = cast(Any, chromium).new_context(color_scheme="dark")
    page = context.new_page()
    page.goto(base + reverse("accounts:sign_in"))
    expect(page.locator("html")).to_have_attribute("data-theme", "auto")
    assert background(page) == dark
    context.close()


# --- the nick palette --------------------------------------------------------------------------


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _linear(channel: int) -> float:
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def contrast(a: str, b: str) -> float:
    weights = (0.2126, 0.7152, 0.0722)
    la, lb = (sum(w * _linear(c) for w, c in zip(weights, _rgb(x), strict=True)) for x in (a, b))
    hi, lo = max(la, lb), min(la, lb)
    return (hi + 0.05) / (lo + 0.05)


def oklab(hex_colour: str) -> tuple[float, float, float]:
    r, g, b = (_linear(c) for c in _rgb(hex_colour))
    lms = (
        0.4122214708 * r + 0.5363325363 * g + 0.0514459929 * b,
        0.2119034982 * r + 0.6806995451 * g + 0.1073969566 * b,
        0.0883024619 * r + 0.2817188376 * g + 0.6299787005 * b,
    )
    l_, m_, s_ = (v ** (1 / 3) for v in lms)
    return (
        0.2104542553 * l_ + 0.7936177850 * m_ - 0.0040720468 * s_,
        1.9779984951 * l_ - 2.4285922050 * m_ + 0.4505937099 * s_,
        0.0259040371 * l_ + 0.7827717662 * m_ - 0.8086757660 * s_,
    )


def theme_blocks() -> dict[str, dict[str, str]]:
    """Each theme's custom properties, as palaver.css sets them."""
    css = (STATIC / "palaver.css").read_text()
    dark_device = "@media (prefers-color-scheme: dark) {\n  "
    selectors = {
        "light": ':root, :root[data-theme="light"] {\n',
        "dark": ':root[data-theme="dark"] {\n',
        "auto-dark": dark_device + ':root[data-theme="auto"] {\n',
        "contrast-light": ':root[data-theme="contrast"] {\n',
        "contrast-dark": dark_device + ':root[data-theme="contrast"] {\n',
    }
    blocks = {}
    for name, opening in selectors.items():
        start = css.index(opening) + len(opening)
        body = css[start : css.index("}", start)]
        blocks[name] = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})\b", body))
    return blocks


def test_every_nick_colour_reads_on_every_background_of_its_theme() -> None:
    """4.5:1 (AA) against each background a nick can sit on (the page, a panel, a highlighted
    line, the open buffer), 7:1 in high contrast; every colour distinct, and two neighbouring
    hashes (nick-cN, nick-cN+1) far apart, so that similar nicks do not look alike."""
    chat_css = (STATIC / "chat.css").read_text()
    for n in range(NICK_COLOURS):
        assert f".nick-c{n} {{ color: var(--nick-{n}); }}" in chat_css
    for name, props in theme_blocks().items():
        nicks = [props[f"nick-{n}"] for n in range(NICK_COLOURS)]
        backgrounds = [props["bg"], props["surface"], props["warn-bg"], props["accent-soft"]]
        needed = 7.0 if name.startswith("contrast") else 4.5
        for n, colour in enumerate(nicks):
            for bg in backgrounds:
                ratio = contrast(colour, bg)
                assert ratio >= needed, f"{name}: nick-c{n} {colour} on {bg} is {ratio:.2f}:1"
        for n in range(NICK_COLOURS):
            neighbour = nicks[(n + 1) % NICK_COLOURS]
            distance = math.dist(oklab(nicks[n]), oklab(neighbour))
            assert distance >= 0.15, f"{name}: nick-c{n} and its neighbour look alike"
        for i, a in enumerate(nicks):
            for b in nicks[i + 1 :]:
                assert math.dist(oklab(a), oklab(b)) >= 0.02, f"{name}: {a} and {b} look alike"
        # The other text colours of the theme read too.
        for key in ("text", "muted", "accent", "danger", "ok"):
            ratio = contrast(props[key], props["bg"])
            assert ratio >= needed, f"{name}: --{key} on the background is {ratio:.2f}:1"


# --- the chat by keyboard ----------------------------------------------------------------------


@pytest.fixture
def chat_page(asgi_server: AsgiServer, chromium: Browser) -> Iterator[tuple[Page, dict[str, Any]]]:
    erin, world = furnished("erin@example.org")
    context = signed_in_context(chromium, asgi_server.url, erin, "light")
    page = context.new_page()
    page.goto(asgi_server.url + reverse("chat:channel", args=[world["channel"].pk]))
    settle(page)
    yield page, world
    context.close()


# Sequential focus starts over from the top of the page (as after a fresh load without autofocus).
FROM_THE_TOP = """() => {
    document.body.tabIndex = -1;
    document.body.focus();
    document.body.removeAttribute("tabindex");
}"""


def focused(page: Page) -> str:
    return cast(
        str,
        page.evaluate(
            "document.activeElement ? (document.activeElement.id || "
            "document.activeElement.className || document.activeElement.tagName) : ''"
        ),
    )


@pytest.mark.browser
def test_tab_leaves_the_input_when_there_is_nothing_to_complete(
    chat_page: tuple[Page, dict[str, Any]],
) -> None:
    page, _ = chat_page
    box = page.locator("#chat-text")
    box.fill("hello ")
    box.focus()
    page.keyboard.press("Tab")
    assert focused(page) != "chat-text", "Tab with nothing to complete kept focus in the input"
    # With a nick to complete, Tab completes it; once complete, Tab moves on.
    box.fill("mall")
    box.focus()
    page.keyboard.press("Tab")
    expect(box).to_have_value("mallory: ")
    assert focused(page) == "chat-text"
    page.keyboard.press("Tab")
    assert focused(page) != "chat-text", "Tab after the only completion kept focus in the input"
    # Shift+Tab from the input goes back, too.
    box.fill("")
    box.focus()
    page.keyboard.press("Shift+Tab")
    assert focused(page) != "chat-text"


@pytest.mark.browser
def test_the_lines_the_topic_and_older_lines_by_keyboard(
    chat_page: tuple[Page, dict[str, Any]],
) -> None:
    page, _ = chat_page
    lines = page.locator("#chat-lines")
    expect(lines).to_have_attribute("tabindex", "0")
    expect(lines).to_have_accessible_name("Messages")
    lines.focus()
    before = page.evaluate("document.getElementById('chat-lines').scrollTop")
    page.keyboard.press("PageUp")
    page.wait_for_timeout(300)
    assert page.evaluate("document.getElementById('chat-lines').scrollTop") < before

    # The topic is cut to one line; "more" opens it by keyboard, and closes it.
    expect(page.get_by_role("button", name="more of the topic")).to_be_visible()
    more = page.locator(".topic-more")
    expect(more).to_have_attribute("aria-expanded", "false")
    more.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#chat-topic")).to_have_class(re.compile(r"\bexpanded\b"))
    expect(more).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Space")
    expect(more).to_have_attribute("aria-expanded", "false")


@pytest.mark.browser
def test_loading_older_lines_keeps_focus_in_the_list(
    asgi_server: AsgiServer, chromium: Browser
) -> None:
    erin, world = furnished("erin@example.org")
    with switch(erin):
        for n in range(150):
            say(world["channel"], f"old line {n}", sender="judy", minutes=-2000 + n)
    context = signed_in_context(chromium, asgi_server.url, erin, "light")
    page = context.new_page()
    page.goto(asgi_server.url + reverse("chat:channel", args=[world["channel"].pk]))
    settle(page)
    shown = page.locator("#chat-lines .line").count()
    older = page.get_by_role("link", name="Load older lines")
    older.focus()
    older.press("Enter")
    expect(page.locator("#chat-lines .line", has_text="old line 50")).to_have_count(1)
    assert page.locator("#chat-lines .line").count() > shown
    active = page.evaluate(
        "document.activeElement && document.getElementById('chat-lines')"
        ".contains(document.activeElement)"
    )
    assert active, f"focus left the lines when older ones loaded: {focused(page)}"
    assert focused(page) != "BODY"
    context.close()


@pytest.mark.browser
def test_axe_runs_and_reports_what_it_finds(chromium: Browser) -> None:
    """The check above can fail: a page with an unlabelled field and a low-contrast line is
    reported (serious), and the same page fixed is not."""
    page = chromium.new_page()
    page.set_content(
        '<html lang="en"><title>t</title><main><p style="color:#999;background:#fff">faint</p>'
        '<input type="text"></main></html>'
    )
    found = {v["id"] for v in axe_violations(page)}
    assert {"color-contrast", "label"} <= found
    page.set_content(
        '<html lang="en"><title>t</title><main><p style="color:#333;background:#fff">clear</p>'
        '<label>Name <input type="text"></label></main></html>'
    )
    assert axe_violations(page) == []
    page.close()


@pytest.mark.browser
def test_tab_order_on_the_chat_follows_the_page(
    chat_page: tuple[Page, dict[str, Any]],
) -> None:
    """Skip link first (it lands in the main region), then the site's nav, the channels, the
    chat header, the lines, the input, the member list: the order things are seen in."""
    page, world = chat_page
    page.evaluate(FROM_THE_TOP)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    stops: list[str] = []
    for _ in range(160):  # every line's link is a stop on the way
        page.keyboard.press("Tab")
        stops.append(
            page.evaluate(
                """() => {
                const e = document.activeElement;
                if (e.closest('.mainnav')) return 'nav';
                if (e.closest('#chat-sidebar')) return 'sidebar';
                if (e.closest('.chat-head')) return 'head';
                if (e.id === 'chat-lines') return 'lines';
                if (e.closest('#chat-lines')) return 'line link';
                if (e.id === 'chat-text') return 'input';
                if (e.closest('#chat-members')) return 'members';
                return e.tagName.toLowerCase();
            }"""
            )
        )
    order = [s for n, s in enumerate(stops) if s != "line link" and s not in stops[:n]]
    wanted = ["nav", "sidebar", "head", "lines", "input"]
    assert [s for s in order if s in wanted] == wanted, stops
    # The skip link moves focus past the header and the nav.
    page.evaluate(FROM_THE_TOP)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert focused(page) == "main"
    assert world["channel"].name in page.title()


@pytest.mark.parametrize(
    ("stored", "shown", "scheme"),
    [
        (None, "auto", "light dark"),
        ("light", "light", "light"),
        ("dark", "dark", "dark"),
        ("contrast", "contrast", "light dark"),
        ("<script>", "auto", "light dark"),  # edited in the admin: never trusted
    ],
)
def test_every_page_carries_the_accounts_theme(
    alice: User, stored: str | None, shown: str, scheme: str
) -> None:
    if stored is not None:
        set_theme(alice, stored)
    client = signed_in_client(alice)
    for url in (reverse("dashboard"), reverse("history:chat_settings"), "/no-such-page/"):
        html = client.get(url).content.decode()
        assert f'<html lang="en" data-theme="{shown}">' in html, url
        assert f'<meta name="color-scheme" content="{scheme}">' in html, url
    # Signed out, the device decides.
    html = Client().get(reverse("accounts:sign_in")).content.decode()
    assert '<html lang="en" data-theme="auto">' in html


def test_the_settings_page_changes_the_theme(alice: User) -> None:
    client = signed_in_client(alice)
    form = client.get(reverse("history:chat_settings")).context["form"]
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update({"theme": "contrast", "highlight_words": ""})
    response = client.post(reverse("history:chat_settings"), data, follow=True)
    assert response.status_code == 200
    assert '<html lang="en" data-theme="contrast">' in response.content.decode()
