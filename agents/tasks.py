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


@app.task(name="agents.scheduler_tick", ignore_result=True)
def scheduler_tick() -> int:
    """Every few seconds on public (CELERY_BEAT_SCHEDULE): claim the due schedules of every
    account from the public index in one statement and hand each to `fire_schedule` in its
    account's schema. Never enters a schema itself. Returns how many were handed out."""
    from scheduling.services import claim_due

    if not is_public():
        raise RuntimeError("the scheduler's tick runs on the public schema, over every account")
    claimed = claim_due()
    if not claimed:
        return 0
    # One broker connection for the whole batch, not one taken from the pool per message.
    with app.producer_or_acquire() as producer:
        for entry in claimed:
            try:
                fire_schedule.apply_async(
                    args=[entry.schedule_id, entry.next_run_at.isoformat()],
                    headers={"_schema_name": entry.schema_name},
                    producer=producer,
                )
            except Exception:
                # The claim lapses (scheduling.services.CLAIM_SECONDS); a later tick retries.
                logger.exception("could not hand schedule %s out", entry.schedule_id)
    return len(claimed)


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
