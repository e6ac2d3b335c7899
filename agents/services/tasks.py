"""Tasks: one run of an agent each. Creating one queues its run after the commit."""

from typing import TYPE_CHECKING

from django.db import transaction

from agents.models import Agent, Schedule, Task

if TYPE_CHECKING:
    from channels_app.models import Channel, Server


@transaction.atomic
def create_task(
    *,
    agent: Agent,
    trigger: str,
    input: str,
    channel: "Channel | None" = None,
    server: "Server | None" = None,
    reply_to: str = "",
    requested_by: str = "",
    schedule: Schedule | None = None,
    source_message_id: int | None = None,
) -> Task:
    """Record a run and hand it to the agents' workers once the row is committed. The run
    happens in this account's schema: the task carries it (tenant-schemas-celery)."""
    task = Task.objects.create(
        agent=agent,
        trigger=trigger,
        input=input,
        channel=channel,
        server=server or (channel.server if channel is not None else None),
        reply_to=reply_to or (channel.name if channel is not None else ""),
        requested_by=requested_by,
        schedule=schedule,
        source_message_id=source_message_id,
    )
    from agents.tasks import run_task

    task_id = task.pk
    transaction.on_commit(lambda: run_task.delay(task_id))
    return task
