"""The chat as a daily IRC user drives it (issue 11, items 1, 2 and 5), in Chromium against
uvicorn, the real gateway and InspIRCd: a refused command or an unsendable line shows why next
to the line, with a Retry; /part and /close take a channel off the sidebar, /join opens one;
/chat/ reopens the last buffer; the "new messages" divider; join/part/quit runs folded; 12- or
24-hour times; the keyboard (buffers, unread, highlights, the Ctrl+K switcher, typing anywhere,
the help sheet)."""

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from django.conf import settings
from django.urls import reverse
from playwright.sync_api import Browser, BrowserContext, Page, expect

from accounts.models import User
from channels_app.models import Channel, Message, Notification, Server
from channels_app.services.servers import save_server
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.gateway_support import GatewayThread, wait_until
from tests.ircd import BotFactory, InspIRCd, free_port, unique_channel
from tests.test_chat_e2e import (
    DESKTOP,
    AsgiServer,
    add_server,
    alice,
    asgi_server,
    chromium,
    on_irc,
    send_line,
)

__all__ = ["alice", "asgi_server", "chromium"]  # fixtures, used here by name

T0 = datetime(2026, 11, 23, 13, 5, tzinfo=UTC)


def _context(chromium: Browser, base: str, user: User) -> BrowserContext:
    context = chromium.new_context(viewport=DESKTOP, timezone_id="UTC")
    context.set_default_timeout(10_000)
    cookie = signed_in_client(user).cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": base}])
    return context


@pytest.fixture
def erin(clean_schemas: None) -> User:
    return cast(User, UserFactory(email="erin@example.org", account_name="Erin's place"))


@pytest.fixture
def erin_page(erin: User, asgi_server: AsgiServer, chromium: Browser) -> Iterator[Page]:
    context = _context(chromium, asgi_server.url, erin)
    try:
        yield context.new_page()
    finally:
        context.close()


def _server(user: User, name: str = "Libera") -> Server:
    with switch(user):
        return Server.objects.create(name=name, host="irc.example.invalid", nick="erin")


def _say(channel: Channel, n: int, *, sender: str = "carol", kind: str = "message") -> Message:
    return Message.objects.create(
        channel=channel,
        sender=sender,
        kind=kind,
        text=f"line {n}",
        server_time=T0 + timedelta(minutes=n),
    )


def _url(base: str, channel: Channel | int) -> str:
    return base + reverse(
        "chat:channel", args=[channel if isinstance(channel, int) else channel.pk]
    )


# --- buffers ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_the_unread_divider_sits_above_the_first_unread_line(
    erin: User, erin_page: Page, asgi_server: AsgiServer
) -> None:
    server = _server(erin)
    with switch(erin):
        channel = Channel.objects.create(server=server, name="#busy")
        lines = [_say(channel, n) for n in range(6)]
        Channel.objects.filter(pk=channel.pk).update(last_read_message_id=lines[2].pk)
    page = erin_page
    page.goto(_url(asgi_server.url, channel))
    divider = page.locator("#chat-lines #chat-unread")
    expect(divider).to_have_text("New messages")
    # Right above line 3, the first one said after the marker.
    following = page.locator("#chat-unread + li")
    expect(following).to_have_attribute("data-id", str(lines[3].pk))
    # The page marked everything read: opened again, no divider.
    with switch(erin):
        wait = datetime.now(UTC) + timedelta(seconds=10)
        while Channel.objects.get(pk=channel.pk).last_read_message_id != lines[5].pk:
            assert datetime.now(UTC) < wait, "the page did not mark the lines read"
            page.wait_for_timeout(100)
    page.reload()
    expect(page.locator(".line", has_text="line 5")).to_have_count(1)
    expect(divider).to_have_count(0)


@pytest.mark.browser
def test_join_part_quit_runs_fold_into_one_line_that_expands(
    erin: User, erin_page: Page, asgi_server: AsgiServer
) -> None:
    server = _server(erin)
    with switch(erin):
        channel = Channel.objects.create(server=server, name="#hall")
        _say(channel, 0)
        _say(channel, 1, sender="alice", kind="join")
        _say(channel, 2, sender="bob", kind="join")
        _say(channel, 3, sender="carol", kind="quit")
        _say(channel, 4, sender="alice", kind="part")
        _say(channel, 5)
        _say(channel, 6, sender="dave", kind="join")  # alone: not folded
    page = erin_page
    page.goto(_url(asgi_server.url, channel))
    run = page.locator("#chat-lines .line-run")
    expect(run).to_have_count(1)
    expect(run.locator(".run-summary")).to_have_text("alice, bob joined; carol quit; alice left")
    folded = page.locator("#chat-lines .in-run")
    expect(folded).to_have_count(4)
    for n in range(4):
        expect(folded.nth(n)).to_be_hidden()
    expect(page.locator("#chat-lines .line-join:not(.in-run)", has_text="dave")).to_be_visible()
    toggle = run.locator(".run-toggle")
    expect(toggle).to_have_text("show 4 lines")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    for n in range(4):
        expect(folded.nth(n)).to_be_visible()
    expect(folded.nth(2)).to_contain_text("carol quit")
    toggle.click()
    expect(folded.nth(0)).to_be_hidden()


@pytest.mark.browser
def test_times_follow_the_accounts_12_or_24_hour_setting(
    erin: User, erin_page: Page, asgi_server: AsgiServer
) -> None:
    server = _server(erin)
    with switch(erin):
        channel = Channel.objects.create(server=server, name="#clock")
        said = _say(channel, 0)  # 13:05 UTC
        Notification.objects.create(message=said, kind=Notification.Kind.HIGHLIGHT)
    page = erin_page
    page.goto(_url(asgi_server.url, channel))
    first = page.locator(f"#m{said.pk} time")
    expect(first).to_have_text("13:05")

    account = erin.account
    account.settings = {**(account.settings or {}), "time_format": "12h"}
    account.save(update_fields=["settings"])
    page.reload()
    expect(first).to_have_text("1:05 PM")
    # A line sent now shows in the same format while it is pending.
    page.evaluate("document.getElementById('chat').dataset.live = '1'")
    # Elsewhere: search results and notifications.
    page.goto(asgi_server.url + reverse("history:search") + "?q=line")
    expect(page.locator("main time").first).to_contain_text("1:05 PM")
    page.goto(asgi_server.url + reverse("history:notifications"))
    expect(page.locator("main time").first).to_contain_text("1:05 PM")


@pytest.mark.browser
def test_the_chat_reopens_the_buffer_last_open(
    erin: User, erin_page: Page, asgi_server: AsgiServer
) -> None:
    server = _server(erin)
    with switch(erin):
        Channel.objects.create(server=server, name="#aaa")
        second = Channel.objects.create(server=server, name="#zzz")
    page = erin_page
    page.goto(_url(asgi_server.url, second))
    expect(page.get_by_role("heading", level=1)).to_contain_text("#zzz")
    page.goto(asgi_server.url + reverse("chat:index"))
    expect(page).to_have_url(_url(asgi_server.url, second))
    # A channel left (autojoin off) is not reopened, nor listed.
    with switch(erin):
        Channel.objects.filter(pk=second.pk).update(autojoin=False)
    page.goto(asgi_server.url + reverse("chat:index"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("#aaa")
    expect(page.locator("#chat-sidebar a[data-name='#zzz']")).to_have_count(0)


# --- the keyboard ----------------------------------------------------------------------------


@pytest.fixture
def five_buffers(erin: User) -> list[Channel]:
    """#a (open in the tests), #b with unread lines, #c, #d with a highlight, #e."""
    server = _server(erin)
    with switch(erin):
        buffers = [Channel.objects.create(server=server, name=f"#{c}") for c in "abcde"]
        for channel in buffers:
            said = _say(channel, 0)
            Channel.objects.filter(pk=channel.pk).update(last_read_message_id=said.pk)
        _say(buffers[1], 1)
        highlight = _say(buffers[3], 2, sender="dave")
        Notification.objects.create(message=highlight, kind=Notification.Kind.HIGHLIGHT)
    return buffers


def _heading(page: Page, name: str) -> None:
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)


@pytest.mark.browser
def test_alt_arrows_move_between_buffers_and_unread_ones(
    erin_page: Page, asgi_server: AsgiServer, five_buffers: list[Channel]
) -> None:
    page = erin_page
    page.goto(_url(asgi_server.url, five_buffers[0]))
    _heading(page, "#a")
    page.locator("#chat-text").focus()
    # Round the list both ways.
    page.keyboard.press("Alt+ArrowUp")
    _heading(page, "#e")
    page.keyboard.press("Alt+ArrowDown")
    _heading(page, "#a")
    page.keyboard.press("Alt+ArrowDown")
    _heading(page, "#b")
    # Alt+Shift: the next buffer with unread lines, past #c (read).
    page.keyboard.press("Alt+Shift+ArrowDown")
    _heading(page, "#d")
    page.keyboard.press("Alt+ArrowUp")
    _heading(page, "#c")


@pytest.mark.browser
def test_alt_a_goes_to_the_highlight_first(
    erin_page: Page, asgi_server: AsgiServer, five_buffers: list[Channel]
) -> None:
    page = erin_page
    page.goto(_url(asgi_server.url, five_buffers[0]))
    page.keyboard.press("Alt+a")
    _heading(page, "#d")  # the highlight, though #b's unread lines come first in the list
    page.keyboard.press("Alt+a")
    _heading(page, "#b")  # then the unread


@pytest.mark.browser
def test_ctrl_k_switches_by_name_as_a_combobox(
    erin_page: Page, asgi_server: AsgiServer, five_buffers: list[Channel]
) -> None:
    page = erin_page
    page.goto(_url(asgi_server.url, five_buffers[0]))
    page.keyboard.press("Control+k")
    dialog = page.get_by_role("dialog", name="Switch to")
    expect(dialog).to_be_visible()
    box = dialog.get_by_role("combobox", name="Switch to")
    expect(box).to_be_focused()
    expect(box).to_have_attribute("aria-expanded", "true")
    options = dialog.get_by_role("option")
    # With nothing typed: the highlight, then the unread, first.
    expect(options.first).to_contain_text("#d")
    expect(options.nth(1)).to_contain_text("#b")
    box.type("c")
    expect(options).to_have_count(1)
    expect(options.first).to_have_attribute("aria-selected", "true")
    assert box.get_attribute("aria-activedescendant") == options.first.get_attribute("id")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.locator("#chat-text")).to_be_focused()
    # Arrows choose, Enter opens.
    page.keyboard.press("Control+k")
    box.type("#")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(options.nth(2)).to_have_attribute("aria-selected", "true")
    chosen = options.nth(2).locator(".switcher-name").inner_text()
    page.keyboard.press("Enter")
    _heading(page, chosen)


@pytest.mark.browser
def test_typing_anywhere_goes_to_the_input_and_the_help_sheet_lists_the_keys(
    erin_page: Page, asgi_server: AsgiServer, five_buffers: list[Channel]
) -> None:
    page = erin_page
    page.goto(_url(asgi_server.url, five_buffers[0]))
    text = page.locator("#chat-text")
    page.locator("#chat-lines").click()
    page.evaluate("document.activeElement.blur()")
    page.keyboard.type("hi")
    expect(text).to_be_focused()
    expect(text).to_have_value("hi")
    # "?" in the input is typed; outside it, it opens the sheet.
    page.keyboard.type("?")
    expect(text).to_have_value("hi?")
    help_sheet = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(help_sheet).to_be_hidden()
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Shift+?")
    expect(help_sheet).to_be_visible()
    for shortcut in ("Previous / next buffer", "Switch to a buffer by name", "Next highlight"):
        expect(help_sheet).to_contain_text(shortcut)
    page.keyboard.press("Escape")
    expect(help_sheet).to_be_hidden()
    # Alt+/ from the input, and the sidebar's button.
    text.focus()
    page.keyboard.press("Alt+Slash")
    expect(help_sheet).to_be_visible()
    page.keyboard.press("Alt+Slash")
    expect(help_sheet).to_be_hidden()
    page.get_by_role("button", name="Keyboard shortcuts").click()
    expect(help_sheet).to_be_visible()
    help_sheet.get_by_role("button", name="Close").click()
    expect(help_sheet).to_be_hidden()
    expect(text).to_have_value("hi?")


# --- against a real IRC server -----------------------------------------------------------------


def _open(chromium: Browser, asgi_server: AsgiServer, user: User, channel_id: int) -> Page:
    page = _context(chromium, asgi_server.url, user).new_page()
    page.goto(_url(asgi_server.url, channel_id))
    return page


@pytest.mark.browser
def test_a_refused_command_says_why_next_to_it_and_retries(
    alice: User,
    asgi_server: AsgiServer,
    chromium: Browser,
    inspircd: InspIRCd,
    irc_bot: BotFactory,
    run_gateway: Callable[..., GatewayThread],
) -> None:
    channel = unique_channel()
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)  # the channel is +t: a topic needs ops, which alice has not
    add_server(alice, inspircd, nick="alice_p", channel=channel)
    run_gateway()
    with switch(alice):
        channel_id = Channel.objects.get(name=channel).pk
    wait_until(lambda: on_irc(alice, channel_id, "alice_p"), what="alice_p joined")
    page = _open(chromium, asgi_server, alice, channel_id)
    expect(page.locator(".chat-title [data-server-state]")).to_have_text(re.compile("^connected"))

    send_line(page, "/topic not allowed")
    failed = page.locator("#chat-lines .line-failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".text")).to_have_text("/topic not allowed")
    expect(failed.locator(".line-error-reason")).to_contain_text(channel)
    expect(failed.locator(".line-error-reason")).to_contain_text(re.compile("channel op", re.I))

    # Retry sends it again (a new input): refused again, said again, still one line.
    first_cid = failed.get_attribute("data-cid")
    failed.get_by_role("button", name="Retry").click()
    expect(failed).to_have_count(1)
    expect(failed).not_to_have_attribute("data-cid", first_cid or "")
    expect(failed.locator(".line-error-reason")).to_contain_text(re.compile("channel op", re.I))
    # A line the server takes is not marked: a plain message reaches carol.
    send_line(page, "fine then")
    carol.wait_for(rf":alice_p!\S+ PRIVMSG {re.escape(channel)} :fine then$")
    expect(page.locator("#chat-lines .line-self[data-id]", has_text="fine then")).to_have_count(1)
    expect(page.locator("#chat-lines .line-failed")).to_have_count(1)


@pytest.mark.browser
def test_a_line_sent_before_the_server_is_connected_says_so_and_retries(
    alice: User,
    asgi_server: AsgiServer,
    chromium: Browser,
    inspircd: InspIRCd,
    irc_bot: BotFactory,
    run_gateway: Callable[..., GatewayThread],
) -> None:
    # A server nobody listens on: the gateway keeps trying, never registered.
    with switch(alice):
        server = save_server(
            account_id=alice.account_id,
            server=Server(
                name="Down", host="127.0.0.1", port=free_port(), tls=False, nick="alice_p"
            ),
            alt_nicks=[],
            secrets={},
        )
        buffer = Channel.objects.create(server=server, name="#quiet", autojoin=True)
    run_gateway()
    page = _open(chromium, asgi_server, alice, buffer.pk)
    send_line(page, "anyone there?")
    failed = page.locator("#chat-lines .line-pending.line-failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".text")).to_have_text("anyone there?")
    expect(failed.locator(".line-error-reason")).to_contain_text("not connected")
    # Dismiss takes it away; a Retry (still down) says it again.
    failed.get_by_role("button", name="Retry").click()
    expect(failed).to_have_count(1)
    expect(failed.locator(".line-error-reason")).to_contain_text("not connected")
    failed.get_by_role("button", name="Dismiss").click()
    expect(failed).to_have_count(0)


@pytest.mark.browser
def test_part_close_and_join_change_the_sidebar(
    alice: User,
    asgi_server: AsgiServer,
    chromium: Browser,
    inspircd: InspIRCd,
    irc_bot: BotFactory,
    run_gateway: Callable[..., GatewayThread],
) -> None:
    first, second, third = unique_channel(), unique_channel(), unique_channel()
    carol = irc_bot(inspircd, "carol")
    server_id = add_server(alice, inspircd, nick="alice_p", channel=first)
    with switch(alice):
        Channel.objects.create(server_id=server_id, name=second, autojoin=True)
        ids = {c.name: c.pk for c in Channel.objects.all()}
    run_gateway()
    wait_until(lambda: on_irc(alice, ids[first], "alice_p"), what=f"{first} joined")
    wait_until(lambda: on_irc(alice, ids[second], "alice_p"), what=f"{second} joined")
    page = _open(chromium, asgi_server, alice, ids[first])
    sidebar = page.locator("#chat-sidebar")
    expect(sidebar.locator(f"a[data-name='{first}']")).to_have_count(1)
    expect(sidebar.locator(f"a[data-name='{second}']")).to_have_count(1)

    # /part: the channel leaves IRC, the sidebar and autojoin; the page moves on.
    carol.join(first)
    send_line(page, "/part bye now")
    carol.wait_for(rf":alice_p!\S+ PART :?{re.escape(first)}", timeout=10)
    expect(page).not_to_have_url(_url(asgi_server.url, ids[first]))
    expect(sidebar.locator(f"a[data-name='{first}']")).to_have_count(0)
    with switch(alice):
        assert Channel.objects.get(pk=ids[first]).autojoin is False

    # /close in a channel: the same.
    page.goto(_url(asgi_server.url, ids[second]))
    carol.join(second)
    send_line(page, "/close")
    carol.wait_for(rf":alice_p!\S+ PART :?{re.escape(second)}", timeout=10)
    expect(sidebar.locator(f"a[data-name='{second}']")).to_have_count(0)
    with switch(alice):
        assert Channel.objects.get(pk=ids[second]).autojoin is False

    # /join opens the new channel once the gateway is in it.
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    page.locator("#chat-text").fill(f"/join {third}")
    page.locator("#chat-text").press("Enter")
    _heading(page, third)
    expect(sidebar.locator(f"a[data-name='{third}'][aria-current='page']")).to_have_count(1)
    carol.join(third)
    expect(page.locator("#chat-member-list [data-nick='carol']")).to_have_count(1)


def _axe(page: Page, *selectors: str) -> list[str]:
    """axe-core's serious and critical violations inside `selectors` (this file's parts of the
    page; nick colours are the palette's, checked with whole pages by the accessibility
    tests)."""
    from axe_playwright_python.base import AXE_SCRIPT

    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_SCRIPT)
    result = page.evaluate(
        """([include, tags]) => axe.run({include: include.map((s) => [s]), exclude: [[".nick"]]}, {
            runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]})""",
        [list(selectors), ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]],
    )
    return [
        f"{v['id']}: {node['target']} {node.get('failureSummary', '')}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
        for node in v["nodes"]
    ]


@pytest.mark.browser
def test_the_switcher_help_sheet_runs_and_divider_pass_axe(
    erin: User, erin_page: Page, asgi_server: AsgiServer, five_buffers: list[Channel]
) -> None:
    with switch(erin):
        channel = five_buffers[1]
        _say(channel, 3, sender="alice", kind="join")
        _say(channel, 4, sender="bob", kind="join")
    page = erin_page
    page.goto(_url(asgi_server.url, channel))
    expect(page.locator("#chat-unread")).to_have_count(1)
    expect(page.locator(".line-run")).to_have_count(1)
    assert _axe(page, "#chat-lines", "#chat-sidebar") == []
    page.keyboard.press("Control+k")
    expect(page.locator("#chat-switcher")).to_be_visible()
    assert _axe(page, "#chat-switcher") == []
    page.keyboard.type("zzz")
    expect(page.locator("#chat-switcher-none")).to_be_visible()
    assert _axe(page, "#chat-switcher") == []
    page.keyboard.press("Escape")
    page.keyboard.press("Alt+Slash")
    expect(page.locator("#chat-keys-help")).to_be_visible()
    assert _axe(page, "#chat-keys-help") == []


@pytest.mark.browser
def test_joins_arriving_live_fold_into_the_run_above(
    erin: User, erin_page: Page, asgi_server: AsgiServer
) -> None:
    from channels_app import events

    server = _server(erin)
    with switch(erin):
        channel = Channel.objects.create(server=server, name="#live")
        _say(channel, 0)
        _say(channel, 1, sender="alice", kind="join")
    page = erin_page
    page.goto(_url(asgi_server.url, channel))
    expect(page.locator("#chat-lines .line-join", has_text="alice")).to_be_visible()
    expect(page.locator(".chat-live-status")).to_have_count(0)

    def arrive(n: int, sender: str, kind: str) -> None:
        with switch(erin):
            said = _say(channel, n, sender=sender, kind=kind)
        event = events.MessageEvent.of(said, server_id=server.pk, highlight=False)
        events.redis_client().publish(
            events.events_channel(erin.account_id), events.encode_event(event)
        )

    arrive(2, "bob", "join")
    run = page.locator("#chat-lines .line-run")
    expect(run).to_have_count(1)
    expect(run.locator(".run-summary")).to_have_text("alice, bob joined")
    expect(page.locator("#chat-lines .in-run")).to_have_count(2)
    # Opened, then a quit arrives: the run grows and stays open.
    run.locator(".run-toggle").click()
    arrive(3, "carol", "quit")
    expect(run.locator(".run-summary")).to_have_text("alice, bob joined; carol quit")
    expect(page.locator("#chat-lines .in-run")).to_have_count(3)
    expect(page.locator("#chat-lines .in-run").nth(2)).to_be_visible()
    expect(run.locator(".run-toggle")).to_have_attribute("aria-expanded", "true")
    # A message ends the run; the next join starts no run on its own.
    arrive(4, "dave", "message")
    arrive(5, "erin2", "join")
    expect(page.locator("#chat-lines .line-join", has_text="erin2")).to_be_visible()
    expect(page.locator("#chat-lines .line-run")).to_have_count(1)


@pytest.mark.browser
def test_lines_arriving_while_the_tab_is_hidden_get_the_divider(
    erin: User, erin_page: Page, asgi_server: AsgiServer
) -> None:
    from channels_app import events

    server = _server(erin)
    with switch(erin):
        channel = Channel.objects.create(server=server, name="#away")
        _say(channel, 0)
    page = erin_page
    page.goto(_url(asgi_server.url, channel))
    expect(page.locator(".chat-live-status")).to_have_count(0)
    expect(page.locator("#chat-unread")).to_have_count(0)
    # The tab is left (another tab in front).
    page.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    with switch(erin):
        said = [_say(channel, n) for n in (1, 2)]
    for message in said:
        event = events.MessageEvent.of(message, server_id=server.pk, highlight=False)
        events.redis_client().publish(
            events.events_channel(erin.account_id), events.encode_event(event)
        )
    expect(page.locator(f"#m{said[1].pk}")).to_have_count(1)
    expect(page.locator("#chat-unread + li")).to_have_attribute("data-id", str(said[0].pk))
    expect(page.locator("#chat-unread")).to_have_count(1)
