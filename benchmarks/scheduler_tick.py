"""Benchmark: one scheduler tick (agents.scheduler_tick) over 10,000 accounts.

    .venv/bin/python benchmarks/scheduler_tick.py [--accounts N] [--due-percent P] [--ticks T]
        [--database NAME] [--redis-db K] [--keep]

In a database of its own (`palaver_bench_tick`, recreated, dropped at the end unless --keep) it
migrates the public schema and creates N Account rows (default 10,000) with one schedule index
entry each (scheduling.ScheduleEntry): P% of them (default 1%) due, the rest in the next days.
Account rows are enough: the tick reads the public index alone and never enters a schema, so
none is provisioned. The fire tasks it enqueues go to a Redis database of the benchmark's own
(--redis-db, default 10), emptied after every tick; no worker consumes them.

Each of T timed ticks (default 200) first (untimed) makes the due entries claimable again, then
runs the tick as Celery beat would: the claim statement, then one `agents.fire_schedule` message
per due entry published to Redis, or, past agents.tasks.DISPATCH_CHUNK (20) due entries, one
`agents.dispatch_due` message per 20, which workers run in parallel to publish the fires. The
benchmark then runs those chunks itself, one by one, timing each (dispatch_chunk_ms_*), and
checks that every due entry got its fire message. It also times the claim statement alone, and
a tick with nothing due.

stdout gets exactly one line:
    accounts=… entries=… due=… tick_ms_p50=… tick_ms_p99=… claim_ms_p50=… claim_ms_p99=…
    idle_tick_ms_p50=… idle_tick_ms_p99=… ticks=… dispatch_chunks=… dispatch_chunk_ms_p50=…
    dispatch_chunk_ms_p99=…
tick_ms_* is the whole tick with `due` entries handed out; claim_ms_* the claim statement
alone (rolled back); idle_tick_ms_* a tick that finds nothing due. Target: tick_ms_p99 < 100.
Everything else goes to stderr.
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from provisioning import back_to_public, log, run_in_scratch_database  # noqa: E402

DEFAULT_DATABASE = "palaver_bench_tick"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts (default 10,000)")
    parser.add_argument(
        "--due-percent", type=float, default=1.0, help="entries due at each tick (default 1)"
    )
    parser.add_argument("--ticks", type=int, default=200, help="timed ticks (default 200)")
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument(
        "--redis-db", type=int, default=10, help="Redis database for the broker (default 10)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.ticks < 1 or not 0 <= args.due_percent <= 100:
        parser.error("need accounts >= 1, ticks >= 1 and 0 <= due-percent <= 100")
    return args


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def populate(accounts: int, due: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from accounts.models import Account, schema_name_for
    from scheduling.models import ScheduleEntry

    now = timezone.now()
    rows = []
    for i in range(accounts):
        account_id = uuid.uuid4()
        rows.append(
            Account(id=account_id, name=f"Tick {i}", schema_name=schema_name_for(account_id))
        )
    with transaction.atomic():
        Account.objects.bulk_create(rows, batch_size=2000)
        ScheduleEntry.objects.bulk_create(
            (
                ScheduleEntry(
                    account=account,
                    schedule_id=1,
                    # Due ones spread over the last minute; the rest over the next days.
                    next_run_at=(
                        now - timedelta(seconds=i % 60)
                        if i < due
                        else now + timedelta(minutes=5 + i % 5000)
                    ),
                )
                for i, account in enumerate(rows)
            ),
            batch_size=2000,
        )
    with transaction.get_connection().cursor() as cursor:
        cursor.execute("ANALYZE scheduling_scheduleentry")
        cursor.execute("ANALYZE accounts_account")


def release_claims() -> None:
    from scheduling.models import ScheduleEntry

    ScheduleEntry.objects.filter(claimed_until__isnull=False).update(claimed_until=None)


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    import base64
    import json

    import redis
    from django.conf import settings
    from django.core.management import call_command
    from django.db import transaction

    from agents.tasks import DISPATCH_CHUNK, dispatch_due, scheduler_tick
    from scheduling.services import claim_due

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    due = round(args.accounts * args.due_percent / 100)
    started = time.monotonic()
    populate(args.accounts, due)
    log(f"{args.accounts} accounts and entries, {due} due, in {time.monotonic() - started:.1f} s")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("celery")

    for _ in range(5):  # warm-up: connections, plans, the broker's connection pool
        scheduler_tick()
        release_claims()
    broker.delete("celery")

    def taken(task_name: str) -> list[list[object]]:
        """The args of the `task_name` messages in the broker, which is emptied."""
        found = []
        for raw in broker.lrange("celery", 0, -1):
            message = json.loads(raw)
            if message["headers"]["task"] == task_name:
                found.append(json.loads(base64.b64decode(message["body"]))[0])
        broker.delete("celery")
        return found

    chunks = -(-due // DISPATCH_CHUNK) if due > DISPATCH_CHUNK else 0
    tick_ms: list[float] = []
    dispatch_ms: list[float] = []
    for _ in range(args.ticks):
        release_claims()
        begin = time.perf_counter()
        handed = scheduler_tick()
        tick_ms.append((time.perf_counter() - begin) * 1000)
        if handed != due:
            raise RuntimeError(f"the tick handed out {handed} entries, expected {due}")
        if chunks:
            published = taken("agents.dispatch_due")
            if len(published) != chunks:
                raise RuntimeError(f"{len(published)} dispatch messages, expected {chunks}")
            # What the workers then do, each chunk in parallel in production: timed one by one.
            for chunk_args in published:
                begin = time.perf_counter()
                dispatch_due(*chunk_args)
                dispatch_ms.append((time.perf_counter() - begin) * 1000)
        fired = len(taken("agents.fire_schedule"))
        if fired != due:
            raise RuntimeError(f"{fired} fire messages in the broker, expected {due}")

    claim_ms: list[float] = []
    for _ in range(args.ticks):
        release_claims()
        with transaction.atomic():
            begin = time.perf_counter()
            claimed = claim_due()
            claim_ms.append((time.perf_counter() - begin) * 1000)
            transaction.set_rollback(True)
        if len(claimed) != due:
            raise RuntimeError(f"claimed {len(claimed)}, expected {due}")

    # Everything due is claimed now: what a tick costs between runs.
    scheduler_tick()
    broker.delete("celery")
    idle_ms: list[float] = []
    for _ in range(args.ticks):
        begin = time.perf_counter()
        if scheduler_tick() != 0:
            raise RuntimeError("an idle tick handed something out")
        idle_ms.append((time.perf_counter() - begin) * 1000)

    log(f"tick max {max(tick_ms):.2f} ms, claim max {max(claim_ms):.2f} ms")
    print(
        f"accounts={args.accounts} entries={args.accounts} due={due} "
        f"tick_ms_p50={statistics.median(tick_ms):.2f} tick_ms_p99={percentile(tick_ms, 0.99):.2f} "
        f"claim_ms_p50={statistics.median(claim_ms):.2f} "
        f"claim_ms_p99={percentile(claim_ms, 0.99):.2f} "
        f"idle_tick_ms_p50={statistics.median(idle_ms):.2f} "
        f"idle_tick_ms_p99={percentile(idle_ms, 0.99):.2f} ticks={args.ticks} "
        f"dispatch_chunks={chunks} dispatch_chunk_ms_p50="
        f"{statistics.median(dispatch_ms) if dispatch_ms else 0:.2f} dispatch_chunk_ms_p99="
        f"{percentile(dispatch_ms, 0.99) if dispatch_ms else 0:.2f}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The fire messages go to a Redis database of the benchmark's, never the development one.
    from config.env import setting

    redis_url = setting("REDIS_URL", default="")
    if not redis_url:
        log("REDIS_URL is not set: the benchmark needs a Redis server it may write to")
        return 1
    parts = urlsplit(redis_url)
    os.environ["REDIS_URL"] = urlunsplit(parts._replace(path=f"/{args.redis_db}"))
    return run_in_scratch_database(args, title="scheduler tick benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
