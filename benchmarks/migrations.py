"""Benchmark: one new column (and an index on it) on every account schema, replayed as SQL.

    .venv/bin/python benchmarks/migrations.py [--schemas N] [--sample S] [--jobs J] [--no-index]
        [--column default|nullable] [--provision-jobs P] [--clone-beyond K] [--database NAME]
        [--keep]

Issue 10's target: one new column on 10,000 account schemas in under a minute. The benchmark
makes a fleet of N accounts, untimed: the first K (default 500) through
`tenancy.services.provision_account` in P forked processes, the rest with their real Account
row and a schema cloned from a provisioned one (checked equal). Provisioning replays 20
`ADD COLUMN ... DEFAULT`s, each of which costs PostgreSQL 15 a pass over every index
expression in the database, so it slows down as the fleet grows (docs/benchmarks.md).

Then it adds two migrations to channels_app at run time (tests/extra_migrations.py, as a deploy
would bring them): an AddField (a CharField with a default, on Channel; `--column nullable`:
null=True, no default) and an AddIndex on that column, two migrations, one after the other
(`--no-index`: the AddField alone). Then, timed:

1. Django's migrate on a sample of S schemas (default 20, spread over the fleet), the path
   `migrate_accounts` falls back to (`--no-replay`, or a migration it cannot replay): Django's
   migrate per schema in J forked worker processes (`Command._migrate_accounts`).
2. `manage.py migrate_accounts --skip-public --jobs J` over the whole fleet, as an operator runs
   it after a deploy: it finds the N - S lagging schemas, captures the two migrations' SQL once
   and replays it in each schema over J connections. Timed end to end (the command's own
   figure for the replay alone is also logged on stderr).
3. The no-op check: `migrate_accounts --skip-public` again, with nothing left to do.

Then it checks its own work and exits non-zero if anything is wrong: every schema is up to date
and has the column (and the index); a replayed schema's catalog (columns, defaults, indexes,
constraints, migration rows) equals a Django-migrated one's; the no-op run migrated nothing.

It runs in a database of its own (`palaver_bench_fleet` on the server DATABASE_URL names),
dropped at the end unless --keep. With --keep an existing database is reused: its accounts are
kept (missing ones provisioned), and the benchmark's column and migration rows, left by the
previous run, are first removed from every schema (untimed).

stdout gets exactly one line:
    schemas=… migrations=… operations=… column=… jobs=… replay_s=… replay_schemas=…
    replay_schemas_per_s=… django_sample=… django_s=… django_schemas_per_s=… ratio=… noop_s=…
    cloned=… catalog_equal=yes load_avg_1m=A/B/C
replay_s is the whole command (finding the lagging schemas, the plan and capture, the replay);
ratio is replay_schemas_per_s / django_schemas_per_s; cloned counts the cloned schemas;
load_avg_1m is the 1-minute load average at the start, before the timed part and after the
replay. Everything else goes to stderr.
"""

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))

import psycopg  # noqa: E402
from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
    server_url,
    with_database,
)
from psycopg import sql  # noqa: E402

DEFAULT_DATABASE = "palaver_bench_fleet"
NAME_PREFIX = "Fleet "
APP = "channels_app"
TABLE = "channels_app_channel"
COLUMN = "fleet_note"
INDEX = "channel_fleet_note_idx"
# Sorting after any real channels_app migration, as extra_migrations requires.
COLUMN_MIGRATION = "0998_fleet_bench_column"
INDEX_MIGRATION = "0999_fleet_bench_index"
# A provisioning process reconnects after this many accounts: a backend keeps the catalog of
# every schema it touched (tenancy/db_memory.py).
PROVISION_RECONNECT_EVERY = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--schemas", type=int, default=2000, help="account schemas in the fleet (default 2000)"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=20,
        help="schemas migrated by Django's migrate, for the comparison (default 20)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="migrate_accounts --jobs, for both the replay and Django's migrate (default 2)",
    )
    parser.add_argument(
        "--no-index",
        action="store_true",
        help="only the AddField migration (default: AddField, then AddIndex)",
    )
    parser.add_argument(
        "--column",
        choices=["default", "nullable"],
        default="default",
        help="the new column: a CharField with default '' (NOT NULL, what the issue measured; "
        "the default) or a nullable CharField without a default",
    )
    parser.add_argument(
        "--provision-jobs",
        type=int,
        default=3,
        help="processes provisioning the accounts, untimed (default 3)",
    )
    parser.add_argument(
        "--clone-beyond",
        type=int,
        default=500,
        metavar="K",
        help="once K accounts exist, create the rest as clones of a provisioned schema (its "
        "pg_dump, tables with their columns inline, and its migration rows), with real account "
        "rows (default 500; 0 provisions them all, which takes hours at 10,000: see "
        "docs/benchmarks.md)",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database (default {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the database at the end, and reuse it (its accounts) if it exists",
    )
    args = parser.parse_args(argv)
    if args.sample < 1 or args.schemas < args.sample + 2:
        parser.error("need --sample >= 1 and --schemas >= --sample + 2")
    if args.jobs < 1 or args.provision_jobs < 1:
        parser.error("--jobs and --provision-jobs must be at least 1")
    return args


def database_exists(name: str) -> bool:
    admin_url = with_database(server_url(), "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return row is not None


FIELDS = {
    # What the issue measured on main: a CharField with a default on Channel. PostgreSQL adds a
    # column with a constant default without rewriting the table, but (15 here) each such
    # ADD COLUMN costs time that grows with the catalog (docs/benchmarks.md, issue 10).
    "default": "models.CharField(max_length=40, blank=True, default='')",
    "nullable": "models.CharField(max_length=40, blank=True, null=True)",
}


def migration_sources(column: str, with_index: bool) -> dict[str, str]:
    from tests.extra_migrations import leaf_migration, migration_source

    sources = {
        COLUMN_MIGRATION: migration_source(
            app_label=APP,
            depends_on=leaf_migration(APP),
            operations=(
                "        migrations.AddField(\n"
                f"            model_name='channel', name={COLUMN!r},\n"
                f"            field={FIELDS[column]},\n"
                "        ),"
            ),
        )
    }
    if with_index:
        sources[INDEX_MIGRATION] = migration_source(
            app_label=APP,
            depends_on=COLUMN_MIGRATION,
            operations=(
                "        migrations.AddIndex(\n"
                "            model_name='channel',\n"
                f"            index=models.Index(fields=[{COLUMN!r}], name={INDEX!r}),\n"
                "        ),"
            ),
        )
    return sources


# --- the fleet -----------------------------------------------------------------------------------


def _provision_chunk(names: list[str]) -> int:
    """Runs in a forked process: provision these accounts, one transaction each."""
    from django.db import connection

    from tenancy.services import provision_account

    for done, name in enumerate(names, start=1):
        provision_account(name=name)
        if done % PROVISION_RECONNECT_EVERY == 0:
            connection.close()
    connection.close()
    return len(names)


def _clone_chunk(job: tuple[list[str], str, str]) -> int:
    """Runs in a forked process: each account's row (as provision_account saves it) and its
    schema from the template's DDL, one transaction each."""
    from django.db import connection, transaction

    from tenancy.context import public_schema, tenant_model

    names, template, ddl = job
    for done, name in enumerate(names, start=1):
        with transaction.atomic(), public_schema():
            account = tenant_model()(name=name, settings={})
            account.full_clean(exclude=["schema_name"])
            account.save()
            with connection.cursor() as cursor:
                cursor.execute(ddl.replace(template, account.schema_name))
                cursor.execute(
                    sql.SQL(
                        "INSERT INTO {}.django_migrations (app, name, applied) "
                        "SELECT app, name, now() FROM {}.django_migrations ORDER BY id"
                    )
                    .format(sql.Identifier(account.schema_name), sql.Identifier(template))
                    .as_string(cursor.connection)
                )
        if done % PROVISION_RECONNECT_EVERY == 0:
            connection.close()
    connection.close()
    return len(names)


def clone_ddl(bench_url: str, template: str) -> str:
    """The template schema's DDL as pg_dump writes it: every table with its columns inline
    (no ALTER TABLE ... ADD COLUMN, whose DEFAULT costs a scan of pg_index on PostgreSQL 15),
    then its constraints and indexes under their own names; every name schema-qualified."""
    command = ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "-n", template]
    # The server's own client from PATH, with arguments of ours.
    dump = subprocess.run(  # noqa: S603
        [*command, bench_url], check=True, capture_output=True, text=True
    ).stdout
    skipped = ("--", "\\", "SET ", "SELECT pg_catalog.set_config")
    text = "\n".join(line for line in dump.splitlines() if not line.startswith(skipped))
    statements = [statement.strip() for statement in text.split(";\n") if statement.strip()]
    return _as_django_wrote(bench_url, template, statements)


def _as_django_wrote(bench_url: str, template: str, statements: list[str]) -> str:
    """pg_dump's text of an index or constraint does not always parse back to the same
    expression (`x IN ('a', 'b')` on a varchar comes back with its casts moved): those few are
    found by a trial clone, rolled back, and created with the statement Django's migrations
    used (provisioning's DDL) instead."""
    from tenancy.provisioning import account_schema_ddl
    from tests.extra_migrations import schema_fingerprint

    trial = "fleet_clone_trial"
    differing: list[tuple[str, str, str]] = []
    with psycopg.connect(bench_url) as conn:
        conn.execute(";\n".join(statements).replace(template, trial))
        ours, theirs = schema_fingerprint(conn, template), schema_fingerprint(conn, trial)
        conn.rollback()
    for kind in ("indexes", "constraints"):
        for key in ours[kind]:
            if ours[kind][key] != theirs[kind].get(key):
                differing.append((kind, *key))
    if not differing:
        return ";\n".join(statements)
    django = account_schema_ddl().statements
    fixes = [f'SET LOCAL search_path = "{template}"']
    for kind, table, name in differing:
        creating = re.compile(rf'(CREATE (UNIQUE )?INDEX|ADD CONSTRAINT) "{re.escape(name)}"')
        found = [statement for statement in django if creating.search(statement)]
        if not found:
            raise BenchmarkError(f"no statement of Django's creates {name}")
        if kind == "indexes":
            fixes.append(f'DROP INDEX "{name}"')
        else:
            fixes.append(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
        fixes.append(found[-1].rstrip().rstrip(";"))
    fixes.append("SET LOCAL search_path = public")
    log(f"clone DDL: {', '.join(name for _, _, name in differing)} as Django's DDL has them")
    return ";\n".join([*statements, *fixes])


def ensure_accounts(count: int, processes: int, bench_url: str, clone_beyond: int) -> None:
    """`count` accounts, provisioned (the missing ones) in `processes` forked processes; with
    clone_beyond, those past the first clone_beyond are cloned from the first provisioned."""

    from accounts.models import Account
    from tenancy.provisioning import account_schema_ddl

    names = set(Account.objects.values_list("name", flat=True))
    if len(names) > count:
        raise BenchmarkError(f"the database holds {len(names)} accounts, more than {count}")
    wanted: list[str] = []
    i = 0
    while len(names) + len(wanted) < count:
        name = f"{NAME_PREFIX}{i:06d}"
        if name not in names:
            wanted.append(name)
        i += 1
    if not wanted:
        log(f"{count} accounts already there")
        return
    provisioned = wanted
    cloned: list[str] = []
    if clone_beyond:
        split = max(0, clone_beyond - len(names))
        provisioned, cloned = wanted[:split], wanted[split:]
    account_schema_ddl()  # captured once here, inherited by the forked processes
    if provisioned:
        log(
            f"{len(names)} accounts there; provisioning {len(provisioned)} in {processes} processes"
        )
        _in_processes(_provision_chunk, provisioned, processes, "provisioning")
    if cloned:
        template = (
            Account.objects.filter(name__startswith=NAME_PREFIX)
            .order_by("name")
            .values_list("schema_name", flat=True)[0]
        )
        ddl = clone_ddl(bench_url, template)
        log(f"cloning {len(cloned)} accounts' schemas from {template}, in {processes} processes")
        jobs = [(chunk, template, ddl) for chunk in _chunks(cloned)]
        _in_processes(_clone_chunk, jobs, processes, "cloning")
        from tests.extra_migrations import schema_fingerprint

        clone = Account.objects.get(name=cloned[-1]).schema_name
        with psycopg.connect(bench_url) as conn:
            if schema_fingerprint(conn, clone) != schema_fingerprint(conn, template):
                raise BenchmarkError(f"the clone {clone} differs from {template}")
        log(f"a clone's fingerprint equals its template's ({clone})")
    if Account.objects.count() != count:
        raise BenchmarkError(f"expected {count} accounts, found {Account.objects.count()}")


def _chunks(items: list[str], size: int = 50) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _in_processes(work: Any, items: list[Any], processes: int, desc: str) -> None:
    """work(chunk) -> how many done, over chunks of items, in forked processes, with a bar."""
    from django.db import connections
    from tqdm import tqdm

    chunks = _chunks(items) if items and isinstance(items[0], str) else items
    total = sum(len(chunk) if isinstance(chunk, list) else len(chunk[0]) for chunk in chunks)
    connections.close_all()  # each child opens its own
    started = time.perf_counter()
    with (
        multiprocessing.get_context("fork").Pool(processes) as pool,
        tqdm(total=total, desc=desc, unit="account", file=sys.stderr) as bar,
    ):
        for done in pool.imap_unordered(work, chunks):
            bar.update(done)
    elapsed = time.perf_counter() - started
    log(f"{desc}: {total} accounts in {elapsed:.0f} s ({total / elapsed:.1f}/s)")


def reset_fleet(bench_url: str, schemas: list[str]) -> None:
    """Remove what a previous run on a kept database added: the column (its index goes with it)
    and the two migration rows. Untimed."""
    from tqdm import tqdm

    statement = sql.SQL(
        "BEGIN; SET LOCAL search_path = {schema}; "
        "ALTER TABLE {table} DROP COLUMN IF EXISTS {column}; "
        "DELETE FROM django_migrations WHERE app = {app} AND name IN ({names}); COMMIT"
    )
    with psycopg.connect(bench_url, autocommit=True) as conn:
        stale = [
            row[0]
            for row in conn.execute(
                "SELECT n.nspname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s AND a.attname = %s AND NOT a.attisdropped "
                "AND n.nspname = ANY(%s)",
                [TABLE, COLUMN, schemas],
            )
        ]
        if not stale:
            return
        for schema in tqdm(stale, desc="resetting", unit="schema", file=sys.stderr):
            conn.execute(
                statement.format(
                    schema=sql.Identifier(schema),
                    table=sql.Identifier(TABLE),
                    column=sql.Identifier(COLUMN),
                    app=sql.Literal(APP),
                    names=sql.SQL(", ").join(
                        [sql.Literal(COLUMN_MIGRATION), sql.Literal(INDEX_MIGRATION)]
                    ),
                ).as_string(conn)
            )


# --- checks --------------------------------------------------------------------------------------


def catalog(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What Django's migrate and the replay must leave alike in a schema: its columns (with
    type, nullability, default, position), indexes, constraints and migration rows. The schema's
    own name is replaced, so two schemas compare."""

    def rows(query: str) -> list[tuple[Any, ...]]:
        found = conn.execute(query, {"schema": schema}).fetchall()
        return sorted(
            tuple(
                value.replace(f'"{schema}".', "<schema>.").replace(f"{schema}.", "<schema>.")
                if isinstance(value, str)
                else value
                for value in row
            )
            for row in found
        )

    return {
        "columns": rows(
            "SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull, pg_get_expr(d.adbin, d.adrelid) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
            "AND NOT a.attisdropped"
        ),
        "indexes": rows(
            "SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %(schema)s AND c.relkind = 'i'"
        ),
        "constraints": rows(
            "SELECT t.relname, k.conname, k.contype, pg_get_constraintdef(k.oid) "
            "FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid "
            "JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = %(schema)s"
        ),
        "migrations": rows(
            sql.SQL("SELECT app, name FROM {}.django_migrations")
            .format(sql.Identifier(schema))
            .as_string(conn)
            .replace("%", "%%")
        ),
    }


def check_fleet(bench_url: str, schemas: list[str], with_index: bool) -> None:
    """Every schema up to date (the bulk check migrate_accounts uses) and holding the column
    and the index, counted in the catalog."""
    from tenancy.migration_state import schema_states

    lagging = [state for state in schema_states(schemas).values() if not state.up_to_date]
    if lagging:
        raise BenchmarkError(
            f"{len(lagging)} schemas not up to date, e.g. {lagging[0].schema}: "
            f"{lagging[0].describe(limit=3)}"
        )
    with psycopg.connect(bench_url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT n.nspname) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND a.attname = %s AND NOT a.attisdropped "
            "AND n.nspname = ANY(%s)",
            [TABLE, COLUMN, schemas],
        ).fetchone()
        columns = row[0] if row else 0
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND c.relkind = 'i' AND n.nspname = ANY(%s)",
            [INDEX, schemas],
        ).fetchone()
        indexes = row[0] if row else 0
    if columns != len(schemas):
        raise BenchmarkError(f"{columns} of {len(schemas)} schemas have the column {COLUMN}")
    if indexes != (len(schemas) if with_index else 0):
        raise BenchmarkError(f"{indexes} of {len(schemas)} schemas have the index {INDEX}")


# --- the runs ------------------------------------------------------------------------------------


def run_command(*args: str, **options: Any) -> tuple[float, str]:
    """call_command, timed; its stdout is returned and copied to stderr."""
    from django.core.management import call_command

    out = io.StringIO()
    started = time.perf_counter()
    call_command(*args, stdout=out, stderr=sys.stderr, **options)
    elapsed = time.perf_counter() - started
    back_to_public()
    text = out.getvalue()
    sys.stderr.write(text)
    return elapsed, text


def migrated_count(output: str) -> int:
    match = re.search(r"Checked [\d,]+ account schemas?: (\d+) migrated", output)
    if match is None:
        raise BenchmarkError(f"migrate_accounts printed no summary: {output!r}")
    return int(match.group(1))


def django_sample(accounts: list[Any], jobs: int) -> float:
    """Django's migrate in each account's schema, as migrate_accounts' fallback runs it (J
    forked processes); the seconds it took."""
    from tenancy.management.commands.migrate_accounts import Command

    command = Command(stdout=sys.stderr, stderr=sys.stderr)
    started = time.perf_counter()
    failures = command._migrate_accounts(accounts, jobs)
    elapsed = time.perf_counter() - started
    back_to_public()
    if failures:
        raise BenchmarkError(
            f"Django's migrate failed in {len(failures)} schemas, e.g. "
            f"{failures[0].account.schema_name}: {failures[0].reason}"
        )
    return elapsed


@contextlib.contextmanager
def no_tqdm_monitor() -> Iterator[None]:
    """tqdm's monitor thread would be alive when the benchmark forks, and forking a process with
    threads can deadlock the child."""
    from tqdm import tqdm

    previous = tqdm.monitor_interval
    tqdm.monitor_interval = 0
    try:
        yield
    finally:
        tqdm.monitor_interval = previous


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command

    from accounts.models import Account
    from tests.extra_migrations import extra_migrations, schema_fingerprint

    load_start = os.getloadavg()[0]
    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()

    # A kept database: first undo the previous run, so that a clone's template is as provisioned.
    reset_fleet(bench_url, list(Account.objects.values_list("schema_name", flat=True)))
    with no_tqdm_monitor():
        ensure_accounts(args.schemas, args.provision_jobs, bench_url, args.clone_beyond)
    accounts = list(Account.objects.order_by("name"))
    schemas = [account.schema_name for account in accounts]
    cloned = max(0, len(schemas) - args.clone_beyond) if args.clone_beyond else 0

    with_index = not args.no_index
    sources = migration_sources(args.column, with_index)
    operations = "AddField+AddIndex" if with_index else "AddField"
    # Spread over the fleet (names sort in provisioning order).
    step = len(accounts) / args.sample
    sample = [accounts[int(i * step)] for i in range(args.sample)]
    sample_schemas = {account.schema_name for account in sample}
    replayed = next(schema for schema in schemas if schema not in sample_schemas)

    with extra_migrations(APP, sources), no_tqdm_monitor():
        load_before = os.getloadavg()[0]
        log(f"Django's migrate on {len(sample)} schemas, {args.jobs} processes")
        django_s = django_sample(sample, args.jobs)
        log(f"  {django_s:.1f} s ({len(sample) / django_s:.2f} schemas/s)")

        log(f"migrate_accounts --skip-public --jobs {args.jobs} over {len(schemas)} schemas")
        replay_s, output = run_command("migrate_accounts", skip_public=True, jobs=args.jobs)
        replayed_count = migrated_count(output)
        if replayed_count != len(schemas) - len(sample):
            raise BenchmarkError(
                f"migrate_accounts migrated {replayed_count} schemas, expected "
                f"{len(schemas) - len(sample)}"
            )
        if "Replayed" not in output:
            raise BenchmarkError("migrate_accounts did not replay (see its output above)")
        load_after = os.getloadavg()[0]

        log("the no-op check: migrate_accounts --skip-public again")
        noop_s, output = run_command("migrate_accounts", skip_public=True, jobs=args.jobs)
        if migrated_count(output) != 0:
            raise BenchmarkError("the second migrate_accounts migrated something")

        check_fleet(bench_url, schemas, with_index)
        with psycopg.connect(bench_url) as conn:
            by_replay = catalog(conn, replayed)
            by_django = catalog(conn, sample[0].schema_name)
            # And the tests' fingerprint (sequences, identity, deferrability too), for a cloned
            # schema as well when there are clones (the last one is).
            by_django_fingerprint = schema_fingerprint(conn, sample[0].schema_name)
            for schema in {replayed, schemas[-1]} - sample_schemas:
                if schema_fingerprint(conn, schema) != by_django_fingerprint:
                    raise BenchmarkError(
                        f"{schema} (replayed) and {sample[0].schema_name} (Django) differ "
                        "in tests.extra_migrations.schema_fingerprint"
                    )
        if by_replay != by_django:
            differences = {
                key: (
                    sorted(set(by_replay[key]) - set(by_django[key]))[:3],
                    sorted(set(by_django[key]) - set(by_replay[key]))[:3],
                )
                for key in by_replay
                if by_replay[key] != by_django[key]
            }
            raise BenchmarkError(
                f"{replayed} (replayed) and {sample[0].schema_name} (Django) differ: {differences}"
            )
        log(
            "catalog equal (replayed vs Django-migrated): "
            + ", ".join(f"{len(rows)} {key}" for key, rows in by_replay.items())
        )

    replay_rate = replayed_count / replay_s
    django_rate = len(sample) / django_s
    fields = [
        f"schemas={len(schemas)}",
        f"migrations={len(sources)}",
        f"operations={operations}",
        f"column={args.column}",
        f"jobs={args.jobs}",
        f"replay_s={replay_s:.2f}",
        f"replay_schemas={replayed_count}",
        f"replay_schemas_per_s={replay_rate:.1f}",
        f"django_sample={len(sample)}",
        f"django_s={django_s:.2f}",
        f"django_schemas_per_s={django_rate:.2f}",
        f"ratio={replay_rate / django_rate:.0f}",
        f"noop_s={noop_s:.2f}",
        f"cloned={cloned}",
        "catalog_equal=yes",
        f"load_avg_1m={load_start:.2f}/{load_before:.2f}/{load_after:.2f}",
    ]
    print(" ".join(fields), file=result_out, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reuse = args.keep and database_exists(args.database)
    return run_in_scratch_database(args, title="migrations benchmark", run=run, recreate=not reuse)


if __name__ == "__main__":
    sys.exit(main())
