"""The agents' pages (issue 8, items 1, 6, 7, 8): the run page, the usage page and its budgets,
the agent form's new fields, the rejected-key mark, and agents marked in the chat."""

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django import forms
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, User
from agents import usage
from agents.forms import AgentForm
from agents.models import Agent, ModelCall, Task, ToolCall
from agents.runs import Timing
from agents.selectors import month_start
from channels_app.models import Channel, ChannelUser, Message, Server
from llms.models import AccountLLM
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import PASSWORD, UserFactory
from tests.helpers import make_provider, populate

# --- the run page --------------------------------------------------------------------------------


def make_run(user: User, **overrides: Any) -> dict[str, Any]:
    """A finished run with everything the run page shows: a source line, a context, a model
    call asking for a tool, the tool call, a second model call answering."""
    objs = populate(user)
    queued = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)
    with switch(user):
        source = Message.objects.create(
            channel=objs["channel"],
            sender="carol",
            text="helperbot: what did alice say about the deploy?",
            server_time=queued - timedelta(seconds=1),
        )
        fields: dict[str, Any] = {
            "agent": objs["agent"],
            "status": Task.Status.SUCCEEDED,
            "trigger": Task.Trigger.MENTION,
            "channel": objs["channel"],
            "server": objs["server"],
            "requested_by": "carol",
            "source_message_id": source.pk,
            "input": "what did alice say about the deploy?",
            "context": [
                {"role": "system", "content": "You are Helper, in #palaver."},
                {"role": "user", "content": "carol: what did alice say about the deploy?"},
            ],
            "output": "Alice said the deploy is on Friday.",
            "reply_lines_sent": 1,
            "prompt_tokens": 1234,
            "completion_tokens": 56,
            "started_at": queued + timedelta(milliseconds=40),
            "first_line_at": queued + timedelta(milliseconds=1540),
            "finished_at": queued + timedelta(milliseconds=2100),
        }
        fields.update(overrides)
        task = Task.objects.create(**fields)
        Task.objects.filter(pk=task.pk).update(created_at=queued)
        task.refresh_from_db()
        first = ModelCall.objects.create(
            task=task,
            agent=objs["agent"],
            agent_name="Helper",
            step=1,
            provider="OpenAI",
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=20,
            latency_ms=700,
            first_token_ms=310,
            outcome=ModelCall.Outcome.OK,
        )
        tool = ToolCall.objects.create(
            task=task,
            step=1,
            call_id="call_1",
            tool="search_history",
            arguments={"query": "deploy", "channel": "#palaver"},
            result="[alice] deploy is on Friday",
            ok=True,
            started_at=queued + timedelta(milliseconds=800),
            duration_ms=12,
        )
        second = ModelCall.objects.create(
            task=task,
            agent=objs["agent"],
            agent_name="Helper",
            step=2,
            provider="OpenAI",
            model="gpt-4o-mini",
            input_tokens=234,
            output_tokens=36,
            latency_ms=650,
            first_token_ms=None,
            outcome=ModelCall.Outcome.OK,
        )
    return {**objs, "task": task, "source": source, "calls": [first, second], "tool": tool}


def test_run_page_shows_every_part_of_the_run(alice: User, alice_client: Client) -> None:
    run = make_run(alice)
    response = alice_client.get(reverse("agents:task_detail", args=[run["task"].pk]))
    assert response.status_code == 200
    page = response.content.decode()
    # The trigger: its kind, who asked, where, the source line.
    assert "Addressed in a channel" in page
    assert "carol" in page
    assert "#palaver" in page and "Libera" in page
    assert "helperbot: what did alice say about the deploy?" in page
    assert f"?around={run['source'].pk}" in page
    # The context, collapsible.
    assert "<details" in page
    assert "You are Helper, in #palaver." in page
    # Steps in order: model call, the tool it asked for, the answering model call.
    first = page.index("first token after 310 ms")
    tool = page.index("search_history")
    second = page.index("650 ms")
    assert first < tool < second
    assert "1,000 in · 20 out" in page
    assert "234 in · 36 out" in page
    # Arguments as pretty JSON, the result, ok and duration.
    assert (
        "&quot;channel&quot;: &quot;#palaver&quot;,\n  &quot;query&quot;: &quot;deploy&quot;"
        in page
    )
    assert "[alice] deploy is on Friday" in page
    assert "12 ms" in page
    # The answer, tokens and timings.
    assert "Alice said the deploy is on Friday." in page
    assert "1,290" in page  # 1234 + 56
    for after in ("40 ms", "1.54 s", "2.10 s"):
        assert after in page
    # Finished: the page no longer asks for itself.
    assert "hx-trigger" not in page.split('id="task-run"')[1].split(">")[0]
    assert "<script>" not in page


def test_run_page_of_a_failed_run_says_why_in_one_line(alice: User, alice_client: Client) -> None:
    run = make_run(
        alice,
        status=Task.Status.FAILED,
        output="",
        error="The provider rejected the API key\n(401).",
        finished_at=None,
    )
    page = alice_client.get(reverse("agents:task_detail", args=[run["task"].pk])).content.decode()
    assert "The provider rejected the API key (401)." in page
    assert "Failed" in page


def test_run_page_follows_a_running_task(alice: User, alice_client: Client) -> None:
    run = make_run(alice, status=Task.Status.RUNNING, output="", finished_at=None)
    url = reverse("agents:task_detail", args=[run["task"].pk])
    page = alice_client.get(url).content.decode()
    head = page.split('id="task-run"')[1].split(">")[0]
    assert f'hx-get="{url}"' in head
    assert 'hx-trigger="every 2s"' in head
    # htmx's request gets the run alone, to swap in.
    fragment = alice_client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<div id="task-run"')
    assert "<html" not in fragment
    with switch(alice):
        Task.objects.filter(pk=run["task"].pk).update(status=Task.Status.SUCCEEDED)
    fragment = alice_client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "hx-trigger" not in fragment.split(">")[0]


def test_run_page_is_404_for_another_account(alice: User, bob: User) -> None:
    run = make_run(alice)
    url = reverse("agents:task_detail", args=[run["task"].pk])
    assert signed_in_client(bob).get(url).status_code == 404
    assert signed_in_client(alice).get(url).status_code == 200


def test_agent_page_links_its_recent_tasks_to_their_run_pages(
    alice: User, alice_client: Client
) -> None:
    run = make_run(alice)
    with switch(alice):
        Agent.objects.filter(pk=run["agent"].pk).update(monthly_token_budget=10_000)
    page = alice_client.get(reverse("agents:agent_detail", args=[run["agent"].pk])).content.decode()
    assert reverse("agents:task_detail", args=[run["task"].pk]) in page
    assert "Its own connection" in page
    assert "At most 4 lines" in page
    assert "10 seconds per channel" in page
    # This month's tokens (the run's two model calls) against the agent's budget.
    assert "1,290 of 10,000 tokens (13%)" in page


# --- the usage page ------------------------------------------------------------------------------


def _call(
    agent: Agent | None, name: str, at: datetime, tokens_in: int, tokens_out: int, **kw: Any
) -> None:
    call = ModelCall.objects.create(
        agent=agent,
        agent_name=name,
        provider="OpenAI",
        model="gpt-4o-mini",
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        outcome=kw.pop("outcome", ModelCall.Outcome.OK),
        **kw,
    )
    ModelCall.objects.filter(pk=call.pk).update(created_at=at)


def test_usage_sums_tokens_per_day_per_agent(alice: User, alice_client: Client) -> None:
    objs = populate(alice)
    today = timezone.now().astimezone(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    with switch(alice):
        helper = objs["agent"]
        scribe = Agent.objects.create(
            name="Scribe", nick="scribe", account_llm=objs["provider"], model="gpt-4o-mini"
        )
        _call(helper, "Helper", today, 100, 20)
        _call(helper, "Helper", today - timedelta(hours=1), 1000, 200)
        _call(scribe, "Scribe", today, 5, 5)
        _call(helper, "Helper", today - timedelta(days=3), 300, 0)
        _call(scribe, "Scribe", today - timedelta(days=3), 40, 2)
        # Outside the 30 days: not in the chart.
        _call(helper, "Helper", today - timedelta(days=31), 999_999, 0)

        with CaptureQueriesContext(connection) as queries:
            rows = usage.daily_tokens()
        # One GROUP BY (day, agent) in the database, not a loop over rows.
        assert len(queries.captured_queries) == 1
        assert "GROUP BY" in queries.captured_queries[0]["sql"]
        totals = {(r.day, r.agent_id): r.tokens for r in rows}
    day0, day3 = today.date(), (today - timedelta(days=3)).date()
    assert totals == {
        (day0, helper.pk): 1320,
        (day0, scribe.pk): 10,
        (day3, helper.pk): 300,
        (day3, scribe.pk): 42,
    }

    response = alice_client.get(reverse("agents:usage"))
    assert response.status_code == 200
    chart = response.context["chart"]
    assert [s.name for s in chart.series] == ["Helper", "Scribe"]
    table = {day: (values, total) for day, values, total in chart.table_rows()}
    assert len(table) == 30
    assert table[day0] == ([("Helper", 1320), ("Scribe", 10)], 1330)
    assert table[day3] == ([("Helper", 300), ("Scribe", 42)], 342)
    assert chart.total == 1330 + 342
    # Stacked: the two segments of today sit on each other, scaled to the axis' top (2000).
    today_column = next(c for c in chart.columns if c.day == day0)
    helper_seg, scribe_seg = today_column.segments
    assert helper_seg.y + helper_seg.height == pytest.approx(chart.plot_bottom, abs=0.02)
    assert scribe_seg.y + scribe_seg.height == pytest.approx(helper_seg.y, abs=0.02)
    assert [t.value for t in chart.ticks] == [0, 500, 1000, 1500, 2000]
    page = response.content.decode()
    assert 'role="img"' in page and "<desc" in page
    assert "1,320" in page and "1,330" in page and "342" in page
    assert "999,999" not in page


def test_usage_page_shows_the_month_against_the_budgets(alice: User, alice_client: Client) -> None:
    objs = populate(alice)
    account = alice.account
    account.monthly_token_budget = 10_000
    account.save(update_fields=["monthly_token_budget"])
    start = month_start()
    with switch(alice):
        helper = objs["agent"]
        helper.monthly_token_budget = 1_000
        helper.save(update_fields=["monthly_token_budget"])
        _call(helper, "Helper", start + timedelta(minutes=5), 900, 300)  # over its 1,000
        _call(
            helper,
            "Helper",
            start + timedelta(minutes=6),
            0,
            0,
            outcome="rate_limited",
            error="429 Too Many Requests",
        )
        _call(
            helper,
            "Helper",
            start + timedelta(minutes=7),
            0,
            0,
            outcome="auth",
            error="401 invalid key",
        )
        _call(None, "Old bot", start + timedelta(minutes=8), 500, 0)
        # Last month: not counted.
        _call(helper, "Helper", start - timedelta(minutes=1), 50_000, 0)
    response = alice_client.get(reverse("agents:usage"))
    page = response.content.decode()
    bar = response.context["account_bar"]
    assert (bar.used, bar.budget, bar.percent) == (1700, 10_000, 17)
    assert '<meter min="0" max="10000"' in page
    assert "1,700 of 10,000 tokens (17%)" in page
    agents = {a.name: a for a in response.context["agents"]}
    assert agents["Helper"].tokens == 1200 and agents["Helper"].bar.reached
    assert "1,200 of 1,000 tokens (100%)" in page and "Budget reached" in page
    assert agents["Old bot (deleted)"].tokens == 500
    outcomes = {o.outcome: o.calls for o in response.context["outcomes"]}
    assert outcomes == {"ok": 2, "rate_limited": 1, "auth": 1}
    assert "Rate limited" in page and "Key rejected" in page
    assert "429 Too Many Requests" in page


def test_usage_page_without_budget_or_calls(
    alice: User, alice_client: Client, settings: Any
) -> None:
    settings.AGENT_MONTHLY_TOKEN_BUDGET = 0
    response = alice_client.get(reverse("agents:usage"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "no monthly token limit" in page
    assert "No model calls in the last 30 days." in page
    assert "<meter" not in page


def test_usage_page_is_per_account(alice: User, bob: User) -> None:
    objs = populate(alice)
    with switch(alice):
        _call(objs["agent"], "Helper", timezone.now(), 4242, 0)
    page = signed_in_client(bob).get(reverse("agents:usage")).content.decode()
    assert "4,242" not in page and "Helper" not in page
    assert "4,242" in signed_in_client(alice).get(reverse("agents:usage")).content.decode()


def test_agents_area_links_to_usage(alice: User, alice_client: Client) -> None:
    page = alice_client.get(reverse("agents:agent_list")).content.decode()
    assert f'href="{reverse("agents:usage")}"' in page


# --- budgets: the operator and the account admin ---------------------------------------------


def test_operator_sets_an_account_budget_in_the_admin(alice: User) -> None:
    UserFactory(email="ops@example.org", is_staff=True, is_superuser=True)
    client = Client()
    assert client.login(username="ops@example.org", password=PASSWORD)
    account = alice.account
    url = reverse("admin:accounts_account_change", args=[account.pk])
    assert "monthly_token_budget" in client.get(url).content.decode()
    response = client.post(
        url, {"name": account.name, "settings": "{}", "monthly_token_budget": "250000"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert account.monthly_token_budget == 250_000
    listing = client.get(reverse("admin:accounts_account_changelist")).content.decode()
    assert "250000" in listing or "250,000" in listing


def test_operator_creates_an_account_with_a_budget(db: None) -> None:
    UserFactory(email="ops@example.org", is_staff=True, is_superuser=True)
    client = Client()
    assert client.login(username="ops@example.org", password=PASSWORD)
    response = client.post(
        reverse("admin:accounts_account_add"),
        {"name": "Made by ops", "settings": "{}", "monthly_token_budget": "1000"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Account.objects.get(name="Made by ops").monthly_token_budget == 1000


def agent_data(provider: AccountLLM, **overrides: Any) -> dict[str, Any]:
    data = {
        "name": "Helper",
        "nick": "helperbot",
        "enabled": "on",
        "account_llm": provider.pk,
        "model": "gpt-4o-mini",
        "presence": "user",
        "answer_anywhere": "on",
        "reply_max_lines": "6",
        "cooldown_seconds": "30",
        "max_steps": "3",
        "context_tokens": "4000",
        "monthly_token_budget": "50000",
    }
    data.update(overrides)
    return data


def test_agent_form_saves_the_new_fields(alice: User, alice_client: Client) -> None:
    provider = make_provider(alice)
    page = alice_client.get(reverse("agents:agent_create")).content.decode()
    for legend in ("Who it is", "Where it sits", "Limits", "Budget"):
        assert f"<legend>{legend}</legend>" in page
    response = alice_client.post(reverse("agents:agent_create"), agent_data(provider))
    assert response.status_code == 302
    with switch(alice):
        agent = Agent.objects.get()
    assert agent.presence == Agent.Presence.USER_CONNECTION
    assert agent.answer_anywhere
    assert (agent.reply_max_lines, agent.cooldown_seconds, agent.max_steps) == (6, 30, 3)
    assert (agent.context_tokens, agent.monthly_token_budget) == (4000, 50_000)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reply_max_lines", "0", "greater than or equal to 1"),
        ("reply_max_lines", "21", "less than or equal to 20"),
        ("cooldown_seconds", "3601", "less than or equal to 3600"),
        ("max_steps", "", "required"),
        ("presence", "carrier-pigeon", "Select a valid choice"),
    ],
)
def test_agent_form_field_errors(
    alice: User, alice_client: Client, field: str, value: str, message: str
) -> None:
    provider = make_provider(alice)
    response = alice_client.post(
        reverse("agents:agent_create"), agent_data(provider, **{field: value})
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert message in errors[field][0]


def test_agent_nick_taken_in_another_case_is_a_field_error(
    alice: User, alice_client: Client
) -> None:
    objs = populate(alice)  # Helper, helperbot
    response = alice_client.post(
        reverse("agents:agent_create"),
        agent_data(objs["provider"], name="Other", nick="HelperBot"),
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert "already uses this nick" in errors["nick"][0]
    assert "__all__" not in errors  # not the model's generic constraint message as well
    response = alice_client.post(
        reverse("agents:agent_create"), agent_data(objs["provider"], name="HELPER", nick="other")
    )
    assert "already has this name" in response.context["form"].errors["name"][0]


def test_a_race_on_the_nick_is_a_field_error_not_a_500(alice: User) -> None:
    """Two saves pass the form's check at once: the database's constraint decides, and the
    loser gets the same message on the nick field."""
    from django.db import IntegrityError, transaction

    objs = populate(alice)
    with switch(alice):
        form = AgentForm(
            agent_data(objs["provider"], name="Other", nick="HELPERBOT2"),
            instance=Agent(),
            account=alice.account,
        )
        assert form.is_valid(), form.errors
        Agent.objects.create(
            name="Sneaky", nick="helperbot2", account_llm=objs["provider"], model="gpt-4o-mini"
        )
        with pytest.raises(IntegrityError) as caught, transaction.atomic():
            form.save()
    assert AgentForm.field_for_violation(caught.value) == "nick"


def test_the_agent_page_answers_a_lost_race_with_the_field_error(
    alice: User, alice_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks in Python pass (the other row is not committed yet, as in a concurrent
    save), the database refuses: the page says so on the nick field, with a 400."""
    objs = populate(alice)
    monkeypatch.setattr(AgentForm, "clean", forms.ModelForm.clean)
    monkeypatch.setattr(Agent, "validate_constraints", lambda self, exclude=None: None)
    response = alice_client.post(
        reverse("agents:agent_create"),
        agent_data(objs["provider"], name="Other", nick="HELPERBOT"),
    )
    assert response.status_code == 400
    assert "already uses this nick" in response.context["form"].errors["nick"][0]
    with switch(alice):
        assert Agent.objects.count() == 1


def test_only_account_admins_change_an_agent_budget(alice: User) -> None:
    objs = populate(alice)
    member = User(account=alice.account, email="member@example.org", is_account_admin=False)
    member.set_password(PASSWORD)
    member.save()
    client = signed_in_client(member)
    url = reverse("agents:agent_edit", args=[objs["agent"].pk])
    page = client.get(url).content.decode()
    assert re.search(r'name="monthly_token_budget"[^>]*disabled', page)
    response = client.post(url, agent_data(objs["provider"], monthly_token_budget="999999"))
    assert response.status_code == 302
    with switch(alice):
        agent = Agent.objects.get()
    assert agent.monthly_token_budget is None  # unchanged
    assert agent.reply_max_lines == 6  # the rest saved
    response = signed_in_client(alice).post(
        url, agent_data(objs["provider"], monthly_token_budget="777")
    )
    assert response.status_code == 302
    with switch(alice):
        assert Agent.objects.get().monthly_token_budget == 777


# --- the providers page ------------------------------------------------------------------------


def test_providers_page_marks_a_rejected_key(alice: User, alice_client: Client) -> None:
    provider = make_provider(alice)
    page = alice_client.get(reverse("llms:provider_list")).content.decode()
    assert "Key rejected" not in page
    AccountLLM.objects.filter(pk=provider.pk).update(
        key_rejected_at=datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    )
    page = alice_client.get(reverse("llms:provider_list")).content.decode()
    assert "Key rejected on 27 November 2026" in page
    assert "enter a new key" in page
    assert reverse("llms:provider_edit", args=[provider.pk]) in page


# --- agents in the chat -------------------------------------------------------------------------


def test_nick_list_and_lines_mark_agents(alice: User, alice_client: Client) -> None:
    objs = populate(alice)  # the agent helperbot, enabled
    now = timezone.now()
    with switch(alice):
        channel: Channel = objs["channel"]
        Agent.objects.create(
            name="Sleeper",
            nick="sleeper",
            enabled=False,
            account_llm=objs["provider"],
            model="gpt-4o-mini",
        )
        for nick in ("alice", "HelperBot", "carol", "sleeper"):
            ChannelUser.objects.create(channel=channel, nick=nick)
        said = Message.objects.create(
            channel=channel, sender="HelperBot", text="Friday.", server_time=now
        )
        through = Message.objects.create(
            channel=channel,
            sender="alice",
            text="Deploy is Friday.",
            server_time=now + timedelta(seconds=1),
            tags={"palaver/agent": "helperbot"},
        )
        plain = Message.objects.create(
            channel=channel, sender="carol", text="thanks", server_time=now + timedelta(seconds=2)
        )
    page = alice_client.get(reverse("chat:channel", args=[channel.pk])).content.decode()
    members = re.findall(r'<li class="member[^"]*" data-nick="([^"]+)"[^>]*>(.*?)</li>', page)
    marked = {nick for nick, html in members if "agent-badge" in html}
    assert {nick for nick, _ in members} == {"alice", "HelperBot", "carol", "sleeper"}
    assert marked == {"HelperBot"}  # a disabled agent is not marked
    assert "an </span>agent" in page  # the badge's text for screen readers

    def line(message: Message, html: str) -> str:
        match = re.search(rf'<li class="[^"]*" id="m{message.pk}".*?</li>', html, re.S)
        assert match, message
        return match.group(0)

    assert "agent-badge" in line(said, page) and "line-agent" in line(said, page)
    assert "agent helperbot" in line(through, page)
    assert "agent-badge" not in line(plain, page)
    # Live lines are the same fragment, fetched after the stream says they arrived.
    fragment = alice_client.get(
        reverse("chat:lines", args=[channel.pk]) + f"?after={said.pk - 1}"
    ).content.decode()
    assert "agent-badge" in line(said, fragment)
    assert "agent-badge" not in line(plain, fragment)
    # The member list fragment, re-fetched when members change.
    info = alice_client.get(reverse("chat:info", args=[channel.pk])).content.decode()
    assert 'data-nick="HelperBot"><span class="prefix"></span><span class="nick' in info
    assert "agent-badge" in info


def test_agent_of_another_account_is_not_marked(alice: User, bob: User) -> None:
    populate(alice)  # alice's agent helperbot
    with switch(bob):
        server = Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
        channel = Channel.objects.create(server=server, name="#bob")
        ChannelUser.objects.create(channel=channel, nick="helperbot")
        Message.objects.create(
            channel=channel, sender="helperbot", text="hi", server_time=timezone.now()
        )
    page = signed_in_client(bob).get(reverse("chat:channel", args=[channel.pk])).content.decode()
    assert "agent-badge" not in page


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (0, "0 ms"),
        (999, "999 ms"),
        (1540, "1.54 s"),
        (185_000, "3 min 5 s"),
        (7_800_000, "2 h 10 min"),
    ],
)
def test_timings_read_as_people_read_them(ms: int, shown: str) -> None:
    assert Timing("Finished", None, ms).after == shown
