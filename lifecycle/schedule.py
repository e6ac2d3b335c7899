"""When each account's daily backup is made.

Every account has a time of day of its own, its slot: a hash of its id to a minute of the day
(UTC), so backups spread evenly over the day and an account keeps its time from day to day
without anything stored. Celery beat runs `lifecycle.schedule_backups` every TICK; an account
is due when its slot passed less than WINDOW ago and the registry has no backup of it (running
or done) since that slot: at most one scheduled backup per account in any 24 hours, however
often the tick runs, and a failed attempt is tried again at the next tick within the window.
A slot missed for longer than WINDOW (beat stopped for hours) is skipped: backups that piled up
must not all start at once when it comes back, nor when scheduling is first turned on.
"""

import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Max, Q

from lifecycle.models import Backup

logger = logging.getLogger(__name__)

MINUTES_PER_DAY = 24 * 60
# How often beat runs the tick (settings.CELERY_BEAT_SCHEDULE["backups-tick"]).
TICK = timedelta(minutes=15)
# How long after its slot an account is still due.
WINDOW = timedelta(hours=1)
# A backup still running after this long lost its worker (killed, redeployed): failed.
RUNNING_TIMEOUT = timedelta(hours=6)
# Ticks never overlap: a second one (two beats by mistake) finds the lock taken and stops.
_TICK_LOCK = 0x7061_6C62_6B75  # "palbku"


def slot_minute(account_id: uuid.UUID) -> int:
    """The account's minute of the day (UTC), from a hash of its id."""
    digest = hashlib.sha256(account_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") % MINUTES_PER_DAY


def slot_start(account_id: uuid.UUID, now: datetime) -> datetime:
    """The latest time, at or before `now`, at which the account's slot began."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight + timedelta(minutes=slot_minute(account_id))
    return start if start <= now else start - timedelta(days=1)


def is_due(account_id: uuid.UUID, *, now: datetime, last_backup: datetime | None) -> bool:
    """Whether the account's scheduled backup should start now, given when its newest running or
    done scheduled backup started."""
    start = slot_start(account_id, now)
    if now - start >= WINDOW:
        return False
    return last_backup is None or last_backup < start


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 of the moment's ISO week (in its time zone: UTC here)."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=moment.weekday())


@dataclass(frozen=True)
class DueAccount:
    id: uuid.UUID
    name: str


def due_accounts(accounts: Iterable[DueAccount], *, now: datetime) -> list[DueAccount]:
    """The accounts whose backup is due now (one query on the registry)."""
    candidates = [
        a for a in accounts if now - slot_start(a.id, now) < WINDOW
    ]  # about WINDOW / 24 h of them: the registry is asked about those only
    if not candidates:
        return []
    last = dict(
        Backup.objects.filter(
            account_id__in=[a.id for a in candidates],
            kind__in=[Backup.Kind.DAILY, Backup.Kind.WEEKLY],
            state__in=[Backup.State.RUNNING, Backup.State.DONE],
            created_at__gt=now - timedelta(days=1) - WINDOW,
        )
        .values("account_id")
        .annotate(newest=Max("created_at"))
        .values_list("account_id", "newest")
    )
    return [a for a in candidates if is_due(a.id, now=now, last_backup=last.get(a.id))]


@transaction.atomic
def start_due_backups(*, now: datetime) -> list[Backup]:
    """Record (running) the scheduled backups due now; the caller enqueues them after commit.
    The first of an account's ISO week is weekly, the others daily."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_TICK_LOCK])
        row = cursor.fetchone()
    if not row or not row[0]:
        logger.warning("another backup tick is running; this one does nothing")
        return []
    _fail_lost_backups(now=now)

    from django_tenants.utils import get_public_schema_name

    from accounts.models import Account

    accounts = (
        DueAccount(id=pk, name=name)
        for pk, name in Account.objects.exclude(schema_name=get_public_schema_name())
        .values_list("id", "name")
        .iterator(chunk_size=2000)
    )
    due = due_accounts(accounts, now=now)
    if not due:
        return []
    with_weekly = set(
        Backup.objects.filter(
            account_id__in=[a.id for a in due],
            kind=Backup.Kind.WEEKLY,
            state__in=[Backup.State.RUNNING, Backup.State.DONE],
            created_at__gte=week_start(now),
        ).values_list("account_id", flat=True)
    )
    return Backup.objects.bulk_create(
        Backup(
            account_id=account.id,
            account_name=account.name,
            kind=Backup.Kind.DAILY if account.id in with_weekly else Backup.Kind.WEEKLY,
            state=Backup.State.RUNNING,
            created_at=now,
        )
        for account in due
    )


def _fail_lost_backups(*, now: datetime) -> None:
    lost = Backup.objects.filter(
        Q(state=Backup.State.RUNNING) & Q(created_at__lt=now - RUNNING_TIMEOUT)
    ).update(
        state=Backup.State.FAILED,
        error=f"still running after {RUNNING_TIMEOUT}: its worker stopped before it finished",
        finished_at=now,
    )
    if lost:
        logger.warning("%d backups lost their worker and were marked failed", lost)
