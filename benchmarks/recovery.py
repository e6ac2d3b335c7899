"""Benchmark: how fast the gateway recovers what it had not stored when it died.

    .venv/bin/python benchmarks/recovery.py [--lines N] [--accounts A] [--only NAME] [--keep]

Each measurement is a function in MEASUREMENTS: it gets the arguments and the accounts, and
returns its `key=value` fields; the script prints all of them on one line:

journal_replay: a gateway killed with N lines (default 100,000, spread over A accounts, default
10, each line with an IRCv3 msgid as a modern server sends) in its write-ahead journal and none
stored. The journal is written through the Store as the gateway writes it (`Store.put` appends,
the batch fsyncs), and left as SIGKILL leaves it: files written, lock released, nothing trimmed.
The clock then runs from opening that journal, as the next gateway start does
(`gateway.journal.replay`), to the Store reporting the last line committed. Two references in
the same run:
- reading alone: the journal's segments read and decoded (checksums and all), nothing stored;
- the store alone: the same number of lines put into a Store without a journal, timed from the
  first put to the last commit: the rate replay would reach if reading cost nothing.
It then checks that every account holds its lines, each msgid once, and that the journal was
trimmed to nothing.

It runs in a database of its own (`palaver_bench_recovery` on the server DATABASE_URL names),
dropped and recreated at the start and dropped at the end unless --keep; the journal lives in a
temporary directory.

chathistory_backfill: benchmarks/recovery_chathistory.py, run as a child (its docstring says
what it measures: 10,000 lines missed while the gateway was down, asked for with IRCv3
CHATHISTORY after the reconnect), its fields prefixed with chathistory_.

stdout gets exactly one line:
    journal_replay_lines_per_s=… journal_lines=… journal_read_lines_per_s=…
    store_lines_per_s=… replay_ratio=… chathistory_backfill_lines=… chathistory_seconds=…
    chathistory_lines_per_s=… chathistory_page=… chathistory_requests=…
    chathistory_first_request_s=… chathistory_live_lines_per_s=… chathistory_ratio=…
replay_ratio is journal_replay_lines_per_s / store_lines_per_s.
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from _linesource import chat_text, create_accounts  # noqa: E402
from provisioning import BenchmarkError, log, run_in_scratch_database  # noqa: E402

if TYPE_CHECKING:
    from accounts.models import Account
    from gateway.storage import Line, Store

DEFAULT_DATABASE = "palaver_bench_recovery"
T0 = datetime(2026, 11, 30, tzinfo=UTC)

Fields = dict[str, str]
Measurement = Callable[[argparse.Namespace, list["Account"]], Fields]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lines", type=int, default=100_000, help="lines in the journal (default 100,000)"
    )
    parser.add_argument(
        "--accounts", type=int, default=10, help="accounts the lines belong to (default 10)"
    )
    parser.add_argument(
        "--only", choices=sorted(MEASUREMENTS), action="append", help="run only this measurement"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait for the store (default 300)"
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.lines < args.accounts:
        parser.error("need at least one account and one line per account")
    return args


def flood_lines(accounts: list["Account"], server_ids: dict[uuid.UUID, int], count: int,
                prefix: str) -> list["Line"]:  # fmt: skip
    from gateway.storage import Line

    lines = []
    for n in range(count):
        account = accounts[n % len(accounts)]
        at = T0 + timedelta(milliseconds=n)
        sender, text, msgid = f"nick{n % 50}", chat_text(n), f"{prefix}-{n}"
        server_id = server_ids[account.pk]
        line = Line(account.pk, server_id, "#bench", "channel", "message", sender, text, at,
                    msgid=msgid, tags={"msgid": msgid})  # fmt: skip
        lines.append(line)
    return lines


def server_ids(accounts: list["Account"]) -> dict[uuid.UUID, int]:
    from channels_app.models import Server
    from tenancy import switch

    ids = {}
    for account in accounts:
        with switch(account):
            ids[account.pk] = Server.objects.values_list("pk", flat=True).get()
    return ids


def until_stored(store: "Store", target: int, timeout: float) -> Callable[[], Any]:
    async def wait() -> None:
        deadline = time.monotonic() + timeout
        while store.stored < target:
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"stored {store.stored:,} of {target:,} in {timeout:.0f} s "
                    f"(backlog {store.backlog:,})"
                )
            await asyncio.sleep(0.002)

    return wait


def count_rows(accounts: list["Account"], prefix: str) -> dict[uuid.UUID, tuple[int, int]]:
    from channels_app.models import Message
    from tenancy import switch

    counts = {}
    for account in accounts:
        with switch(account):
            rows = Message.objects.filter(msgid__startswith=f"{prefix}-")
            counts[account.pk] = (rows.count(), rows.values("msgid").distinct().count())
    return counts


def check_rows(accounts: list["Account"], prefix: str, lines: int) -> None:
    counts = count_rows(accounts, prefix)
    total = sum(rows for rows, _ in counts.values())
    twice = sum(rows - distinct for rows, distinct in counts.values())
    if total != lines or twice:
        raise BenchmarkError(f"{prefix}: expected {lines:,} rows, found {total:,} ({twice} twice)")


def write_killed_journal(directory: Path, lines: list["Line"]) -> None:
    """The journal a gateway leaves when SIGKILL hits it with `lines` read, none stored."""
    from gateway.journal import Journal
    from gateway.storage import Store

    journal = Journal(directory)
    store = Store(publish=False, journal=journal)
    for line in lines:
        store.put(line)
    journal.write_out()
    journal._closed = True  # its fsync thread ends, as the process would
    journal._wake.set()
    journal._syncer.join()
    journal.sync()
    for segment in journal._segments:  # what the kernel does for a killed process
        if segment.fd is not None:
            os.close(segment.fd)
    os.close(journal._lock_fd)
    for executor in store._db:
        executor.shutdown()


def measure_journal_replay(args: argparse.Namespace, accounts: list["Account"]) -> Fields:
    from gateway.journal import SUFFIX, Journal, decode, read_segment, replay
    from gateway.storage import Store

    ids = server_ids(accounts)
    directory = Path(tempfile.mkdtemp(prefix="palaver-bench-journal-"))
    try:
        log(f"journal: writing {args.lines:,} lines as a killed gateway leaves them")
        write_killed_journal(directory, flood_lines(accounts, ids, args.lines, "replay"))
        size = sum(p.stat().st_size for p in directory.glob(f"*{SUFFIX}"))

        started = time.perf_counter()
        read = 0
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            for _seq, payload in read_segment(path):
                decode(payload)
                read += 1
        read_rate = read / (time.perf_counter() - started)
        if read != args.lines:
            raise BenchmarkError(f"read {read:,} records of {args.lines:,}")
        log(f"journal: {size / 1e6:.1f} MB, read and decoded at {read_rate:,.0f} lines/s")

        async def replayed() -> float:
            started = time.perf_counter()
            journal = Journal(directory)
            store = Store(journal=journal)
            writer = asyncio.create_task(store.run())
            await replay(store, journal)
            await until_stored(store, args.lines, args.timeout)()
            seconds = time.perf_counter() - started
            await store.drain()
            writer.cancel()
            await store.close()
            return seconds

        seconds = asyncio.run(replayed())
        replay_rate = args.lines / seconds
        log(f"journal: replayed and committed in {seconds:.2f} s: {replay_rate:,.0f} lines/s")
        check_rows(accounts, "replay", args.lines)
        left = list(directory.glob(f"*{SUFFIX}"))
        if left:
            raise BenchmarkError(f"the journal was not trimmed: {[p.name for p in left]}")

        plain = flood_lines(accounts, ids, args.lines, "plain")

        async def stored_plainly() -> float:
            store = Store()
            for account in accounts:
                store.add_account(account)
            writer = asyncio.create_task(store.run())
            started = time.perf_counter()
            for line in plain:
                store.put(line)
            await until_stored(store, args.lines, args.timeout)()
            seconds = time.perf_counter() - started
            await store.drain()
            writer.cancel()
            await store.close()
            return seconds

        store_rate = args.lines / asyncio.run(stored_plainly())
        log(f"store without journal: {store_rate:,.0f} lines/s")
        check_rows(accounts, "plain", args.lines)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "journal_replay_lines_per_s": f"{replay_rate:.0f}",
        "journal_lines": str(args.lines),
        "journal_read_lines_per_s": f"{read_rate:.0f}",
        "store_lines_per_s": f"{store_rate:.0f}",
        "replay_ratio": f"{replay_rate / store_rate:.2f}",
    }


def measure_chathistory_backfill(args: argparse.Namespace, accounts: list["Account"]) -> Fields:
    """benchmarks/recovery_chathistory.py (10,000 missed lines backfilled with IRCv3
    chathistory), run as a child in a scratch database of its own; its fields, prefixed."""
    result = subprocess.run(  # noqa: S603 (this interpreter, fixed arguments)
        [
            sys.executable,
            str(PROJECT_DIR / "benchmarks" / "recovery_chathistory.py"),
            "--database",
            f"{args.database}_chathistory",
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchmarkError(f"recovery_chathistory.py failed (exit {result.returncode})")
    fields = dict(pair.split("=", 1) for pair in result.stdout.split())
    # Its own first field already names it; the others get the prefix.
    return {
        key if key.startswith("chathistory_") else f"chathistory_{key}": value
        for key, value in fields.items()
    }


MEASUREMENTS: dict[str, Measurement] = {
    "journal_replay": measure_journal_replay,
    "chathistory_backfill": measure_chathistory_backfill,
}


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    accounts = create_accounts(args.accounts, port=1, autoconnect=False, name_prefix="Recovery")
    fields: Fields = {}
    for name in args.only or MEASUREMENTS:
        fields.update(MEASUREMENTS[name](args, accounts))
    print(" ".join(f"{k}={v}" for k, v in fields.items()), file=result_out, flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_in_scratch_database(parse_args(argv), title="recovery benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
