"""Which backups of one account are past retention: one pure function, used by the task after
each scheduled backup, by `prune_backups` and by the purge of an account.

The rules (README, "Backups"):

- Scheduled backups are made once a day. The first one of each ISO week (Monday to Sunday, UTC)
  is recorded as `weekly`, the others as `daily`; a weekly backup is also that day's backup.
- Of an account's done scheduled backups, the newest BACKUP_KEEP_DAILY (weekly ones included)
  are kept, and so are the newest BACKUP_KEEP_WEEKLY weekly ones, however old.
- Manual backups are kept while the account exists.
- An account that no longer exists makes no new backups, so counting alone would keep its last
  ones for ever: they age out as if its schedule had gone on. A daily or manual backup goes
  BACKUP_KEEP_DAILY days after it was made, a weekly one BACKUP_KEEP_WEEKLY weeks after.
- A failed attempt is kept BACKUP_KEEP_DAILY days (to be seen in `list_backups`), then goes.
- A running backup is never touched.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from lifecycle.models import Backup


@dataclass(frozen=True)
class Policy:
    keep_daily: int
    keep_weekly: int

    @classmethod
    def from_settings(cls) -> "Policy":
        return cls(keep_daily=settings.BACKUP_KEEP_DAILY, keep_weekly=settings.BACKUP_KEEP_WEEKLY)


def past_retention(
    backups: Iterable[Backup], *, account_exists: bool, now: datetime, policy: Policy
) -> list[Backup]:
    """The backups of one account that retention no longer keeps, newest first."""
    newest_first = sorted(backups, key=lambda b: (b.created_at, b.pk or 0), reverse=True)
    done = [b for b in newest_first if b.state == Backup.State.DONE]
    scheduled = [b for b in done if b.scheduled]
    weekly = [b for b in scheduled if b.kind == Backup.Kind.WEEKLY]
    daily_cutoff = now - timedelta(days=policy.keep_daily)
    weekly_cutoff = now - timedelta(weeks=policy.keep_weekly)

    kept: set[int] = set()
    for backup in scheduled[: policy.keep_daily]:
        if account_exists or backup.created_at > daily_cutoff:
            kept.add(id(backup))
    for backup in weekly[: policy.keep_weekly]:
        if account_exists or backup.created_at > weekly_cutoff:
            kept.add(id(backup))
    for backup in done:
        if backup.kind == Backup.Kind.MANUAL and (
            account_exists or backup.created_at > daily_cutoff
        ):
            kept.add(id(backup))

    expired = []
    for backup in newest_first:
        if backup.state == Backup.State.RUNNING:
            continue
        if backup.state == Backup.State.FAILED:
            if backup.created_at <= daily_cutoff:
                expired.append(backup)
        elif id(backup) not in kept:
            expired.append(backup)
    return expired
