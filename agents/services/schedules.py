"""Scheduled tasks: an agent runs a prompt at a time, once or repeating, answering in a channel.

Every write here keeps the public index (scheduling.ScheduleEntry) in step with the schedule in
the same transaction: the index is what the scheduler's tick reads, so a schedule that is
active with a next run has exactly one entry, and any other has none. The account's schema and
public live in one database and one connection, so one transaction covers both.

Times a person types are read in the schedule's time zone (the account's, by default):
"2026-12-01 09:00", an ISO datetime, "in 10 minutes", "tomorrow at 9:00"; repeats are cron
expressions or a few phrases ("every day at 09:00", "every weekday at 08:30", "every monday at
10:00", "every hour", "every 15 minutes"), stored as cron and evaluated on local wall-clock time,
so 09:00 stays 09:00 across daylight-saving changes.
"""

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from croniter import croniter
from django.db import transaction
from django.utils import timezone as django_timezone

from agents.models import Agent, Schedule, Task
from scheduling.models import ScheduleEntry
from tenancy import current_account

if TYPE_CHECKING:
    from channels_app.models import Channel

# Runs closer together than this are refused: an agent run costs tokens and channel lines.
MIN_INTERVAL = timedelta(minutes=5)
MAX_PROMPT = 2000
WEEKDAYS = {
    "monday": 1,
    "tuesday": 2,
    "wednesday": 3,
    "thursday": 4,
    "friday": 5,
    "saturday": 6,
    "sunday": 0,
}
_UNITS = {
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}
_TIME = r"(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm)?"
_IN = re.compile(r"^in\s+(\d+|an?|one)\s+(second|minute|hour|day|week)s?$")
_AT = re.compile(rf"^(?:(today|tomorrow)\s+)?(?:at\s+)?{_TIME}$")
_EVERY_AT = re.compile(rf"^every\s+(day|weekday|{'|'.join(WEEKDAYS)})s?\s+at\s+{_TIME}$")
_EVERY_N = re.compile(r"^every\s+(\d+\s+)?(second|minute|hour)s?$")


@dataclass(frozen=True)
class Repeat:
    cron: str
    description: str


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"“{name}” is not a time zone I know (try Europe/Paris or UTC).") from None


def _clock(hour: str, minute: str | None, meridiem: str | None) -> tuple[int, int]:
    h, m = int(hour), int(minute or 0)
    if meridiem:
        if not 1 <= h <= 12:
            raise ValueError(f"{hour} {meridiem} is not a time.")
        h = h % 12 + (12 if meridiem == "pm" else 0)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(f"{hour}:{minute or '00'} is not a time of day.")
    return h, m


def _local_to_utc(naive: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    return naive.replace(tzinfo=zone).astimezone(UTC)


def parse_when(text: str, *, timezone: str, now: datetime | None = None) -> datetime:
    """The moment (UTC) `text` names, in the future. Raises ValueError saying what is wrong."""
    zone = _zone(timezone)
    now = now or django_timezone.now()
    value = " ".join(text.strip().lower().split())
    if not value:
        raise ValueError("Say when: “2026-12-01 09:00”, “in 10 minutes” or “tomorrow at 9:00”.")
    moment: datetime | None = None
    if match := _IN.match(value):
        amount = match.group(1)
        count = 1 if amount in ("a", "an", "one") else int(amount)
        moment = now + count * _UNITS[match.group(2)]
    elif match := _AT.match(value):
        day, hour, minute, meridiem = match.groups()
        h, m = _clock(hour, minute, meridiem)
        local_now = now.astimezone(zone)
        date = local_now.date() + timedelta(days=1 if day == "tomorrow" else 0)
        moment = _local_to_utc(datetime(date.year, date.month, date.day, h, m), zone)
        if day is None and moment <= now:
            # "at 9:00" once 9:00 has passed today means tomorrow's.
            date += timedelta(days=1)
            moment = _local_to_utc(datetime(date.year, date.month, date.day, h, m), zone)
    else:
        try:
            parsed = datetime.fromisoformat(text.strip().replace("/", "-"))
        except ValueError:
            raise ValueError(
                f"I cannot read “{text.strip()}” as a time. Try “2026-12-01 09:00”, "
                "“in 10 minutes” or “tomorrow at 9:00”."
            ) from None
        moment = _local_to_utc(parsed, zone) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if moment <= now:
        local = moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        raise ValueError(f"{local} ({timezone}) has already passed; pick a time in the future.")
    return moment


def parse_repeat(text: str) -> Repeat:
    """A cron expression for `text` (cron itself or a phrase). Raises ValueError when it cannot
    be read or would run more often than every MIN_INTERVAL."""
    value = " ".join(text.strip().lower().split())
    minimum = int(MIN_INTERVAL.total_seconds() // 60)
    if not value:
        raise ValueError("Say how often: “every day at 09:00”, “every 15 minutes” or cron.")
    if match := _EVERY_AT.match(value):
        which, hour, minute, meridiem = match.groups()
        h, m = _clock(hour, minute, meridiem)
        days = {"day": "*", "weekday": "1-5"}.get(which) or str(WEEKDAYS[which])
        return Repeat(cron=f"{m} {h} * * {days}", description=text.strip())
    if match := _EVERY_N.match(value):
        count = int(match.group(1) or 1)
        unit = match.group(2)
        if count < 1:
            raise ValueError("Every 0 of something is not a repeat.")
        if unit == "second" or (unit == "minute" and count < minimum):
            raise ValueError(f"That is too often: at most once every {minimum} minutes.")
        if unit == "minute":
            if count >= 60 or 60 % count:
                raise ValueError(
                    "Use a number of minutes that divides an hour (5, 10, 15, 20, 30), "
                    "or a number of hours."
                )
            return Repeat(cron=f"*/{count} * * * *", description=text.strip())
        if count >= 24 or 24 % count:
            raise ValueError("Use a number of hours that divides a day (1, 2, 3, 4, 6, 8, 12).")
        return Repeat(
            cron="0 * * * *" if count == 1 else f"0 */{count} * * *", description=text.strip()
        )
    if value.startswith("every"):
        raise ValueError(
            f"I cannot read “{text.strip()}”. Try “every day at 09:00”, “every weekday at "
            "08:30”, “every monday at 10:00”, “every hour”, “every 15 minutes” or cron."
        )
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"“{text.strip()}” is neither a repeat I know nor a cron expression "
            "(five fields: minute hour day month weekday)."
        )
    _check_interval(value, minimum)
    return Repeat(cron=value, description=f"cron {value}")


def _check_interval(cron: str, minimum: int) -> None:
    # Cron can mix frequent and rare runs ("0,1 9 * * *"): the closest two runs count.
    runs = croniter(cron, datetime(2026, 1, 1))
    previous = runs.get_next(datetime)
    for _ in range(100):
        current = runs.get_next(datetime)
        if current - previous < MIN_INTERVAL:
            raise ValueError(f"That cron runs too often: at most once every {minimum} minutes.")
        previous = current


def next_run(cron: str, *, timezone: str, after: datetime) -> datetime:
    """The first run of `cron` strictly after `after` (UTC), on the wall clock of `timezone`.

    Evaluated on naive local time and then placed in the zone: a daily 09:00 is 09:00 local
    in winter and summer alike. Around a fall-back change a local time that maps to before
    `after` is skipped."""
    zone = _zone(timezone)
    local = after.astimezone(zone).replace(tzinfo=None)
    runs = croniter(cron, local)
    for _ in range(1000):
        candidate = _local_to_utc(runs.get_next(datetime), zone)
        if candidate > after:
            return candidate
    raise ValueError(f"“{cron}” never runs again.")


def _sync_entry(schedule: Schedule) -> None:
    """Mirror the schedule into the public index: one entry while it is active with a next run,
    none otherwise. Called inside the schedule's own transaction."""
    account = current_account()
    if account is None:
        raise RuntimeError("schedules live in an account's schema; none is active")
    if schedule.state == Schedule.State.ACTIVE and schedule.next_run_at is not None:
        ScheduleEntry.objects.update_or_create(
            account=account,
            schedule_id=schedule.pk,
            defaults={"next_run_at": schedule.next_run_at, "claimed_until": None},
        )
    else:
        ScheduleEntry.objects.filter(account=account, schedule_id=schedule.pk).delete()


@transaction.atomic
def create_schedule(
    *,
    agent: Agent,
    prompt: str,
    channel: "Channel",
    when: str | None,
    repeat: str | None,
    timezone: str,
    created_by: str,
) -> Schedule:
    """Schedule `agent` to run `prompt` in `channel`: once at `when`, or on `repeat` (starting
    at `when` if both are given). Raises ValueError with a message for the person asking."""
    prompt = prompt.strip()
    if not prompt:
        raise ValueError("Say what the agent should do.")
    if len(prompt) > MAX_PROMPT:
        raise ValueError(f"The prompt is longer than {MAX_PROMPT} characters.")
    if not agent.enabled:
        raise ValueError(f"{agent.name} is disabled; enable it first.")
    if channel.kind not in ("channel", "query"):
        raise ValueError("A scheduled task answers in a channel or a conversation.")
    _zone(timezone)
    when = (when or "").strip() or None
    repeat = (repeat or "").strip() or None
    if when is None and repeat is None:
        raise ValueError("Say when (once) or how often (repeat).")
    now = django_timezone.now()
    run_at = parse_when(when, timezone=timezone, now=now) if when else None
    rule = parse_repeat(repeat) if repeat else None
    if run_at is not None:
        next_run_at = run_at
    else:
        assert rule is not None
        next_run_at = next_run(rule.cron, timezone=timezone, after=now)
    if rule is not None:
        description = rule.description
    else:
        assert run_at is not None
        local = run_at.astimezone(_zone(timezone)).strftime("%Y-%m-%d %H:%M")
        description = f"once at {local}"
    schedule = Schedule.objects.create(
        agent=agent,
        prompt=prompt,
        channel=channel,
        run_at=run_at,
        cron=rule.cron if rule else "",
        description=description[:200],
        timezone=timezone,
        next_run_at=next_run_at,
        created_by=created_by[:200],
    )
    _sync_entry(schedule)
    return schedule


def _locked(schedule: Schedule) -> Schedule:
    return Schedule.objects.select_for_update().get(pk=schedule.pk)


@transaction.atomic
def pause_schedule(*, schedule: Schedule) -> Schedule:
    schedule = _locked(schedule)
    if schedule.state != Schedule.State.ACTIVE:
        raise ValueError("Only an active schedule can be paused.")
    schedule.state = Schedule.State.PAUSED
    schedule.save(update_fields=["state"])
    _sync_entry(schedule)
    return schedule


@transaction.atomic
def resume_schedule(*, schedule: Schedule) -> Schedule:
    """Active again from now: a repeat's next run is the next one from now (runs missed while
    paused are not made up); a once-schedule whose time passed runs at the next tick."""
    schedule = _locked(schedule)
    if schedule.state != Schedule.State.PAUSED:
        raise ValueError("Only a paused schedule can be resumed.")
    schedule.state = Schedule.State.ACTIVE
    _catch_up(schedule, now=django_timezone.now())
    schedule.save(update_fields=["state", "next_run_at"])
    _sync_entry(schedule)
    return schedule


def _catch_up(schedule: Schedule, *, now: datetime) -> None:
    """Runs missed while the schedule was out of the index are not made up: a repeat's next run
    is the next one from now; a once-schedule whose time passed runs at the next tick."""
    if schedule.cron and (schedule.next_run_at is None or schedule.next_run_at <= now):
        schedule.next_run_at = next_run(schedule.cron, timezone=schedule.timezone, after=now)
    elif schedule.next_run_at is None:
        schedule.next_run_at = now


@transaction.atomic
def reindex_schedules() -> int:
    """Put every active schedule of the current account back into the public index, as a
    resume does (tenancy.services.cancel_account_deletion: requesting the deletion took the
    account's entries out). Returns how many are scheduled again."""
    now = django_timezone.now()
    count = 0
    for schedule in Schedule.objects.select_for_update().filter(state=Schedule.State.ACTIVE):
        _catch_up(schedule, now=now)
        schedule.save(update_fields=["next_run_at"])
        _sync_entry(schedule)
        count += 1
    return count


@transaction.atomic
def cancel_schedule(*, schedule: Schedule) -> Schedule:
    schedule = _locked(schedule)
    if schedule.state in (Schedule.State.DONE, Schedule.State.CANCELLED):
        raise ValueError("This schedule has already ended.")
    schedule.state = Schedule.State.CANCELLED
    schedule.next_run_at = None
    schedule.save(update_fields=["state", "next_run_at"])
    _sync_entry(schedule)
    return schedule


@transaction.atomic
def run_schedule_now(*, schedule: Schedule, requested_by: str = "") -> Task:
    """One run now, outside the schedule's times (which stay as they were)."""
    from agents.services.tasks import create_task

    schedule = Schedule.objects.select_related("agent", "channel").get(pk=schedule.pk)
    if schedule.state in (Schedule.State.DONE, Schedule.State.CANCELLED):
        raise ValueError("This schedule has ended; create a new one.")
    if not schedule.agent.enabled:
        raise ValueError(f"{schedule.agent.name} is disabled; enable it first.")
    return create_task(
        agent=schedule.agent,
        trigger=Task.Trigger.MANUAL,
        input=schedule.prompt,
        channel=schedule.channel,
        requested_by=requested_by or schedule.created_by,
        schedule=schedule,
    )


@transaction.atomic
def fire_schedule(*, schedule_id: int, due_at: datetime | None = None) -> Task | None:
    """The scheduler says the schedule is due: create its run, record it, and move the schedule
    on (its next run, or done), the index with it, in one transaction.

    Idempotent: the index entry is locked and must still say the run is due (its next_run_at
    the one the tick claimed, `due_at`, when given); a second delivery finds it moved on or
    gone and does nothing. Returns the Task, or None when there was nothing to run."""
    from agents.services.tasks import create_task

    account = current_account()
    if account is None:
        raise RuntimeError("fire_schedule runs in an account's schema")
    now = django_timezone.now()
    entry = (
        ScheduleEntry.objects.select_for_update()
        .filter(account=account, schedule_id=schedule_id)
        .first()
    )
    if entry is None:
        return None
    if due_at is not None:
        # The tick found it due by the database's clock; this worker's may lag a little.
        if entry.next_run_at != due_at:
            return None
    elif entry.next_run_at > now:
        return None
    schedule = (
        Schedule.objects.select_for_update(of=("self",))
        .select_related("agent", "channel")
        .filter(pk=schedule_id)
        .first()
    )
    if schedule is None:
        entry.delete()  # the schedule went with its agent or channel
        return None
    if schedule.state != Schedule.State.ACTIVE or schedule.next_run_at is None:
        _sync_entry(schedule)
        return None
    task = None
    if schedule.agent.enabled:
        task = create_task(
            agent=schedule.agent,
            trigger=Task.Trigger.SCHEDULE,
            input=schedule.prompt,
            channel=schedule.channel,
            requested_by=schedule.created_by,
            schedule=schedule,
        )
    schedule.last_run_at = now
    if schedule.cron:
        # From now, not from the missed time: a worker that was down does not fire a backlog.
        after = max(now, schedule.next_run_at)
        schedule.next_run_at = next_run(schedule.cron, timezone=schedule.timezone, after=after)
    else:
        schedule.state = Schedule.State.DONE
        schedule.next_run_at = None
    schedule.save(update_fields=["last_run_at", "next_run_at", "state"])
    _sync_entry(schedule)
    return task
