"""The scheduler's side of the index: claiming due entries, on the public schema only."""

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from accounts.models import Account
from scheduling.models import ScheduleEntry

# A claimed entry is left alone this long: time enough for the fire task to run and move it
# on; if the worker died, the claim lapses and a later tick hands the entry out again.
CLAIM_SECONDS = 60
CLAIM_BATCH = 500


@dataclass(frozen=True)
class Claimed:
    schema_name: str
    schedule_id: int
    next_run_at: datetime


# One statement: find the due, unclaimed entries (the next_run_at index, nothing else scanned),
# lock them skipping any another tick holds, mark them claimed and say whose they are.
_CLAIM = f"""
UPDATE {ScheduleEntry._meta.db_table} AS e
   SET claimed_until = now() + make_interval(secs => %(lease)s)
  FROM {Account._meta.db_table} AS a
 WHERE a.id = e.account_id
   AND e.id IN (
        SELECT id FROM {ScheduleEntry._meta.db_table}
         WHERE next_run_at <= now()
           AND (claimed_until IS NULL OR claimed_until < now())
         ORDER BY next_run_at
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED)
RETURNING a.schema_name, e.schedule_id, e.next_run_at
"""


def claim_due(*, limit: int = CLAIM_BATCH, lease_seconds: int = CLAIM_SECONDS) -> list[Claimed]:
    """Claim up to `limit` due entries across every account and return them, oldest first.
    Never enters an account's schema: the schema name comes from the account's public row."""
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, {"lease": lease_seconds, "limit": limit})
        rows = cursor.fetchall()
    claimed = [Claimed(schema_name=s, schedule_id=i, next_run_at=t) for s, i, t in rows]
    return sorted(claimed, key=lambda c: c.next_run_at)
