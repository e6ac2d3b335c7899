"""The run page and the usage page in a real browser (Debian's Chromium through Playwright):
the run page follows a running task until it ends, under the strict Content-Security-Policy;
the usage chart draws in the light and the dark theme and fits a phone."""

import re
from datetime import UTC, timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from accounts.models import User
from agents.models import Agent, ModelCall, Task
from channels_app.models import ChannelUser, Message
from tenancy import switch
from tests.factories import PASSWORD, UserFactory
from tests.helpers import populate
from tests.test_agent_pages import make_run
from tests.test_browser import DESKTOP, PHONE, browser, screenshot  # noqa: F401 (a fixture)


def sign_in(page: Page, base: str, user: User) -> None:
    page.goto(base + reverse("accounts:sign_in"))
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base + reverse("dashboard"))


def csp_watch(page: Page) -> list[str]:
    """Every console complaint about the Content-Security-Policy (an inline script or style)."""
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    return violations


@pytest.mark.browser
def test_run_page_follows_a_running_task_until_it_ends(
    live_server: Any,
    clean_schemas: None,
    browser: Browser,  # noqa: F811 (the fixture)
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    run = make_run(alice, status=Task.Status.RUNNING, output="", finished_at=None)
    task = run["task"]
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    violations = csp_watch(page)
    sign_in(page, live_server.url, alice)

    # From the agent's page, its recent task opens the run page.
    page.goto(live_server.url + reverse("agents:agent_detail", args=[run["agent"].pk]))
    page.get_by_role("link", name="what did alice say about the deploy?").click()
    expect(page).to_have_url(live_server.url + reverse("agents:task_detail", args=[task.pk]))
    expect(page.locator(".status-running")).to_have_text("Running")
    expect(page.get_by_text("Not yet.")).to_be_visible()

    # The context is folded; opened, it stays open while the page refreshes the run.
    context_box = page.locator("details.context")
    expect(context_box.get_by_text("You are Helper, in #palaver.")).to_be_hidden()
    context_box.locator("summary").click()
    expect(context_box.get_by_text("You are Helper, in #palaver.")).to_be_visible()
    with page.expect_response(re.compile(rf"/agents/tasks/{task.pk}/$")):
        pass  # at least one refresh went by
    expect(context_box.get_by_text("You are Helper, in #palaver.")).to_be_visible()

    # The run ends: the page shows it without a reload, and stops asking.
    with switch(alice):
        Task.objects.filter(pk=task.pk).update(
            status=Task.Status.SUCCEEDED,
            output="Alice said the deploy is on Friday.",
            finished_at=timezone.now(),
        )
    expect(page.locator(".status-succeeded")).to_have_text("Succeeded", timeout=8_000)
    expect(page.get_by_text("Alice said the deploy is on Friday.")).to_be_visible()
    expect(page.locator("#task-run")).not_to_have_attribute("hx-trigger", re.compile("every"))
    screenshot(page, "run-page.png")
    page.set_viewport_size(PHONE)
    page.reload()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the run page overflows a phone: {width}px wide"
    assert violations == []
    context.close()


@pytest.mark.browser
def test_usage_chart_in_light_and_dark_and_on_a_phone(
    live_server: Any,
    clean_schemas: None,
    browser: Browser,  # noqa: F811 (the fixture)
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    run = make_run(alice)
    account = alice.account
    account.monthly_token_budget = 100_000
    account.save(update_fields=["monthly_token_budget"])
    now = timezone.now().astimezone(UTC)
    with switch(alice):
        scribe = Agent.objects.create(
            name="Scribe", nick="scribe", account_llm=run["provider"], model="gpt-4o-mini"
        )
        for days, agent, tokens in ((0, scribe, 800), (2, run["agent"], 3000), (2, scribe, 500)):
            call = ModelCall.objects.create(
                agent=agent,
                agent_name=agent.name,
                provider="OpenAI",
                model="gpt-4o-mini",
                input_tokens=tokens,
                outcome=ModelCall.Outcome.OK,
            )
            ModelCall.objects.filter(pk=call.pk).update(created_at=now - timedelta(days=days))

    fills: dict[str, list[str]] = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport=DESKTOP, color_scheme=scheme)
        context.set_default_timeout(10_000)
        page = context.new_page()
        violations = csp_watch(page)
        sign_in(page, live_server.url, alice)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()
        page.get_by_role("navigation", name="Agents").get_by_role("link", name="Usage").click()
        expect(page).to_have_url(live_server.url + reverse("agents:usage"))
        chart = page.get_by_role("img", name=re.compile("Tokens per day"))
        expect(chart).to_be_visible()
        expect(chart.locator("rect")).to_have_count(4)
        legend = page.get_by_role("list", name="Agents")
        expect(legend.locator("li")).to_have_text(["Helper", "Scribe"])
        # Each series has its colour, the same in the legend as in the bars, and one that is
        # not the page's background.
        colours = page.evaluate(
            """() => {
              const fill = (el) => getComputedStyle(el).fill;
              const bg = getComputedStyle(document.body).backgroundColor;
              const swatches = [...document.querySelectorAll('.legend .swatch')]
                .map((s) => getComputedStyle(s).backgroundColor);
              const rects = [...document.querySelectorAll('.usage-chart rect')].map(fill);
              return {swatches, rects, bg};
            }"""
        )
        assert len(set(colours["swatches"])) == 2
        assert set(colours["rects"]) == set(colours["swatches"])
        assert colours["bg"] not in colours["swatches"]
        fills[scheme] = colours["swatches"]
        # The month against the budget, and the numbers as a table.
        expect(page.locator("meter").first).to_have_attribute("max", "100000")
        page.get_by_text("The chart as a table").click()
        expect(page.locator(".usage-table tbody tr")).to_have_count(30)
        screenshot(page, f"usage-{scheme}.png")
        page.set_viewport_size(PHONE)
        page.reload()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the usage page overflows a phone: {width}px wide"
        assert violations == []
        context.close()
    # The dark theme has colours of its own (lighter, readable on a dark background).
    assert fills["light"] != fills["dark"]


@pytest.mark.browser
def test_chat_marks_agents_in_the_nick_list_and_the_lines(
    live_server: Any,
    clean_schemas: None,
    browser: Browser,  # noqa: F811 (the fixture)
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    run = make_run(alice)
    with switch(alice):
        channel = run["channel"]
        for nick, prefixes in (("alice", "@"), ("helperbot", "+"), ("carol", "")):
            ChannelUser.objects.create(channel=channel, nick=nick, prefixes=prefixes)
        now = timezone.now()
        Message.objects.create(
            channel=channel, sender="helperbot", text="Deploy is on Friday.", server_time=now
        )
        Message.objects.create(
            channel=channel,
            sender="alice",
            text="Reminder set.",
            server_time=now + timedelta(seconds=1),
            tags={"palaver/agent": "helperbot"},
        )
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    violations = csp_watch(page)
    sign_in(page, live_server.url, alice)
    # The live stream is tests/test_sse*.py's business; held open, it would keep the test
    # server's thread busy after the test.
    page.route(re.compile(re.escape(reverse("chat:events"))), lambda route: route.abort())
    page.goto(live_server.url + reverse("chat:channel", args=[channel.pk]))
    members = page.locator("#chat-member-list")
    expect(members.locator("li[data-nick='helperbot'] .agent-badge")).to_be_visible()
    expect(members.locator(".agent-badge")).to_have_count(1)
    # What a screen reader reads for the member: the nick, then that it is an agent.
    expect(members.locator("li[data-nick='helperbot']")).to_have_text(
        re.compile(r"\+helperbot, an agent")
    )
    lines = page.locator("#chat-lines .line-agent")
    expect(lines).to_have_count(2)
    expect(lines.nth(1)).to_contain_text("agent helperbot")
    screenshot(page, "chat-agents.png")
    assert violations == []
    context.close()


@pytest.mark.browser
def test_agent_form_groups_its_fields_and_says_a_taken_nick(
    live_server: Any,
    clean_schemas: None,
    browser: Browser,  # noqa: F811 (the fixture)
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    populate(alice)  # an agent Helper, nick helperbot
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    violations = csp_watch(page)
    sign_in(page, live_server.url, alice)
    page.goto(live_server.url + reverse("agents:agent_create"))
    limits = page.get_by_role("group", name="Limits")
    expect(limits.get_by_label("Most lines per reply")).to_have_value("4")
    page.get_by_label("Name", exact=True).fill("Scribe")
    page.get_by_label("IRC nick").fill("HELPERBOT")
    page.get_by_label("LLM provider").select_option(index=1)
    page.get_by_label("Model", exact=True).fill("gpt-4o-mini")
    page.get_by_role("group", name="Where it sits").get_by_label(
        "Through your connection", exact=False
    ).check()
    limits.get_by_label("Most lines per reply").fill("2")
    page.get_by_role("group", name="Budget").get_by_label("Monthly token budget").fill("5000")
    page.get_by_role("button", name="Create agent").click()
    nick_field = page.locator(".field.has-error", has=page.get_by_label("IRC nick"))
    expect(nick_field.get_by_role("alert")).to_have_text(
        "Another agent of yours already uses this nick (in any case)."
    )
    expect(page.locator(".field.has-error")).to_have_count(1)
    screenshot(page, "agent-form.png")
    page.get_by_label("IRC nick").fill("scribe")
    page.get_by_role("button", name="Create agent").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Scribe")
    expect(page.locator(".facts")).to_contain_text(["Through your connection"])
    expect(page.get_by_text("At most 2 lines")).to_be_visible()
    expect(page.get_by_text("0 of 5,000 tokens (0%)")).to_be_visible()
    assert violations == []
    context.close()
