"""Scheduled backups.

`schedule_backups` runs on public (Celery beat, every 15 minutes: CELERY_BEAT_SCHEDULE) and
records the backups due now (lifecycle/schedule.py), enqueueing one `backup_account` per account
once that commits. `backup_account` carries the account's id and its registry row's: it writes
the archive to a temporary file, keeps it in the "backups" storage, records it, and applies
retention to that account's backups.
"""

import logging
import uuid
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.celery import app
from lifecycle import registry, schedule
from lifecycle.models import Backup
from tenancy.context import is_public

logger = logging.getLogger(__name__)


@app.task(name="lifecycle.schedule_backups")
def schedule_backups(now: str | None = None) -> int:
    """Enqueue the scheduled backups due now (beat) or at `now` (ISO 8601: a test's clock);
    return how many."""
    if not is_public():
        raise RuntimeError("schedule_backups runs on the public schema, over every account")
    if not settings.BACKUP_SCHEDULE:
        return 0
    moment = datetime.fromisoformat(now) if now else timezone.now()
    started = schedule.start_due_backups(now=moment)
    for backup in started:
        transaction.on_commit(
            lambda b=backup: backup_account.delay(str(b.account_id), b.pk)  # type: ignore[misc]
        )
    if started:
        logger.info("enqueued %d scheduled backups", len(started))
    return len(started)


@app.task(name="lifecycle.backup_account")
def backup_account(account_id: str, backup_id: int) -> str:
    """Make the backup a registry row stands for, then apply the account's retention; return
    the row's state."""
    if str(Backup.objects.get(pk=backup_id).account_id) != account_id:
        raise ValueError(f"backup {backup_id} is not account {account_id}'s")
    backup = registry.run_backup(backup_id=backup_id)
    pruned = registry.apply_retention(account_id=uuid.UUID(account_id))
    for error in pruned.errors:
        logger.error("retention of account %s: %s", account_id, error)
    return str(backup.state)


@app.task(name="lifecycle.prune_backups")
def prune_backups() -> int:
    """Apply retention to every account's backups, purged accounts' included (their backups
    age out); return how many were deleted. Beat runs it daily; `prune_backups` is the same."""
    if not is_public():
        raise RuntimeError("prune_backups runs on the public schema, over every account")
    result = registry.prune_all()
    for error in result.errors:
        logger.error("backup retention: %s", error)
    return len(result.deleted)
