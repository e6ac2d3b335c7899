"""Benchmark: provisioning one account schema, against the floor of applying its DDL raw.

    .venv/bin/python benchmarks/provisioning.py [--accounts N] [--existing M] [--keep]

Provisions N accounts through `tenancy.services.provision_account`, timing each call, and N
times applies the same schema's DDL raw (CREATE SCHEMA, the captured migration SQL and the
django_migrations rows, one transaction, on a plain psycopg connection), interleaved with the
provisioning calls so machine noise hits both alike. Then, for the anchor, it times a few runs
of django-tenants' default path: CREATE SCHEMA followed by `migrate_schemas` on that schema, as
`TenantMixin.create_schema` does.

It runs in a database of its own (`palaver_bench` on the server DATABASE_URL names), dropped
and recreated at the start and dropped at the end unless --keep. With --existing M it first
provisions M accounts, so the timed part runs with M + i accounts already there.

stdout gets exactly one line:
    provision_ms_p50=… provision_ms_p95=… raw_ddl_ms_p50=… ratio=… accounts=… migrate_ms_p50=…
ratio is provision_ms_p50 / raw_ddl_ms_p50; accounts counts the Account rows at the end.
Everything else goes to stderr.
"""

import argparse
import contextlib
import os
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

DEFAULT_DATABASE = "palaver_bench"
# Not the account prefix: these schemas have no Account row, and nothing should mistake them
# for one. Same length as an account's schema name (prefix + 32 hex digits) all the same.
RAW_PREFIX = "rawddl__"
MIGRATE_PREFIX = "migrate_"


class BenchmarkError(RuntimeError):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--accounts", type=int, default=200, help="accounts to provision and time (default 200)"
    )
    parser.add_argument(
        "--existing",
        type=int,
        default=0,
        help="accounts to create before the timed part (default 0)",
    )
    parser.add_argument(
        "--migrate-runs",
        type=int,
        default=5,
        help="runs of django-tenants' migrate-per-schema path to time; 0 skips it (default 5)",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.accounts < 2:
        parser.error("--accounts must be at least 2 (percentiles need two samples)")
    if args.existing < 0:
        parser.error("--existing must not be negative")
    if args.migrate_runs < 0:
        parser.error("--migrate-runs must not be negative")
    return args


def server_url() -> str:
    """DATABASE_URL as the project reads it (environment, then .env; embedded when unset)."""
    from config import embedded
    from config.env import setting

    url: str = setting("DATABASE_URL", default="") or embedded.postgres_url()
    return url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise BenchmarkError(f"DATABASE_URL is not a PostgreSQL URL (scheme {parts.scheme!r})")
    return urlunsplit(parts._replace(path=f"/{name}"))


def recreate_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def setup_django(bench_url: str) -> None:
    os.environ["DATABASE_URL"] = bench_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    # Production-like: with DEBUG on, Django also records every query it runs.
    os.environ["DEBUG"] = "false"
    # The IRC benchmarks' line source listens on loopback, which the address policy refuses
    # to users (core/net_policy.py); the benchmark is the operator here.
    os.environ.setdefault("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8")
    import django

    django.setup()


def timed_ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


def new_schema_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def schema_shape(conn: psycopg.Connection[Any], schema_name: str) -> tuple[int, int, int]:
    """Tables (without django_migrations), indexes and constraints in a schema."""
    row = conn.execute(
        """
        SELECT
            (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid
                AND c.relkind IN ('r', 'p') AND c.relname <> 'django_migrations'),
            (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid
                AND c.relkind = 'i' AND c.relname NOT LIKE 'django_migrations%%'),
            (SELECT count(*) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
                WHERE k.connamespace = n.oid AND c.relname <> 'django_migrations')
        FROM pg_namespace n WHERE n.nspname = %s
        """,
        [schema_name],
    ).fetchone()
    if row is None:
        raise BenchmarkError(f"schema {schema_name!r} does not exist")
    return (row[0], row[1], row[2])


def back_to_public() -> None:
    from django.db import connection

    # django-tenants' connection; django-stubs only knows the base wrapper.
    cast(Any, connection).set_schema_to_public()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """Keep stdout for the result line alone, whatever the code under test prints."""
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield real_stdout


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command
    from django.db import connection
    from tqdm import tqdm

    from accounts.models import Account
    from tenancy.provisioning import account_schema_ddl
    from tenancy.services import provision_account

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()

    # Captured once per process, on the first provisioning; neither side's samples include it.
    capture_ms = timed_ms(account_schema_ddl)
    log(f"account schema DDL captured once in {capture_ms:.0f} ms")

    for i in tqdm(range(args.existing), desc="existing accounts", unit="account", file=sys.stderr):
        provision_account(name=f"Existing {i:06d}")

    ddl = account_schema_ddl()
    apps = [app for app, _ in ddl.migrations]
    names = [name for _, name in ddl.migrations]

    # Autocommit, so that raw.transaction() below is exactly BEGIN ... COMMIT.
    raw = psycopg.connect(bench_url, autocommit=True)
    raw_schemas: list[str] = []

    def raw_ddl() -> None:
        schema_name = new_schema_name(RAW_PREFIX)
        raw_schemas.append(schema_name)
        schema = sql.Identifier(schema_name)
        with raw.transaction(), raw.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            cursor.execute(sql.SQL("SET LOCAL search_path = {}").format(schema))
            cursor.execute(ddl.sql)
            cursor.execute(
                "INSERT INTO django_migrations (app, name, applied) "
                "SELECT app, name, now() FROM unnest(%s::text[], %s::text[]) AS m(app, name)",
                [apps, names],
            )

    try:
        # Both connections open and warm before the first timed call.
        raw.execute("SELECT 1")
        connection.ensure_connection()

        provision_ms: list[float] = []
        raw_ms: list[float] = []
        for i in tqdm(range(args.accounts), desc="timed", unit="account", file=sys.stderr):

            def provision(i: int = i) -> None:
                provision_account(name=f"Benchmark {i:06d}")

            # Alternate which goes first, so neither always runs right after the other.
            if i % 2:
                raw_ms.append(timed_ms(raw_ddl))
                provision_ms.append(timed_ms(provision))
            else:
                provision_ms.append(timed_ms(provision))
                raw_ms.append(timed_ms(raw_ddl))

        migrate_ms: list[float] = []
        migrate_schemas: list[str] = []
        for _ in tqdm(
            range(args.migrate_runs), desc="migrate per schema", unit="schema", file=sys.stderr
        ):
            schema_name = new_schema_name(MIGRATE_PREFIX)
            migrate_schemas.append(schema_name)

            def migrate(schema_name: str = schema_name) -> None:
                # What TenantMixin.create_schema does when no base schema is cloned.
                with connection.cursor() as cursor:
                    cursor.execute(f'CREATE SCHEMA "{schema_name}"')
                call_command(
                    "migrate_schemas",
                    tenant=True,
                    schema_name=schema_name,
                    interactive=False,
                    verbosity=0,
                )

            migrate_ms.append(timed_ms(migrate))
            back_to_public()

        # Guard against timing something that built less than a full schema.
        account_schema = Account.objects.order_by("created_at").values_list(
            "schema_name", flat=True
        )[0]
        shapes = {
            name: schema_shape(raw, name)
            for name in [account_schema, raw_schemas[0], *migrate_schemas[:1]]
        }
        if len(set(shapes.values())) != 1:
            raise BenchmarkError(f"schemas differ (tables, indexes, constraints): {shapes}")
        log(f"schema shape (tables, indexes, constraints): {shapes[account_schema]}")

        accounts = Account.objects.count()
        expected = args.existing + args.accounts
        if accounts != expected:
            raise BenchmarkError(f"expected {expected} accounts at the end, found {accounts}")

        if args.keep:
            # Leave only what an operator would expect to find: the accounts. One schema per
            # transaction: all of them at once would run out of lock slots.
            for schema_name in raw_schemas + migrate_schemas:
                raw.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema_name)))
    finally:
        raw.close()
        connection.close()

    provision_p50 = statistics.median(provision_ms)
    raw_p50 = statistics.median(raw_ms)
    fields = [
        f"provision_ms_p50={provision_p50:.2f}",
        f"provision_ms_p95={p95(provision_ms):.2f}",
        f"raw_ddl_ms_p50={raw_p50:.2f}",
        f"ratio={provision_p50 / raw_p50:.2f}",
        f"accounts={accounts}",
    ]
    if migrate_ms:
        fields.append(f"migrate_ms_p50={statistics.median(migrate_ms):.2f}")
    log(
        f"raw DDL: {len(ddl.statements)} statements, {len(ddl.migrations)} migrations; "
        f"provision min/max {min(provision_ms):.2f}/{max(provision_ms):.2f} ms, "
        f"raw min/max {min(raw_ms):.2f}/{max(raw_ms):.2f} ms"
        + (f", migrate runs {', '.join(f'{ms:.0f}' for ms in migrate_ms)} ms" if migrate_ms else "")
    )
    print(" ".join(fields), file=result_out, flush=True)


def run_in_scratch_database(
    args: argparse.Namespace,
    *,
    title: str,
    run: Callable[[argparse.Namespace, str, TextIO], None],
    recreate: bool = True,
) -> int:
    """The frame every benchmark shares: a scratch database recreated on the server
    DATABASE_URL names, Django pointed at it, `run(args, bench_url, result_out)`, then the
    database dropped (unless --keep). `recreate=False` reuses a database a previous run kept.
    Returns the exit code; failures are explained on stderr."""
    with stdout_to_stderr() as result_out:
        admin_url = ""
        created = False
        try:
            url = server_url()
            admin_url = with_database(url, "postgres")
            bench_url = with_database(url, args.database)
            if recreate:
                log(f"recreating database {args.database!r}")
                recreate_database(admin_url, args.database)
            created = True
            setup_django(bench_url)
            run(args, bench_url, result_out)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            log(f"{title} failed: {type(exc).__name__}: {exc}")
            return 1
        finally:
            if created:
                from django.db import connections

                connections.close_all()
            if created and not args.keep:
                try:
                    drop_database(admin_url, args.database)
                except Exception as exc:
                    log(f"could not drop database {args.database!r}: {exc}")
            elif created:
                log(f"kept database {args.database!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_in_scratch_database(parse_args(argv), title="provisioning benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
