"""Benchmark: IRC lines stored per second by one gateway process, from a flood over 100 accounts.

    .venv/bin/python benchmarks/irc_store.py [--accounts N] [--lines L] [--keep]

Provisions N accounts (default 100) through `tenancy.services.provision_account`, each with one
server on our own line source (benchmarks/_linesource.py: InspIRCd tops out near 8,000 lines/s
here) and one autojoin channel. Runs a real `gateway.manager.Gateway` on a thread of this
process, as `manage.py irc_gateway` runs it, waits until every connection has registered and
joined and the store is idle, then has the source write L PRIVMSG lines (default 200,000),
spread evenly over the N connections, as fast as the sockets take them.

The clock runs from the first line written to the moment the gateway's Store reports the last
of them written (its `stored` counter moves after each batch commits). Then it counts the rows
in every account's schema: each account must hold its share, every msgid exactly once.

Two references, measured in the same run, so that the result can be read as ratios on a
machine whose absolute speed drifts:
- the source's ceiling: before the gateway starts, the same number of lines flooded into N bare
  sockets that only count newlines (a result near it would measure the source, not the gateway);
- the database floor: after the gateway stops, the same number of rows written through the
  cheapest path PostgreSQL has, COPY on a plain psycopg connection, 500 rows of one account per
  transaction, accounts in turn, into the same tables with the same indexes (no parsing, no ORM,
  no ids read back, no live events).

It runs in a database of its own (`palaver_bench_irc` on the server DATABASE_URL names),
dropped and recreated at the start and dropped at the end unless --keep.

stdout gets exactly one line:
    lines_per_s=… lines=… accounts=… seconds=… floor_lines_per_s=… ratio=…
ratio is lines_per_s / floor_lines_per_s. With --profile, cProfile output for the gateway's two
threads goes to stderr (and the rate, slowed by the profiler, is no result).
"""

import argparse
import asyncio
import cProfile
import io
import itertools
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

import psycopg  # noqa: E402
from _linesource import (  # noqa: E402
    SENDERS,
    GatewayThread,
    LineSource,
    chat_text,
    create_accounts,
    forget_server_states,
    raise_fd_limit,
    server_time,
    wait_until,
)
from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
)
from psycopg import sql  # noqa: E402

DEFAULT_DATABASE = "palaver_bench_irc"
FLOOD_PREFIX = "flood"
# Rows per transaction for the floor: about what one account gets in one of the gateway's
# batches when every connection is busy.
FLOOR_CHUNK = 500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--accounts", type=int, default=100, help="accounts, one connection each (default 100)"
    )
    parser.add_argument(
        "--lines", type=int, default=200_000, help="lines to flood in total (default 200,000)"
    )
    parser.add_argument(
        "--timeout", type=float, default=150, help="seconds to wait for the store (default 150)"
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the gateway's two threads during the flood; the top entries go to stderr"
        " (slows the gateway down: the rate is then not a result)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.lines < args.accounts:
        parser.error("need at least one account and one line per account")
    return args


async def source_ceiling(port: int, connections: int, source: LineSource, lines: int) -> float:
    """Lines/s the source writes into bare sockets that register, join and count newlines."""
    counted = 0
    done = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal counted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"NICK raw{i}\r\nUSER raw 0 * :raw\r\nJOIN #bench\r\n".encode())
        try:
            while (line := await reader.readline()) and b" 366 " not in line:
                pass  # registration, up to the end of the JOIN's names list
            while chunk := await reader.read(256 * 1024):
                counted += chunk.count(b"\n")
                if counted >= lines:
                    done.set()
        finally:
            writer.close()

    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(client(i)) for i in range(connections)]
    await loop.run_in_executor(None, source.wait_joined, connections, 30)
    flood = await loop.run_in_executor(None, source.flood, lines, "calibration")
    await asyncio.wait_for(done.wait(), 120)
    ended = time.time()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return lines / (ended - flood.started)


class ThreadProfiles:
    """cProfile on the gateway's event-loop thread and on its database thread (a profiler
    only sees the thread that enabled it)."""

    def __init__(self, runner: GatewayThread) -> None:
        self.runner = runner
        self.loop = cProfile.Profile()
        self.db = cProfile.Profile()

    def _on_db_thread(self, fn: Callable[[], object]) -> None:
        gateway = self.runner.gateway
        assert gateway is not None

        async def call() -> None:
            await gateway.store.run_sync(fn)

        self.runner.call(call())

    def start(self) -> None:
        self._on_db_thread(self.db.enable)
        self.runner.call(self._enable_loop())

    async def _enable_loop(self) -> None:
        self.loop.enable()

    async def _disable_loop(self) -> None:
        self.loop.disable()

    def stop_and_report(self, top: int = 30) -> None:
        self._on_db_thread(self.db.disable)
        self.runner.call(self._disable_loop())
        for name, profile in (("event loop", self.loop), ("database", self.db)):
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).strip_dirs().sort_stats("cumulative")
            stats.print_stats(top)
            stats.sort_stats("tottime").print_stats(top)
            log(f"--- gateway {name} thread, by cumulative time ---\n{out.getvalue()}")


def database_floor(bench_url: str, accounts: list[Any], lines: int, chunk: int) -> float:
    """Lines/s PostgreSQL takes the same rows at through the cheapest path there is: COPY on a
    plain psycopg connection, `chunk` rows of one account per transaction, accounts in turn.
    No parsing, no ORM, no ids read back, no live events: the floor under the gateway."""
    from datetime import UTC, datetime

    from psycopg.types.json import Jsonb

    from channels_app.models import Channel
    from tenancy import switch

    share, extra = divmod(lines, len(accounts))
    now = datetime.now(UTC)
    Chunk = tuple[str, list[tuple[object, ...]]]
    per_account: list[list[Chunk]] = []
    for i, account in enumerate(accounts):
        with switch(account):
            channel_id = Channel.objects.get(name="#bench").pk
        rows: list[tuple[object, ...]] = [
            (
                channel_id,
                "message",
                SENDERS[seq % len(SENDERS)],
                chat_text(seq),
                now,
                f"floor{i}.{seq}",
                Jsonb({"time": server_time(now.timestamp()), "msgid": f"floor{i}.{seq}"}),
                now,
            )
            for seq in range(share + (1 if i < extra else 0))
        ]
        per_account.append(
            [
                (account.schema_name, rows[start : start + chunk])
                for start in range(0, len(rows), chunk)
            ]
        )
    # Accounts in turn, as a flood over all of them arrives.
    work = [c for group in itertools.zip_longest(*per_account) for c in group if c is not None]
    with psycopg.connect(bench_url, autocommit=True) as conn:
        started = time.perf_counter()
        for schema_name, rows in work:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(schema_name))
                )
                with conn.cursor().copy(
                    "COPY channels_app_message (channel_id, kind, sender, text, server_time,"
                    " msgid, tags, created_at) FROM STDIN"
                ) as copy:
                    for row in rows:
                        copy.write_row(row)
        seconds = time.perf_counter() - started
    return lines / seconds


def count_rows(accounts: list[Any], prefix: str) -> dict[str, tuple[int, int]]:
    """Per account: flood rows and distinct msgids among them."""
    from django.db import connection

    from tenancy import switch

    counts = {}
    for account in accounts:
        with switch(account), connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), count(DISTINCT msgid) FROM channels_app_message "
                "WHERE kind = 'message' AND msgid LIKE %s",
                [prefix + "%"],
            )
            row = cursor.fetchone()
            assert row is not None
            counts[str(account.pk)] = (int(row[0]), int(row[1]))
    return counts


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command

    log(f"open files allowed: {raise_fd_limit()}")
    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()

    with LineSource() as source:
        log(f"line source on 127.0.0.1:{source.port} (pid {source.pid})")
        ceiling = asyncio.run(source_ceiling(source.port, args.accounts, source, args.lines))
        log(f"source ceiling: {ceiling:,.0f} lines/s into {args.accounts} bare sockets")
        wait_until(lambda: source.stats()["connections"] == 0, 10, "the bare sockets to close")

        accounts = create_accounts(args.accounts, port=source.port)
        runner = GatewayThread()
        try:
            gateway = runner.start()
            log("gateway ready; waiting for every connection to register and join")
            source.wait_joined(args.accounts, 120)
            runner.wait_quiet(60)
            store = gateway.store
            before = store.stored
            profiles = ThreadProfiles(runner) if args.profile else None
            if profiles is not None:
                profiles.start()
            log(f"flooding {args.lines:,} lines over {args.accounts} connections")
            flood = source.flood(args.lines, prefix=FLOOD_PREFIX)
            written_s = flood.finished - flood.started
            log(f"source wrote its last byte after {written_s:.2f} s; waiting for the store")
            target = before + args.lines
            deadline = time.monotonic() + args.timeout
            while store.stored < target:
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        f"stored {store.stored - before:,} of {args.lines:,} lines "
                        f"in {args.timeout:.0f} s (backlog {store.backlog:,})"
                    )
                time.sleep(0.002)
            ended = time.time()
            seconds = ended - flood.started
            if profiles is not None:
                profiles.stop_and_report()
            runner.wait_quiet(30)
            extra = store.stored - target
        finally:
            runner.stop()
            if runner.failed is not None:
                raise BenchmarkError(f"the gateway crashed: {runner.failed!r}")

    counts = count_rows(accounts, FLOOD_PREFIX)
    share = args.lines // args.accounts
    wrong = {k: v for k, v in counts.items() if v[0] != v[1] or not share <= v[0] <= share + 1}
    total = sum(rows for rows, _ in counts.values())
    if wrong or total != args.lines or extra:
        raise BenchmarkError(
            f"expected {args.lines:,} rows, each msgid once; found {total:,} "
            f"({len(wrong)} accounts off, e.g. {list(wrong.items())[:3]}; {extra} extra stored)"
        )
    log(f"checked: {total:,} rows over {len(counts)} accounts, each msgid exactly once")
    floor = database_floor(bench_url, accounts, args.lines, FLOOR_CHUNK)
    log(f"database floor: {floor:,.0f} lines/s (COPY, {FLOOR_CHUNK} rows per transaction)")
    forget_server_states(accounts)
    rate = args.lines / seconds
    log(
        f"gateway: {rate:,.0f} lines/s, {rate / floor:.2f} of the database floor, "
        f"{rate / ceiling:.1%} of the source's ceiling; "
        f"socket writes done at {written_s:.2f} s, last row committed at {seconds:.2f} s"
    )
    print(
        f"lines_per_s={rate:.0f} lines={args.lines} accounts={args.accounts} "
        f"seconds={seconds:.2f} floor_lines_per_s={floor:.0f} ratio={rate / floor:.2f}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_in_scratch_database(parse_args(argv), title="IRC store benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
