"""Celery tasks of the agents app: thin, each loads by id and calls one function."""

from tenancy.tasks import account_task


@account_task(name="agents.run_task", ignore_result=True)
def run_task(task_id: int) -> None:
    """Run one agent task in the account's schema (the task carries it)."""
    from agents.runner import run

    run(task_id)
