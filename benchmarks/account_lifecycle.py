"""Benchmark: backing up, restoring and purging an account with 1,000,000 stored lines.

    .venv/bin/python benchmarks/account_lifecycle.py [--lines 1000000] [--channels 50] [--runs 3]
        [--database NAME] [--keep] [--reuse]

In a database of its own (`bench_lifecycle`; --keep keeps it, --reuse starts from a kept one),
one account "Lifecycle" with one server, --channels channels and --lines lines loaded with
COPY (benchmarks/chat_page.py's copy_messages: indexes dropped during the load and rebuilt).
Then --runs times:

- backup: lifecycle.backup.write_backup of the account to a file (one repeatable-read
  snapshot, COPY out, gzip level 1): seconds, lines/s (stored lines / seconds; the archive also
  holds the account's few other rows), archive size;
- restore: lifecycle.restore.restore_backup of that archive as a new account (without users:
  their emails are taken by the original): seconds, lines/s;
- purge: the restored copy (it holds the same 1,000,000 lines) removed again, by
  tenancy.services.purge_account(account=...) (issue 12's purge): seconds.

- the anchor, in the same run (DESIGN.md: "pg_dump of one schema"), when the pg_dump on the
  PATH has the server's major version: `pg_dump --schema=S --format=custom --compress=1` of the
  account's schema, and `pg_restore --jobs 2` of it into a database of its own
  (`<database>_anchor`): seconds of each, and our time over theirs (`backup_ratio`,
  `restore_ratio`: the median of each run's ratio; below 1 is faster than pg_dump). Absolute
  times on a shared machine drift with its load; the ratios are measured side by side.

Not `benchmarks/lifecycle.py`: benchmarks/ is on the path of its scripts (and a top-level
module for mypy), where a `lifecycle` module would shadow the `lifecycle` app.

Targets (DESIGN.md): backup >= 100,000 lines/s, restore >= 50,000 lines/s.

stdout gets exactly one line (medians of the runs):
    backup_s_p50=… backup_lines_per_s=… archive_mb=… restore_s_p50=… restore_lines_per_s=…
    purge_s_p50=… purge_with=… pg_dump_s_p50=… pg_restore_s_p50=… backup_ratio=…
    restore_ratio=… lines=… runs=…
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from chat_page import copy_messages  # noqa: E402
from pages import database_exists  # noqa: E402
from provisioning import (  # noqa: E402
    back_to_public,
    log,
    recreate_database,
    run_in_scratch_database,
    server_url,
    with_database,
)

DEFAULT_DATABASE = "bench_lifecycle"
ACCOUNT = "Lifecycle"
EMAIL = "lifecycle@bench.example"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the account")
    parser.add_argument("--channels", type=int, default=50, help="channels they are spread over")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each phase")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="scratch database")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--reuse", action="store_true", help="start from a kept database")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def populate(args: argparse.Namespace, bench_url: str) -> None:
    from django.db import connection

    from accounts.models import User
    from channels_app.models import Channel, Server
    from tenancy import switch
    from tenancy.services import provision_account

    log(f"{ACCOUNT} account: {args.channels} channels, {args.lines:,} lines")
    account = provision_account(name=ACCOUNT)
    back_to_public()
    user = User(account=account, email=EMAIL, is_account_admin=True)
    user.set_unusable_password()
    user.save()
    with switch(account):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="bench")
        channel_ids = [
            Channel.objects.create(server=server, name=f"#channel{i:02d}").pk
            for i in range(args.channels)
        ]
        connection.close()
        copy_messages(bench_url, account.schema_name, channel_ids, args.lines // args.channels)
    back_to_public()


def purge_function() -> tuple[str, Any]:
    """What is timed as the purge: issue 12's purge_account (schema, public rows, Redis keys,
    queued tasks, backups past retention)."""
    from tenancy.services import purge_account

    return "purge_account", purge_account


def pg_dump_matches(bench_url: str) -> bool:
    """Whether the pg_dump on the PATH has the server's major version (it refuses a newer
    server, and its output would not be the same anchor for an older one)."""
    import psycopg

    pg_dump = shutil.which("pg_dump")
    if pg_dump is None or shutil.which("pg_restore") is None:
        return False
    output = subprocess.run([pg_dump, "--version"], capture_output=True, text=True).stdout  # noqa: S603
    found = re.search(r"(\d+)\.", output)
    with psycopg.connect(bench_url) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
    return bool(found and row and int(found.group(1)) == row[0])


def anchor_run(bench_url: str, anchor_url: str, schema: str, scratch: str) -> tuple[float, float]:
    """pg_dump of the schema, then pg_restore of it into the anchor database: seconds each."""
    import psycopg

    path = Path(scratch) / "anchor.dump"
    started = time.perf_counter()
    subprocess.run(  # noqa: S603
        [shutil.which("pg_dump") or "pg_dump", f"--dbname={bench_url}", f"--schema={schema}",
         "--format=custom", "--compress=1", f"--file={path}"],
        check=True,
    )  # fmt: skip
    dumped = time.perf_counter() - started
    with psycopg.connect(anchor_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    started = time.perf_counter()
    subprocess.run(  # noqa: S603
        [shutil.which("pg_restore") or "pg_restore", f"--dbname={anchor_url}", "--jobs=2",
         "--no-owner", str(path)],
        check=True,
    )  # fmt: skip
    restored = time.perf_counter() - started
    os.unlink(path)
    return dumped, restored


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command
    from django.db import connections

    from accounts.models import Account
    from lifecycle.backup import write_backup
    from lifecycle.restore import restore_backup
    from tenancy import switch

    if not (args.reuse and Account.objects.filter(name=ACCOUNT).exists()):
        log("migrating the public schema")
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        back_to_public()
        populate(args, bench_url)
    account = Account.objects.get(name=ACCOUNT)
    with switch(account):
        from channels_app.models import Message

        lines = Message.objects.count()
    back_to_public()
    connections.close_all()
    purge_name, purge = purge_function()
    anchor_url = ""
    if pg_dump_matches(bench_url):
        anchor_url = with_database(server_url(), f"{args.database}_anchor")
        recreate_database(with_database(server_url(), "postgres"), f"{args.database}_anchor")
    else:
        log("no pg_dump of the server's major version on the PATH: no anchor")
    dump_s: list[float] = []
    pg_restore_s: list[float] = []
    backup_s: list[float] = []
    restore_s: list[float] = []
    purge_s: list[float] = []
    sizes: list[int] = []
    with tempfile.TemporaryDirectory(prefix="palaver-bench-lifecycle-") as scratch:
        for run_number in range(args.runs):
            path = Path(scratch) / f"run{run_number}.tar"
            started = time.perf_counter()
            manifest = write_backup(account=account, output=path)
            backup_s.append(time.perf_counter() - started)
            sizes.append(path.stat().st_size)
            log(
                f"run {run_number + 1}: backup {backup_s[-1]:.2f} s "
                f"({lines / backup_s[-1]:,.0f} lines/s), {sizes[-1] / 1e6:.1f} MB, "
                f"{manifest['rows']:,} rows"
            )
            started = time.perf_counter()
            copy = restore_backup(
                source=path, new_name=f"{ACCOUNT} copy {run_number}", without_users=True
            )
            restore_s.append(time.perf_counter() - started)
            log(
                f"run {run_number + 1}: restore {restore_s[-1]:.2f} s "
                f"({lines / restore_s[-1]:,.0f} lines/s)"
            )
            back_to_public()
            started = time.perf_counter()
            purge(account=copy)
            purge_s.append(time.perf_counter() - started)
            log(f"run {run_number + 1}: {purge_name} {purge_s[-1]:.2f} s")
            os.unlink(path)
            back_to_public()
            if anchor_url:
                dumped, restored = anchor_run(bench_url, anchor_url, account.schema_name, scratch)
                dump_s.append(dumped)
                pg_restore_s.append(restored)
                log(f"run {run_number + 1}: pg_dump {dumped:.2f} s, pg_restore {restored:.2f} s")
    if anchor_url:
        from provisioning import drop_database

        drop_database(with_database(server_url(), "postgres"), f"{args.database}_anchor")
    backup = statistics.median(backup_s)
    restore = statistics.median(restore_s)
    fields = [
        f"backup_s_p50={backup:.2f}",
        f"backup_lines_per_s={lines / backup:.0f}",
        f"archive_mb={statistics.median(sizes) / 1e6:.1f}",
        f"restore_s_p50={restore:.2f}",
        f"restore_lines_per_s={lines / restore:.0f}",
        f"purge_s_p50={statistics.median(purge_s):.2f}",
        f"purge_with={purge_name}",
    ]
    if dump_s:
        fields += [
            f"pg_dump_s_p50={statistics.median(dump_s):.2f}",
            f"pg_restore_s_p50={statistics.median(pg_restore_s):.2f}",
            # Each run's own ratio (its two sides ran a minute apart), then their median: the
            # load of a shared machine moves both sides of one run alike, not of different runs.
            f"backup_ratio={median_ratio(backup_s, dump_s):.2f}",
            f"restore_ratio={median_ratio(restore_s, pg_restore_s):.2f}",
        ]
    fields += [
        f"lines={lines}",
        f"runs={args.runs}",
    ]
    print(" ".join(fields), file=result_out, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recreate = not (args.reuse and database_exists(args.database))
    if args.reuse:
        args.keep = True
    return run_in_scratch_database(args, title="lifecycle benchmark", run=run, recreate=recreate)


if __name__ == "__main__":
    sys.exit(main())
