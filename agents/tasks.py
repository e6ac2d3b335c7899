"""Celery tasks of the agents app: thin, each loads by id and calls one function."""

import logging
from datetime import datetime

from config.celery import app
from tenancy.context import is_public
from tenancy.tasks import account_task

logger = logging.getLogger(__name__)


@account_task(name="agents.run_task", ignore_result=True)
def run_task(task_id: int) -> None:
    """Run one agent task in the account's schema (the task carries it)."""
    from agents.runner import run

    run(task_id)


# Due schedules handed out by the tick itself, at most; past it the tick publishes one
# `agents.dispatch_due` per this many, and workers publish the fires in parallel. Each publish
# costs ~0.5 ms (kombu builds a Redis client per message): a tick publishing every fire itself
# took ~60 ms for 100 due schedules, its p99 past 100 ms on a busy machine.
DISPATCH_CHUNK = 20


@app.task(name="agents.scheduler_tick", ignore_result=True)
def scheduler_tick() -> int:
    """Every few seconds on public (CELERY_BEAT_SCHEDULE): claim the due schedules of every
    account from the public index in one statement and hand each to `fire_schedule` in its
    account's schema, directly or through `dispatch_due` in chunks. Never enters a schema
    itself. Returns how many were claimed."""
    from scheduling.services import claim_due

    if not is_public():
        raise RuntimeError("the scheduler's tick runs on the public schema, over every account")
    claimed = claim_due()
    entries = [(c.schema_name, c.schedule_id, c.next_run_at.isoformat()) for c in claimed]
    if len(entries) <= DISPATCH_CHUNK:
        _hand_out(entries)
        return len(entries)
    with app.producer_or_acquire() as producer:
        for start in range(0, len(entries), DISPATCH_CHUNK):
            chunk = entries[start : start + DISPATCH_CHUNK]
            try:
                dispatch_due.apply_async(args=[chunk], producer=producer)
            except Exception:
                # The claims lapse (scheduling.services.CLAIM_SECONDS); a later tick retries.
                logger.exception("could not hand out %d due schedules", len(chunk))
    return len(entries)


@app.task(name="agents.dispatch_due", ignore_result=True)
def dispatch_due(entries: list[tuple[str, int, str]]) -> None:
    """Part of a tick's claim, on public: each (schema, schedule, due at) to its account."""
    if not is_public():
        raise RuntimeError("dispatch_due runs on the public schema")
    _hand_out([(str(s), int(i), str(t)) for s, i, t in entries])


def _hand_out(entries: list[tuple[str, int, str]]) -> None:
    if not entries:
        return
    # One broker connection for the whole batch, not one taken from the pool per message.
    with app.producer_or_acquire() as producer:
        for schema_name, schedule_id, due_at in entries:
            try:
                fire_schedule.apply_async(
                    args=[schedule_id, due_at],
                    headers={"_schema_name": schema_name},
                    producer=producer,
                )
            except Exception:
                # The claim lapses (scheduling.services.CLAIM_SECONDS); a later tick retries.
                logger.exception("could not hand schedule %s out", schedule_id)


@account_task(name="agents.fire_schedule", ignore_result=True)
def fire_schedule(schedule_id: int, due_at: str | None = None) -> None:
    """A schedule of this account is due: run it once and move it on (idempotent)."""
    from agents.services.schedules import fire_schedule as fire

    fire(schedule_id=schedule_id, due_at=datetime.fromisoformat(due_at) if due_at else None)


@account_task(name="agents.query_received", ignore_result=True)
def query_received(agent_id: int, server_id: int, nick: str, text: str) -> None:
    """Someone sent a private message to an agent's own connection (the gateway enqueues this
    in the account's schema): a run answering them there, unless the agent is cooling down."""
    from agents.triggers import handle_query

    handle_query(agent_id=agent_id, server_id=server_id, nick=nick, text=text)
