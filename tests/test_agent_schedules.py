"""Scheduled tasks (agents.services.schedules): reading times and repeats, the public index kept
in step, the scheduler's tick (one claim over every account, never entering a schema), firing,
the Tasks page, and a schedule firing at its time through a real Celery worker."""

import base64
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from agents.models import Agent, Schedule, Task
from agents.services.schedules import (
    cancel_schedule,
    create_schedule,
    fire_schedule,
    next_run,
    parse_repeat,
    parse_when,
    pause_schedule,
    resume_schedule,
    run_schedule_now,
)
from agents.tasks import DISPATCH_CHUNK, dispatch_due, scheduler_tick
from channels_app.models import Channel, Server
from config.celery import app
from scheduling.models import ScheduleEntry
from scheduling.services import claim_due
from tenancy import switch
from tests.factories import UserFactory
from tests.helpers import make_provider

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)  # a Friday; Paris is UTC+1 until March 29


# --- reading times --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in 10 minutes", datetime(2026, 3, 20, 12, 10, tzinfo=UTC)),
        ("in an hour", datetime(2026, 3, 20, 13, 0, tzinfo=UTC)),
        ("in 2 days", datetime(2026, 3, 22, 12, 0, tzinfo=UTC)),
        ("tomorrow at 9:00", datetime(2026, 3, 21, 8, 0, tzinfo=UTC)),
        ("Tomorrow at 9am", datetime(2026, 3, 21, 8, 0, tzinfo=UTC)),
        ("today at 18:30", datetime(2026, 3, 20, 17, 30, tzinfo=UTC)),
        ("at 9:00", datetime(2026, 3, 21, 8, 0, tzinfo=UTC)),  # passed today: tomorrow's
        ("2026-12-01 09:00", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),  # naive: Paris time
        ("2026-07-01T09:00", datetime(2026, 7, 1, 7, 0, tzinfo=UTC)),  # summer time
        ("2026-12-01T09:00:00+00:00", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
    ],
)
def test_when(text: str, expected: datetime) -> None:
    assert parse_when(text, timezone="Europe/Paris", now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("2026-03-20 10:00", "has already passed"),
        ("today at 9:00", "has already passed"),
        ("yesterday-ish", "cannot read"),
        ("at 25:00", "not a time of day"),
        ("", "Say when"),
    ],
)
def test_when_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_when(text, timezone="Europe/Paris", now=NOW)


def test_an_unknown_time_zone_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a time zone"):
        parse_when("in 10 minutes", timezone="Mars/Olympus", now=NOW)


@pytest.mark.parametrize(
    ("text", "cron", "first"),
    [
        ("every day at 09:00", "0 9 * * *", datetime(2026, 3, 21, 8, 0, tzinfo=UTC)),
        ("Every weekday at 8:30", "30 8 * * 1-5", datetime(2026, 3, 23, 7, 30, tzinfo=UTC)),
        ("every monday at 10:00", "0 10 * * 1", datetime(2026, 3, 23, 9, 0, tzinfo=UTC)),
        ("every sunday at 7pm", "0 19 * * 0", datetime(2026, 3, 22, 18, 0, tzinfo=UTC)),
        ("every hour", "0 * * * *", datetime(2026, 3, 20, 13, 0, tzinfo=UTC)),
        ("every 2 hours", "0 */2 * * *", datetime(2026, 3, 20, 13, 0, tzinfo=UTC)),
        ("every 15 minutes", "*/15 * * * *", datetime(2026, 3, 20, 12, 15, tzinfo=UTC)),
        ("every 5 minutes", "*/5 * * * *", datetime(2026, 3, 20, 12, 5, tzinfo=UTC)),
        ("30 6 * * 1-5", "30 6 * * 1-5", datetime(2026, 3, 23, 5, 30, tzinfo=UTC)),
    ],
)
def test_repeat(text: str, cron: str, first: datetime) -> None:
    rule = parse_repeat(text)
    assert rule.cron == cron
    assert next_run(rule.cron, timezone="Europe/Paris", after=NOW) == first


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("every 10 seconds", "too often"),
        ("every minute", "too often"),
        ("every 2 minutes", "too often"),
        ("* * * * *", "too often"),
        ("*/2 * * * *", "too often"),
        ("0,1 9 * * *", "too often"),
        ("every 7 minutes", "divides an hour"),
        ("every fortnight", "cannot read"),
        ("61 * * * *", "neither a repeat"),
        ("hello", "neither a repeat"),
    ],
)
def test_repeat_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_repeat(text)


def test_a_daily_run_keeps_its_wall_clock_time_across_daylight_saving() -> None:
    cron = parse_repeat("every day at 09:00").cron
    before = next_run(cron, timezone="Europe/Paris", after=datetime(2026, 3, 28, 12, tzinfo=UTC))
    after = next_run(cron, timezone="Europe/Paris", after=before)
    assert before == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)  # 09:00 CEST: the change was at 02:00
    assert after == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    autumn = next_run(cron, timezone="Europe/Paris", after=datetime(2026, 10, 25, 0, tzinfo=UTC))
    assert autumn == datetime(2026, 10, 25, 8, 0, tzinfo=UTC)  # 09:00 CET


def test_hourly_runs_do_not_repeat_or_go_back_when_the_clocks_fall_back() -> None:
    runs = [datetime(2026, 10, 24, 23, 0, tzinfo=UTC)]
    for _ in range(5):
        runs.append(next_run("0 * * * *", timezone="Europe/Paris", after=runs[-1]))
    assert all(b > a for a, b in itertools.pairwise(runs))


# --- the services and the index ----------------------------------------------------------------


@dataclass
class World:
    user: User
    server: Server
    channel: Channel
    agent: Agent


def make_world(user: User, nick: str = "helper") -> World:
    provider = make_provider(user)
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
        agent = Agent.objects.create(
            name="Helper", nick=nick, account_llm=provider, model="gpt-4o-mini"
        )
        agent.channels.add(channel)
    return World(user, server, channel, agent)


@pytest.fixture
def world(alice: User) -> World:
    return make_world(alice)


def schedule(world: World, **kwargs: Any) -> Schedule:
    fields: dict[str, Any] = {
        "agent": world.agent,
        "prompt": "Summarise the night",
        "channel": world.channel,
        "when": None,
        "repeat": "every day at 09:00",
        "timezone": "Europe/Paris",
        "created_by": "alice@example.org",
    }
    fields.update(kwargs)
    return create_schedule(**fields)


def entries() -> list[tuple[Any, int, datetime]]:
    return sorted(
        ScheduleEntry.objects.values_list("account_id", "schedule_id", "next_run_at"),
        key=lambda e: (str(e[0]), e[1]),
    )


def test_the_index_follows_the_schedule(world: World) -> None:
    account = world.user.account.pk
    with switch(world.user):
        s = schedule(world)
        assert s.cron == "0 9 * * *" and s.description == "every day at 09:00"
        assert s.next_run_at is not None and s.next_run_at > timezone.now()
        assert entries() == [(account, s.pk, s.next_run_at)]
        pause_schedule(schedule=s)
        assert entries() == []
        with pytest.raises(ValueError, match="Only an active"):
            pause_schedule(schedule=s)
        s = resume_schedule(schedule=s)
        assert s.state == Schedule.State.ACTIVE
        assert entries() == [(account, s.pk, s.next_run_at)]
        s = cancel_schedule(schedule=s)
        assert (s.state, s.next_run_at, entries()) == (Schedule.State.CANCELLED, None, [])
        with pytest.raises(ValueError, match="Only a paused"):
            resume_schedule(schedule=s)


def test_a_once_schedule(world: World) -> None:
    with switch(world.user):
        s = schedule(world, when="2030-01-02 03:04", repeat=None)
        assert s.run_at == datetime(2030, 1, 2, 2, 4, tzinfo=UTC)
        assert s.next_run_at == s.run_at
        assert s.description == "once at 2030-01-02 03:04"
        assert entries() == [(world.user.account.pk, s.pk, s.run_at)]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"when": "2020-01-01 09:00", "repeat": None}, "has already passed"),
        ({"repeat": "every 10 seconds"}, "too often"),
        ({"repeat": None}, "Say when"),
        ({"prompt": "  "}, "Say what"),
        ({"timezone": "Nowhere/Else"}, "not a time zone"),
    ],
)
def test_create_schedule_errors(world: World, kwargs: dict[str, Any], error: str) -> None:
    with switch(world.user):
        with pytest.raises(ValueError, match=error):
            schedule(world, **kwargs)
        assert Schedule.objects.count() == 0
    assert entries() == []


def test_run_now_leaves_the_times_alone(world: World) -> None:
    with switch(world.user):
        s = schedule(world)
        task = run_schedule_now(schedule=s, requested_by="alice@example.org")
        assert (task.trigger, task.input, task.channel, task.schedule) == (
            "manual", "Summarise the night", world.channel, s,
        )  # fmt: skip
        assert entries() == [(world.user.account.pk, s.pk, s.next_run_at)]
        cancel_schedule(schedule=s)
        with pytest.raises(ValueError, match="has ended"):
            run_schedule_now(schedule=s)
        assert Task.objects.count() == 1


def test_the_server_buffer_is_no_place_for_a_schedule(world: World) -> None:
    with switch(world.user):
        buffer = Channel.objects.create(
            server=world.server, name="Libera", kind=Channel.Kind.SERVER
        )
        with pytest.raises(ValueError, match="channel or a conversation"):
            schedule(world, channel=buffer)


def test_resuming_a_once_schedule_whose_time_passed_runs_it_next(world: World) -> None:
    with switch(world.user):
        s = schedule(world, when="in 10 minutes", repeat=None)
        pause_schedule(schedule=s)
        past = timezone.now() - timedelta(minutes=1)
        Schedule.objects.filter(pk=s.pk).update(next_run_at=past)
        s = resume_schedule(schedule=s)
        assert s.next_run_at == past
        assert entries() == [(world.user.account.pk, s.pk, past)]


def _make_due(s: Schedule, when: datetime) -> None:
    Schedule.objects.filter(pk=s.pk).update(next_run_at=when)
    ScheduleEntry.objects.filter(schedule_id=s.pk).update(next_run_at=when)


def test_fire_creates_the_run_and_moves_the_next_one(world: World) -> None:
    due = timezone.now() - timedelta(minutes=1)
    with switch(world.user):
        s = schedule(world)
        _make_due(s, due)
        task = fire_schedule(schedule_id=s.pk, due_at=due)
        assert task is not None
        assert (task.trigger, task.input, task.channel, task.schedule_id) == (
            "schedule", "Summarise the night", world.channel, s.pk,
        )  # fmt: skip
        s.refresh_from_db()
        assert s.last_run_at is not None and s.next_run_at is not None
        assert s.next_run_at > timezone.now()
        assert s.next_run_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris")).hour == 9
        entry = ScheduleEntry.objects.get(schedule_id=s.pk)
        assert (entry.next_run_at, entry.claimed_until) == (s.next_run_at, None)
        # Delivered twice: the entry has moved on, nothing more happens.
        assert fire_schedule(schedule_id=s.pk, due_at=due) is None
        assert Task.objects.count() == 1


def test_a_once_schedule_fires_once_and_is_done(world: World) -> None:
    due = timezone.now() - timedelta(seconds=5)
    with switch(world.user):
        s = schedule(world, when="in 10 minutes", repeat=None)
        _make_due(s, due)
        assert fire_schedule(schedule_id=s.pk, due_at=due) is not None
        assert fire_schedule(schedule_id=s.pk, due_at=due) is None
        s.refresh_from_db()
        assert (s.state, s.next_run_at) == (Schedule.State.DONE, None)
        assert Task.objects.count() == 1
    assert entries() == []


def test_fire_does_nothing_before_the_time_or_for_a_paused_schedule(world: World) -> None:
    with switch(world.user):
        s = schedule(world)
        assert fire_schedule(schedule_id=s.pk) is None  # not due yet
        _make_due(s, timezone.now() - timedelta(minutes=1))
        Schedule.objects.filter(pk=s.pk).update(state=Schedule.State.PAUSED)
        assert fire_schedule(schedule_id=s.pk) is None
        assert Task.objects.count() == 0
    assert entries() == []  # the stray entry is dropped


# --- the tick ------------------------------------------------------------------------------------


def broker_messages(queue: str = "celery") -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        found.append({"headers": message["headers"], "args": body[0]})
    return found


def test_the_tick_claims_only_due_entries_across_accounts(world: World, bob: User) -> None:
    bobs = make_world(bob)
    carol = UserFactory(email="carol@example.org")
    carols = make_world(carol)
    past = timezone.now() - timedelta(minutes=2)
    due: list[tuple[str, int]] = []
    for w in (world, bobs, carols):
        with switch(w.user):
            later = schedule(w)  # tomorrow at 09:00: not due
            now_due = schedule(w, repeat="every hour")
            if w is not carols:
                _make_due(now_due, past)
                due.append((w.user.account.schema_name, now_due.pk))
            assert later.pk != now_due.pk
    with CaptureQueriesContext(connection) as queries:
        assert scheduler_tick() == 2
    # One statement, and never a schema but public (django-tenants sets the search path).
    statements = [q["sql"] for q in queries.captured_queries]
    assert [s for s in statements if not s.startswith("SET search_path")] == [
        s for s in statements if s.lstrip().startswith("UPDATE")
    ]
    assert len(statements) <= 2 and all(
        s == 'SET search_path = "public"' for s in statements if s.startswith("SET")
    )
    sent = broker_messages()
    assert sorted(
        (m["headers"]["_schema_name"], m["args"][0])
        for m in sent
        if m["headers"]["task"] == "agents.fire_schedule"
    ) == sorted(due)
    # Claimed: the next tick hands them out no more.
    assert scheduler_tick() == 0
    assert len(broker_messages()) == 2
    claimed = ScheduleEntry.objects.filter(claimed_until__isnull=False)
    assert sorted(e.schedule_id for e in claimed) == sorted(pk for _, pk in due)


def test_a_busy_tick_hands_its_claim_out_in_chunks(world: World, bob: User) -> None:
    """Past DISPATCH_CHUNK due entries, the tick publishes chunks that workers hand out (on
    public too), each fire still in its own account's schema."""
    bobs = make_world(bob)
    past = timezone.now() - timedelta(minutes=2)
    due = [(w.user.account, n) for n in range(1, DISPATCH_CHUNK + 6) for w in (world, bobs)]
    ScheduleEntry.objects.bulk_create(
        ScheduleEntry(account=account, schedule_id=n, next_run_at=past) for account, n in due
    )
    assert scheduler_tick() == len(due)
    chunks = [m for m in broker_messages() if m["headers"]["task"] == "agents.dispatch_due"]
    assert len(chunks) == -(-len(due) // DISPATCH_CHUNK)
    assert all("_schema_name" not in m["headers"] or m["headers"]["_schema_name"] == "public"
               for m in chunks)  # fmt: skip
    for chunk in chunks:
        dispatch_due(*chunk["args"])
    fired = sorted(
        (m["headers"]["_schema_name"], m["args"][0])
        for m in broker_messages()
        if m["headers"]["task"] == "agents.fire_schedule"
    )
    assert fired == sorted((account.schema_name, n) for account, n in due)


def test_an_expired_claim_is_handed_out_again(world: World) -> None:
    with switch(world.user):
        s = schedule(world)
        _make_due(s, timezone.now() - timedelta(minutes=2))
    ScheduleEntry.objects.update(claimed_until=timezone.now() - timedelta(minutes=5))
    assert [c.schedule_id for c in claim_due()] == [s.pk]


def test_the_tick_runs_on_public_only(world: World) -> None:
    with switch(world.user), pytest.raises(RuntimeError, match="public"):
        scheduler_tick()


def test_the_tick_is_in_the_beat_schedule() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["agents-scheduler-tick"]
    assert entry["task"] == "agents.scheduler_tick"
    assert entry["schedule"] <= 5


# --- the Tasks page ------------------------------------------------------------------------------


def test_the_tasks_page_lists_and_creates(world: World, alice_client: Client) -> None:
    with switch(world.user):
        s = schedule(world)
        run = run_schedule_now(schedule=s)
    page = alice_client.get(reverse("agents:task_list"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "every day at 09:00" in html and "Summarise the night" in html
    assert f'href="/agents/tasks/{run.pk}/"' in html
    assert reverse("agents:schedule_pause", args=[s.pk]) in html
    response = alice_client.post(
        reverse("agents:task_list"),
        {
            "agent": world.agent.pk,
            "channel": world.channel.pk,
            "prompt": "Stand-up reminder",
            "when": "",
            "repeat": "every weekday at 09:30",
        },
    )
    assert response.status_code == 302
    with switch(world.user):
        made = Schedule.objects.get(prompt="Stand-up reminder")
        # The account's time zone (UTC: its current-time tool sets none).
        assert (made.cron, made.timezone, made.created_by) == (
            "30 9 * * 1-5", "UTC", "alice@example.org",
        )  # fmt: skip


def test_the_form_shows_field_errors(world: World, alice_client: Client) -> None:
    with switch(world.user):
        elsewhere = Channel.objects.create(server=world.server, name="#elsewhere")
        other = Agent.objects.create(
            name="Other", nick="other", account_llm=world.agent.account_llm, model="gpt-4o-mini"
        )
        other.channels.add(elsewhere)
    response = alice_client.post(
        reverse("agents:task_list"),
        {
            "agent": world.agent.pk,
            "channel": elsewhere.pk,
            "prompt": "x",
            "when": "2020-01-01 10:00",
            "repeat": "every 10 seconds",
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "has already passed" in html
    assert "too often" in html
    assert "Helper is not in #elsewhere." in html
    with switch(world.user):
        assert Schedule.objects.count() == 0


@pytest.mark.parametrize("action", ["pause", "resume", "run", "cancel"])
def test_schedule_actions(world: World, alice_client: Client, action: str) -> None:
    with switch(world.user):
        s = schedule(world)
        if action == "resume":
            pause_schedule(schedule=s)
    url = reverse(f"agents:schedule_{action}", args=[s.pk])
    assert alice_client.get(url).status_code == 405
    assert alice_client.post(url).status_code == 302
    with switch(world.user):
        s.refresh_from_db()
        expected = {"pause": "paused", "resume": "active", "run": "active", "cancel": "cancelled"}
        assert s.state == expected[action]
        assert Task.objects.count() == (1 if action == "run" else 0)
    assert len(entries()) == (0 if action in ("pause", "cancel") else 1)


@pytest.mark.parametrize("action", ["pause", "resume", "run", "cancel"])
def test_another_account_gets_404_on_every_schedule_url(
    world: World, bob_client: Client, action: str
) -> None:
    make_world(User.objects.get(email="bob@example.org"))
    with switch(world.user):
        s = schedule(world)
    response = bob_client.post(reverse(f"agents:schedule_{action}", args=[s.pk]))
    assert response.status_code == 404
    with switch(world.user):
        assert Schedule.objects.get(pk=s.pk).state == "active"
        assert Task.objects.count() == 0


def test_another_accounts_page_shows_none_of_it(world: World, bob_client: Client) -> None:
    with switch(world.user):
        schedule(world)
    html = bob_client.get(reverse("agents:task_list")).content.decode()
    assert "Summarise the night" not in html


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def worker(clean_schemas: None) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


def test_a_schedule_fires_at_its_time_through_a_worker(worker: None) -> None:
    user = UserFactory(email="alice@example.org")
    w = make_world(user)
    with switch(user):
        at = (timezone.now() + timedelta(seconds=2)).isoformat()
        s = schedule(w, when=at, repeat=None)
        assert Task.objects.count() == 0
    deadline = time.monotonic() + 30
    fired = None
    while time.monotonic() < deadline:
        scheduler_tick()  # what beat runs every 5 s
        with switch(user):
            fired = Task.objects.filter(schedule_id=s.pk).first()
        if fired is not None:
            break
        time.sleep(0.3)
    assert fired is not None, "the schedule did not fire"
    assert (fired.trigger, fired.input, fired.channel_id) == (
        "schedule", "Summarise the night", w.channel.pk,
    )  # fmt: skip
    assert fired.created_at >= datetime.fromisoformat(at)
    with switch(user):
        s.refresh_from_db()
        assert s.state == Schedule.State.DONE and s.last_run_at is not None
    assert not ScheduleEntry.objects.exists()
    # The run itself was queued for the agents' workers.
    runs = broker_messages("agents")
    assert [(m["headers"]["task"], m["args"]) for m in runs] == [("agents.run_task", [fired.pk])]
    assert runs[0]["headers"]["_schema_name"] == user.account.schema_name
