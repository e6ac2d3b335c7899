"""Benchmark: resident memory per idle IRC connection held by one gateway process.

    .venv/bin/python benchmarks/irc_idle.py [--accounts N] [--servers-per-account S]
                                            [--tracemalloc] [--keep]

Provisions N accounts (default 250) through `tenancy.services.provision_account`, each with
S servers (default 4, so 1,000 connections) on our own line source (benchmarks/_linesource.py,
in a child process, so its sockets are not in the measured process) and one autojoin channel
per server, created with
autoconnect off. A real `gateway.manager.Gateway` then runs on a thread of this process and
loads every account, holding no connection yet. After a garbage collection, the resident set
size (VmRSS) of this process is the baseline. Then autoconnect goes on in every account and the
gateway resyncs: N x S connections register (CAP, 001, 005), join their channel, store what
that produced (the connect notice, the MOTD line, the JOIN, the member list) and go idle. When
every connection has joined and the store has been idle for 2 seconds, another collection, and
the RSS again. The difference, divided by the connections, is the cost of one idle connection:
its IrcConnection, its asyncio stream, transport and tasks, its share of what the store and the
connection-state publishing left behind, and whatever the allocator did not give back.

With --tracemalloc the Python allocations made while connecting are traced (which costs memory
of its own, so the RSS figures are then not the result) and the biggest sites go to stderr.

It runs in a database of its own (`palaver_bench_irc_idle` on the server DATABASE_URL names),
dropped and recreated at the start and dropped at the end unless --keep.

stdout gets exactly one line:
    rss_kb_per_connection=… connections=… rss_mb=… rss_mb_before=…
rss_mb is the process's RSS with every connection up; rss_mb_before the baseline.
"""

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from _linesource import (  # noqa: E402
    GatewayThread,
    LineSource,
    create_accounts,
    forget_server_states,
    raise_fd_limit,
    rss_kb,
    wait_until,
)
from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
)

DEFAULT_DATABASE = "palaver_bench_irc_idle"
# Sockets this process needs besides the IRC connections (database, Redis, files).
SPARE_FDS = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=250, help="accounts (default 250)")
    parser.add_argument(
        "--servers-per-account",
        type=int,
        default=4,
        help="servers per account, one connection each (default 4)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations while connecting; the top sites go to stderr",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.servers_per_account < 1:
        parser.error("--accounts and --servers-per-account must be at least 1")
    return args


def settled_rss_kb() -> int:
    """RSS after a full collection and a moment for the loop to finish what it was doing."""
    time.sleep(1.0)
    gc.collect()
    time.sleep(0.5)
    return rss_kb()


def turn_autoconnect_on(accounts: list[Any]) -> None:
    from channels_app.models import Server
    from tenancy import switch

    for account in accounts:
        with switch(account):
            Server.objects.update(autoconnect=True)


def all_joined(gateway: Any, expected: int) -> bool:
    connections = list(gateway.connections.values())
    return len(connections) == expected and all(c.registered and c.joined for c in connections)


def report_allocations(
    after: tracemalloc.Snapshot, before: tracemalloc.Snapshot, connections: int
) -> None:
    """What the traced allocations made while connecting add up to, per connection: by file,
    then the biggest lines."""

    def where(frame: tracemalloc.Frame) -> str:
        name = frame.filename.removeprefix(str(PROJECT_DIR) + "/")
        return name.split("/lib/python3.11/")[-1]

    by_file = after.compare_to(before, "filename")
    total = sum(stat.size_diff for stat in by_file)
    log(f"traced Python allocations: {total / 1024 / connections:.1f} kB per connection")
    for stat in by_file[:10]:
        log(f"  {stat.size_diff / 1024 / connections:6.2f} kB  {where(stat.traceback[0])}")
    log("biggest lines:")
    for stat in after.compare_to(before, "lineno")[:15]:
        frame = stat.traceback[0]
        log(
            f"  {stat.size_diff / 1024 / connections:6.2f} kB "
            f"{stat.count_diff / connections:5.1f} blocks  {where(frame)}:{frame.lineno}"
        )


def run(args: argparse.Namespace, result_out: TextIO) -> None:
    from django.core.management import call_command

    expected = args.accounts * args.servers_per_account
    fds = raise_fd_limit()
    if fds < expected + SPARE_FDS:
        raise BenchmarkError(f"{expected:,} connections need more than {fds:,} open files")
    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()

    with LineSource() as source:
        log(f"line source on 127.0.0.1:{source.port} (pid {source.pid})")
        accounts = create_accounts(
            args.accounts,
            port=source.port,
            servers_per_account=args.servers_per_account,
            autoconnect=False,
        )
        runner = GatewayThread()
        try:
            gateway = runner.start(timeout=300)
            runner.wait_quiet(60)
            if gateway.connections:
                raise BenchmarkError("the gateway connected before autoconnect was on")
            before = settled_rss_kb()
            log(f"gateway holds {len(gateway.accounts):,} accounts, no connection: {before:,} kB")

            if args.tracemalloc:
                tracemalloc.start(10)
                traced_before = tracemalloc.take_snapshot()
            started = time.monotonic()
            turn_autoconnect_on(accounts)
            runner.call(gateway.sync_all(), timeout=600)
            log(
                f"connecting {expected:,}: the gateway's resync of {args.accounts:,} accounts took "
                f"{time.monotonic() - started:.1f} s"
            )
            source.wait_joined(expected, 600)
            wait_until(lambda: all_joined(gateway, expected), 120, "every connection to join")
            runner.wait_quiet(120, quiet=2.0)
            took = time.monotonic() - started
            log(
                f"{expected:,} connections registered and joined in {took:.1f} s; "
                f"{runner.state_publish_failures.count:,} connection-state events could not be "
                "published meanwhile"
            )
            after = settled_rss_kb()
            if args.tracemalloc:
                snapshot = tracemalloc.take_snapshot()
                tracemalloc.stop()
                report_allocations(snapshot, traced_before, expected)
            stats = source.stats()
            if stats["joined"] != expected:
                raise BenchmarkError(f"the source saw {stats} while measuring")
        finally:
            runner.stop()
            if runner.failed is not None:
                raise BenchmarkError(f"the gateway crashed: {runner.failed!r}")
    forget_server_states(accounts)

    per_connection = (after - before) / expected
    log(
        f"RSS {before / 1024:,.1f} MB -> {after / 1024:,.1f} MB: "
        f"{per_connection:.1f} kB per idle connection"
    )
    print(
        f"rss_kb_per_connection={per_connection:.1f} connections={expected} "
        f"rss_mb={after / 1024:.1f} rss_mb_before={before / 1024:.1f}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_in_scratch_database(
        parse_args(argv), title="IRC idle benchmark", run=lambda a, _url, out: run(a, out)
    )


if __name__ == "__main__":
    sys.exit(main())
