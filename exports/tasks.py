"""Celery tasks of exports: thin, each loads by id and calls one service."""

from config.celery import app
from tenancy.context import is_public
from tenancy.tasks import account_task


@account_task(name="exports.build_export", ignore_result=True)
def build_export(export_id: str) -> None:
    """Build one export, in its account's schema (the task carries it). Not retried: a second
    run of a failed export would fail the same way; the person starts a new one."""
    from exports.services import build_export_now

    build_export_now(export_id=export_id)


@app.task(name="exports.delete_expired_exports", ignore_result=True)
def delete_expired_exports() -> int:
    """Celery beat: delete every archive whose link has expired, across accounts, from the
    storage's listing alone."""
    if not is_public():
        raise RuntimeError("delete_expired_exports runs on the public schema")
    from exports.services import delete_expired_files

    return delete_expired_files()
