"""Issue 11's server items in a real browser against a real InspIRCd and the real gateway: the
nick menu (an operator sees kick and ban, a non-operator does not), /whois shown readably, /list
typed in the chat opening a searchable list whose Join button joins, and the server page's
connection state following the connection live."""

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from accounts.models import User
from channels_app.models import Channel, Server
from tenancy import switch
from tests.gateway_support import wait_until
from tests.ircd import BotFactory, InspIRCd, IrcBot, unique_channel
from tests.test_browser import DESKTOP, PHONE, browser, screenshot, sign_up  # noqa: F401
from tests.test_chat_e2e import (  # noqa: F401 (fixtures)
    AsgiServer,
    alice,
    alice_in_a_channel,
    asgi_server,
    chromium,
    on_irc,
    send_line,
)


@pytest.fixture
def inspircd(inspircd_factory: Callable[..., InspIRCd]) -> InspIRCd:
    """InspIRCd with SAMODE: its test configuration makes no one operator of a channel they
    create, so a bot, as IRC operator, makes alice_p one."""
    return inspircd_factory(extra_config='<module name="samode">\n')


def make_op(bot: IrcBot, channel: str, nick: str) -> None:
    bot.send_raw("OPER admin admin")
    bot.wait_for(r" 381 ")
    bot.send_raw(f"SAMODE {channel} +o {nick}")
    bot.wait_for(rf"MODE {re.escape(channel)} \+o :?{nick}")


def _menu_for(page: Page, nick: str) -> Any:
    page.locator(f'#chat-member-list [data-nick="{nick}"] .nick').click()
    menu = page.get_by_role("menu", name=f"Actions for {nick}")
    expect(menu).to_be_visible()
    return menu


@pytest.mark.browser
def test_nick_menu_and_whois(
    alice: User,  # noqa: F811
    alice_in_a_channel: tuple[str, int, Page],  # noqa: F811
    asgi_server: AsgiServer,  # noqa: F811
    inspircd: InspIRCd,
    irc_bot: BotFactory,
) -> None:
    channel, channel_id, page = alice_in_a_channel
    carol, dana = irc_bot.many(inspircd, ["carol", "dana"])
    carol.join(channel)
    dana.join(channel)
    wait_until(lambda: on_irc(alice, channel_id, "dana"), what="dana's join stored")
    make_op(dana, channel, "alice_p")
    page.goto(asgi_server.url + reverse("chat:channel", args=[channel_id]))
    members = page.locator("#chat-member-list")
    # Dana made her operator.
    expect(members.locator('[data-nick="alice_p"] .prefix')).to_have_text("@")

    # --- /whois from the menu: one readable block in this buffer ---
    menu = _menu_for(page, "carol")
    expect(menu.get_by_role("menuitem")).to_have_text(
        ["Open a conversation", "Who is this? (whois)", "Make operator (op)", "Give voice",
         "Kick", "Ban"]
    )  # fmt: skip
    expect(menu.get_by_role("menuitem").first).to_be_focused()
    screenshot(page, "nick-menu-desktop.png")
    menu.get_by_role("menuitem", name="Who is this? (whois)").click()
    expect(menu).to_be_hidden()
    block = page.locator("#chat-lines .line-system")
    userhost = re.compile(r"carol is ~?carol@\S+ \(Palaver test bot\)")
    expect(block.filter(has_text=userhost)).to_have_count(1)
    in_channel = re.compile(r"carol is in .*" + re.escape(channel))
    expect(block.filter(has_text=in_channel)).to_have_count(1)
    expect(block.filter(has_text="carol is connected to")).to_have_count(1)
    expect(block.filter(has_text="carol has been idle")).to_have_count(1)

    # --- keyboard: a member's nick opens the menu; Escape gives focus back ---
    nick = members.locator('[data-nick="dana"] .nick')
    nick.focus()
    page.keyboard.press("Enter")
    menu = page.get_by_role("menu", name="Actions for dana")
    expect(menu).to_be_visible()
    page.keyboard.press("ArrowDown")
    expect(menu.get_by_role("menuitem").nth(1)).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_have_count(0)
    expect(nick).to_be_focused()

    # --- op actions reach IRC: voice, then kick ---
    mark = carol.mark()
    _menu_for(page, "carol").get_by_role("menuitem", name="Give voice").click()
    carol.wait_for(rf":alice_p!\S+ MODE {re.escape(channel)} \+v :?carol", since=mark)
    expect(members.locator('[data-nick="carol"] .prefix')).to_have_text("+")
    devoice = _menu_for(page, "carol").get_by_role("menuitem", name="Take voice (devoice)")
    expect(devoice).to_be_visible()
    page.keyboard.press("Escape")
    _menu_for(page, "carol").get_by_role("menuitem", name="Kick").click()
    carol.wait_for(rf":alice_p!\S+ KICK {re.escape(channel)} carol", since=mark)
    expect(members.locator('[data-nick="carol"]')).to_have_count(0)

    # --- no longer an operator: only what anyone may do ---
    send_line(page, "/mode -o alice_p")
    expect(members.locator('[data-nick="alice_p"] .prefix')).to_have_text("")
    menu = _menu_for(page, "dana")
    expect(menu.get_by_role("menuitem")).to_have_text(
        ["Open a conversation", "Who is this? (whois)"]
    )
    # --- Query opens the conversation ---
    menu.get_by_role("menuitem", name="Open a conversation").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("dana")


@pytest.mark.browser
def test_list_typed_in_the_chat_opens_a_searchable_list_that_joins(
    alice: User,  # noqa: F811
    alice_in_a_channel: tuple[str, int, Page],  # noqa: F811
    asgi_server: AsgiServer,  # noqa: F811
    inspircd: InspIRCd,
    irc_bot: BotFactory,
) -> None:
    _, channel_id, page = alice_in_a_channel
    carol = irc_bot(inspircd, "carol")
    python, rust = unique_channel("#py"), unique_channel("#rs")
    carol.send_raw("OPER admin admin")
    carol.wait_for(r" 381 ")
    for name, topic in ((python, "All about snakes and python"), (rust, "Crabs")):
        carol.join(name)
        carol.send_raw(f"SAMODE {name} -t")
        carol.send_raw(f"TOPIC {name} :{topic}")
        carol.wait_for(rf"TOPIC {re.escape(name)} :")
    page.goto(asgi_server.url + reverse("chat:channel", args=[channel_id]))
    page.locator("#chat-text").fill("/list")
    page.locator("#chat-text").press("Enter")
    with switch(alice):
        server_id = Server.objects.get().pk
    expect(page).to_have_url(
        asgi_server.url + reverse("channels:channel_list", args=[server_id]) + "?fetch=1"
    )
    results = page.locator("#list-results")
    expect(results.get_by_role("row", name=re.compile(re.escape(python)))).to_be_visible(
        timeout=15_000
    )
    expect(results).to_contain_text("All about snakes and python")
    expect(results.get_by_role("row", name=re.compile(re.escape(rust)))).to_be_visible()
    screenshot(page, "servers-list-desktop.png")
    page.set_viewport_size(PHONE)
    screenshot(page, "servers-list-phone.png")
    page.set_viewport_size(DESKTOP)

    page.get_by_label("Search names and topics").fill("SNAKES")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(results.get_by_role("row", name=re.compile(re.escape(rust)))).to_have_count(0)
    row = results.get_by_role("row", name=re.compile(re.escape(python)))
    expect(row.get_by_role("cell").nth(1)).to_have_text("1")  # carol alone
    row.get_by_role("button", name=f"Join {python}").click()

    expect(page.get_by_role("heading", level=1)).to_contain_text(python)
    with switch(alice):
        joined = Channel.objects.get(name=python)
    assert joined.autojoin
    wait_until(lambda: on_irc(alice, joined.pk, "alice_p"), what="alice_p joined from the list")
    carol.wait_for(rf":alice_p!\S+ JOIN :?{re.escape(python)}", since=0)


@pytest.mark.browser
def test_the_server_page_follows_the_connection_live(
    alice: User,  # noqa: F811
    alice_in_a_channel: tuple[str, int, Page],  # noqa: F811
    asgi_server: AsgiServer,  # noqa: F811
    inspircd: InspIRCd,
    settings: Any,
) -> None:
    settings.GATEWAY_RECONNECT_FIRST_SECONDS = 0.5
    settings.GATEWAY_RECONNECT_MAX_SECONDS = 1.0
    _, _, page = alice_in_a_channel
    with switch(alice):
        server_id = Server.objects.get().pk
    page.goto(asgi_server.url + reverse("channels:server_detail", args=[server_id]))
    state = page.locator(f"#server-state-{server_id}")
    expect(state).to_have_text("Connected as alice_p")
    expect(page.locator(f"#server-last-error-{server_id}")).to_have_text("None")
    # The channels card lists the channel, never the server buffer.
    expect(page.locator(".rows li")).to_have_count(1)
    page.set_viewport_size(PHONE)
    screenshot(page, "servers-detail-phone.png")
    page.set_viewport_size(DESKTOP)

    inspircd.stop(graceful=False)
    expect(state).to_contain_text(re.compile(r"Error: |Connecting"), timeout=10_000)
    expect(page.locator(f"#server-last-error-{server_id}")).not_to_have_text("None")
    inspircd.start()
    expect(state).to_have_text("Connected as alice_p", timeout=20_000)

    page.goto(asgi_server.url + reverse("channels:server_list"))
    expect(page.locator(f"#server-state-{server_id}")).to_have_text("Connected as alice_p")


@pytest.mark.browser
def test_connect_in_one_step_in_the_browser(
    live_server: Any,
    clean_schemas: None,
    browser: Browser,  # noqa: F811
) -> None:
    base = live_server.url
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    sign_up(page, base, account_name="Erin's place", email="erin@example.org")
    page.goto(base + reverse("channels:server_create"))
    network = page.get_by_label("Network")
    expect(network).to_have_value("libera")
    # A preset hides the address; TLS is on; Custom shows them.
    for label in ("Host", "Port"):
        expect(page.get_by_label(label, exact=True)).to_be_hidden()
    network.select_option("custom")
    expect(page.get_by_label("Host", exact=True)).to_be_visible()
    expect(page.get_by_label("TLS", exact=True)).to_be_checked()
    page.get_by_label("Host", exact=True).fill("irc.example.org")
    network.select_option("oftc")  # the typed address is not sent for a preset
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("placeholder", "OFTC")
    page.get_by_label("Nick", exact=True).fill("erin_p")
    page.get_by_label("Channels to join").fill("#debian #oftc oops")
    screenshot(page, "servers-connect-phone.png")
    page.get_by_role("button", name="Add server").click()
    field = page.locator(".field.has-error", has=page.get_by_label("Channels to join"))
    expect(field.get_by_role("alert")).to_contain_text("“oops” is not a channel name")
    page.get_by_label("Channels to join").fill("#debian #oftc")
    page.get_by_role("button", name="Add server").click()
    expect(page).to_have_url(re.compile(re.escape(base) + r"/servers/\d+/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("OFTC")
    expect(page.locator(".facts")).to_contain_text("irc.oftc.net port 6697")
    expect(page.locator(".facts")).to_contain_text("TLS")
    expect(page.locator(".rows li")).to_have_text([re.compile("#debian"), re.compile("#oftc")])
    expect(page.locator("[id^=server-state-]")).to_have_text("Not connected")
    context.close()
