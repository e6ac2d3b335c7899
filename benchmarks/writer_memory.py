"""Benchmark: the gateway writer's PostgreSQL backend memory with many active accounts.

    .venv/bin/python benchmarks/writer_memory.py [--accounts N] [--rounds R] [--recycle on|off]
        [--after-schemas S] [--after-bytes B] [--database NAME] [--keep]

Provisions N accounts (default 10,000) through `tenancy.services.provision_account`, each with
one server, in a database of its own. That takes about a minute per thousand accounts here, so
with --keep an existing database of that name is reused and only the missing accounts are
added: a rerun starts writing at once.

Then it feeds lines for every account through one `gateway.storage.Store` (`Store.put` with
`Line` records, no IRC) for R rounds (default 3): each round puts --lines-per-account lines
(default 2) for each of the N accounts and waits until the store has written them, so every
account's schema is written R times over. After every batch, on the writer thread (so between
batches, where the recycler acts), it reads the writer backend's memory
(`SELECT sum(total_bytes) FROM pg_backend_memory_contexts`).

--recycle off sets DATABASE_RECYCLE_AFTER_SCHEMAS and DATABASE_RECYCLE_AFTER_BYTES to 0 (the
writer keeps one connection, as before tenancy/db_memory.py); on uses --after-schemas and
--after-bytes (default: the settings' defaults).

stdout gets exactly one line:
    accounts=… lines_per_s=… backend_bytes_max=… backend_bytes_p50=… recycles=… lines=…
    recycle=… after_schemas=… after_bytes=… reconnect_ms_p50=… memory_query_ms_p50=…
lines_per_s counts from the first put to the last batch committed, over all rounds;
backend_bytes_* are over the per-batch samples; reconnect_ms_p50 is the median time to close
and reopen a connection (Django's own connect, SET search_path and a first query on the public
schema) and memory_query_ms_p50 the median of the memory query, both timed after the rounds.
Everything else goes to stderr.
"""

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

import psycopg  # noqa: E402
import psycopg.sql  # noqa: E402
from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
    server_url,
    with_database,
)

DEFAULT_DATABASE = "palaver_bench_writer_memory"
NAME_PREFIX = "Writer "
# The provisioning connection creates every schema, and grows with them as the writer would:
# it is closed every this many accounts.
PROVISION_RECONNECT_EVERY = 200
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--accounts", type=int, default=10_000, help="active accounts (default 10,000)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="times every account is written (default 3)"
    )
    parser.add_argument(
        "--lines-per-account",
        type=int,
        default=2,
        help="lines put for each account per round (default 2)",
    )
    parser.add_argument("--recycle", choices=["on", "off"], default="on")
    parser.add_argument(
        "--after-schemas",
        type=int,
        default=None,
        help="DATABASE_RECYCLE_AFTER_SCHEMAS for --recycle on (default: the setting's)",
    )
    parser.add_argument(
        "--after-bytes",
        type=int,
        default=None,
        help="DATABASE_RECYCLE_AFTER_BYTES for --recycle on (default: the setting's)",
    )
    parser.add_argument(
        "--reconnects", type=int, default=50, help="reconnects timed at the end (default 50)"
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database (default {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the database at the end, and reuse it (adding missing accounts) if it exists",
    )
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.rounds < 0 or args.lines_per_account < 1:
        parser.error("need at least one account, one line per account, and rounds >= 0")
    return args


def database_exists(name: str) -> bool:
    admin_url = with_database(server_url(), "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return row is not None


def ensure_accounts(count: int) -> list[tuple[Any, int]]:
    """`count` benchmark accounts, each with one server: (account, server id). Those a kept
    database already holds are reused; the rest are provisioned, each in one transaction with
    its server, so an interrupted run leaves whole accounts only."""
    from django.db import connection, transaction
    from tqdm import tqdm

    from accounts.models import Account
    from channels_app.models import Server
    from tenancy import switch
    from tenancy.services import provision_account

    existing = Account.objects.filter(name__startswith=NAME_PREFIX).count()
    if existing < count:
        log(f"{existing} accounts exist; provisioning {count - existing} more")
    for i in tqdm(
        range(existing, count),
        desc="provisioning",
        unit="account",
        file=sys.stderr,
        mininterval=10,
    ):
        with transaction.atomic():
            account = provision_account(name=f"{NAME_PREFIX}{i:05d}")
            with switch(account):
                # The first row of a fresh schema: its id is 1, so the run needs no query per
                # schema to find it (which would grow this connection as the writer grows).
                server = Server.objects.create(
                    name="Writer benchmark",
                    host="127.0.0.1",
                    port=6667,
                    tls=False,
                    nick=f"w{i}",
                    autoconnect=False,
                )
        if server.pk != 1:
            raise BenchmarkError(f"account {i}'s server has id {server.pk}, expected 1")
        if i % PROVISION_RECONNECT_EVERY == PROVISION_RECONNECT_EVERY - 1:
            connection.close()
    back_to_public()
    accounts = list(Account.objects.filter(name__startswith=NAME_PREFIX).order_by("name")[:count])
    if len(accounts) != count:
        raise BenchmarkError(f"expected {count} accounts, found {len(accounts)}")
    return [(account, 1) for account in accounts]


def count_messages(bench_url: str, accounts: list[tuple[Any, int]]) -> list[int]:
    """Messages in every account's schema, on plain connections renewed every 500 schemas (one
    connection reading them all would grow as the writer does)."""
    counts: list[int] = []
    conn: psycopg.Connection[Any] | None = None
    try:
        for i, (account, _server_id) in enumerate(accounts):
            if i % 500 == 0:
                if conn is not None:
                    conn.close()
                conn = psycopg.connect(bench_url, autocommit=True)
            assert conn is not None
            row = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}.channels_app_message").format(
                    psycopg.sql.Identifier(account.schema_name)
                )
            ).fetchone()
            counts.append(row[0] if row else 0)
    finally:
        if conn is not None:
            conn.close()
    return counts


def timed_reconnects(count: int) -> list[float]:
    """Milliseconds to close this thread's connection and have Django open the next one, up to
    its first query answered (search_path set, on the public schema)."""
    from django.db import connection

    samples = []
    connection.ensure_connection()
    for _ in range(count):
        start = time.perf_counter()
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        samples.append((time.perf_counter() - start) * 1000)
    return samples


class Sampler:
    """Reads the writer backend's memory on the writer thread, where the recycler runs: every
    SAMPLE_SECONDS, and just before the recycler closes the connection for its schema count
    (the peak). The query's cost grows with the backend (~220 ms at 500 MB): after each sample
    the writer gets at least SAMPLE_COST_FACTOR times that long before the next, so sampling
    takes at most ~5% of its time."""

    SAMPLE_SECONDS = 0.5
    SAMPLE_COST_FACTOR = 20

    def __init__(self, after_schemas: int) -> None:
        self.after_schemas = after_schemas
        self.bytes: list[int] = []
        self.query_ms: list[float] = []
        self.at = 0.0
        self.wait = self.SAMPLE_SECONDS

    def sample(self, connection: Any) -> None:
        from tenancy import db_memory

        start = time.perf_counter()
        used = db_memory.backend_memory(connection)
        self.at = time.monotonic()
        if used is None:
            raise BenchmarkError("the server cannot report backend memory (PostgreSQL < 14?)")
        self.bytes.append(used)
        seconds = time.perf_counter() - start
        self.query_ms.append(seconds * 1000)
        self.wait = max(self.SAMPLE_SECONDS, seconds * self.SAMPLE_COST_FACTOR)

    def wrap(self, maybe_recycle: Any) -> Any:
        from tenancy import db_memory

        def sampled(connection: Any) -> str | None:
            if connection.connection is not None and not connection.in_atomic_block:
                due = time.monotonic() - self.at >= self.wait
                peak = bool(self.after_schemas) and (
                    db_memory.schemas_touched(connection) >= self.after_schemas
                )
                if due or peak:
                    self.sample(connection)
            reason: str | None = maybe_recycle(connection)
            return reason

        return sampled


def write_rounds(
    args: argparse.Namespace, accounts: list[tuple[Any, int]], sampler: Sampler
) -> tuple[float, int]:
    """Seconds from the first put to the last commit, and lines stored."""
    from django.db import connection

    from gateway.storage import Line, Store

    store = Store(publish=False)
    for account, _server_id in accounts:
        store.add_account(account)

    async def main() -> float:
        task = asyncio.create_task(store.run())
        try:
            started = time.perf_counter()
            expected = 0
            for r in range(args.rounds):
                round_started = time.perf_counter()
                for k in range(args.lines_per_account):
                    for i, (account, server_id) in enumerate(accounts):
                        store.put(
                            Line(
                                account.pk,
                                server_id,
                                "#bench",
                                "channel",
                                "message",
                                "carol",
                                f"round {r} line {k} for account {i}",
                                T0 + timedelta(seconds=r * 10 + k),
                                msgid=f"r{r}k{k}-{uuid.uuid4().hex[:8]}",
                            )
                        )
                expected += args.lines_per_account * len(accounts)
                while store.stored < expected:
                    if task.done():
                        task.result()  # the writer loop died: its exception, here
                        raise BenchmarkError("the store's writer loop ended")
                    if store.dropped:
                        raise BenchmarkError(f"the store dropped {store.dropped} lines")
                    await asyncio.sleep(0.005)
                log(
                    f"round {r + 1}/{args.rounds}: "
                    f"{args.lines_per_account * len(accounts):,} lines in "
                    f"{time.perf_counter() - round_started:.1f} s; writer backend "
                    f"{max(sampler.bytes, default=0) / 2**20:.0f} MiB max so far"
                )
            seconds = time.perf_counter() - started
            # The state the writer ends in, after its last batch.
            await store.run_sync(sampler.sample, connection)
            await store.drain()
            return seconds
        finally:
            task.cancel()
            await store.close()

    seconds = asyncio.run(main())
    return seconds, store.stored


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.conf import settings
    from django.core.management import call_command

    from tenancy import db_memory

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    started = time.monotonic()
    accounts = ensure_accounts(args.accounts)
    log(f"{len(accounts)} accounts ready after {time.monotonic() - started:.0f} s")
    if args.rounds == 0:
        return

    if args.recycle == "off":
        settings.DATABASE_RECYCLE_AFTER_SCHEMAS = 0
        settings.DATABASE_RECYCLE_AFTER_BYTES = 0
    else:
        if args.after_schemas is not None:
            settings.DATABASE_RECYCLE_AFTER_SCHEMAS = args.after_schemas
        if args.after_bytes is not None:
            settings.DATABASE_RECYCLE_AFTER_BYTES = args.after_bytes
    after_schemas = settings.DATABASE_RECYCLE_AFTER_SCHEMAS
    after_bytes = settings.DATABASE_RECYCLE_AFTER_BYTES
    log(f"recycle {args.recycle}: after {after_schemas} schemas or {after_bytes:,} bytes")

    before = count_messages(bench_url, accounts)
    sampler = Sampler(after_schemas)
    recycles_before = dict(db_memory.recycles)
    real = db_memory.maybe_recycle
    db_memory.maybe_recycle = sampler.wrap(real)
    try:
        seconds, stored = write_rounds(args, accounts, sampler)
    finally:
        db_memory.maybe_recycle = real
    recycles = {k: db_memory.recycles[k] - recycles_before[k] for k in db_memory.recycles}

    lines = args.rounds * args.lines_per_account * len(accounts)
    after = count_messages(bench_url, accounts)
    wrong = [
        (i, b, a)
        for i, (b, a) in enumerate(zip(before, after, strict=True))
        if a - b != args.rounds * args.lines_per_account
    ]
    if wrong or stored != lines:
        raise BenchmarkError(
            f"expected {args.rounds * args.lines_per_account} new rows in each account and "
            f"{lines} stored; store says {stored}, {len(wrong)} accounts off, e.g. {wrong[:3]}"
        )
    log(f"checked: {lines:,} new rows, {args.rounds * args.lines_per_account} in each account")

    back_to_public()
    reconnect_ms = timed_reconnects(args.reconnects)
    rate = lines / seconds
    log(
        f"{len(sampler.bytes)} memory samples, min {min(sampler.bytes) / 2**20:.1f} MiB; "
        f"memory query {statistics.median(sampler.query_ms):.2f} ms p50, "
        f"{max(sampler.query_ms):.2f} ms max, {sum(sampler.query_ms) / 1000:.1f} s in all "
        f"({sum(sampler.query_ms) / 10 / seconds:.1f}% of the run); recycles by reason {recycles}; "
        f"reconnect {statistics.median(reconnect_ms):.2f} ms p50, {max(reconnect_ms):.2f} max"
    )
    print(
        f"accounts={len(accounts)} lines_per_s={rate:.0f} "
        f"backend_bytes_max={max(sampler.bytes)} "
        f"backend_bytes_p50={statistics.median(sampler.bytes):.0f} "
        f"recycles={sum(recycles.values())} lines={lines} recycle={args.recycle} "
        f"after_schemas={after_schemas} after_bytes={after_bytes} "
        f"reconnect_ms_p50={statistics.median(reconnect_ms):.2f} "
        f"memory_query_ms_p50={statistics.median(sampler.query_ms):.2f}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reuse = args.keep and database_exists(args.database)
    return run_in_scratch_database(
        args, title="writer memory benchmark", run=run, recreate=not reuse
    )


if __name__ == "__main__":
    sys.exit(main())
