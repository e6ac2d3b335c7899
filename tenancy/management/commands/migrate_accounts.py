"""Migrate the public schema, then every account schema that lags behind, in parallel.

Up-to-date schemas are found with a few bulk queries (tenancy.migration_state) and never
touched, which is what keeps a no-op run over 10,000 schemas to seconds; django-tenants'
`migrate_schemas` runs Django's migrate in every schema, lagging or not.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django_tenants.migration_executors.base import run_migrations
from django_tenants.utils import get_public_schema_name, get_tenant_base_migrate_command_class

from tenancy.context import tenant_model
from tenancy.management.commands._common import ProgressBar, find_account, plural
from tenancy.migration_state import schema_states

if TYPE_CHECKING:  # see tenancy/context.py: tenancy never imports accounts at run time
    from accounts.models import Account


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _migrate_options() -> dict[str, Any]:
    """The options Django's migrate command would get from a bare `migrate`, made quiet."""
    command = get_tenant_base_migrate_command_class()()
    options = vars(command.create_parser("manage.py", "migrate").parse_args([]))
    options.update(verbosity=0, interactive=False, skip_checks=True, database=DEFAULT_DB_ALIAS)
    return options


def _migrate_schema(schema_name: str, options: dict[str, Any]) -> str | None:
    """Runs in a worker process. Returns why the schema failed, or None."""
    try:
        run_migrations([], options, "migrate_accounts", schema_name, allow_atomic=False)
    except Exception as exc:
        _discard_connection()
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def _discard_connection() -> None:
    """Give the worker a new connection for its next schema.

    When a migration's deferred SQL (foreign keys, indexes) fails, Django's schema editor raises
    before leaving its atomic block, so the connection still believes it is inside one and
    refuses to close or to be used again. Closing the socket rolls the migration back in
    PostgreSQL; forgetting the wrapper makes Django open a clean one on next use.
    """
    broken = connections[DEFAULT_DB_ALIAS]
    if broken.connection is not None:
        broken.connection.close()
    del connections[DEFAULT_DB_ALIAS]


@dataclass(frozen=True)
class Failure:
    account: Account
    reason: str


class Command(BaseCommand):
    help = (
        "Migrate the public schema, then every account schema that lags behind the migrations, "
        "in parallel worker processes. Up-to-date schemas are left untouched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--jobs",
            type=_positive_int,
            default=os.cpu_count() or 1,
            help="Worker processes migrating account schemas (default: the number of CPUs).",
        )
        parser.add_argument(
            "--skip-public",
            action="store_true",
            help="Do not migrate the public schema first.",
        )
        parser.add_argument(
            "--account",
            metavar="NAME_OR_ID",
            help="Only this account (its name, id or schema name).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        verbosity: int = options["verbosity"]
        if not options["skip_public"]:
            self._migrate_public()

        if options["account"]:
            accounts = [find_account(options["account"])]
        else:
            accounts = list(
                tenant_model()
                .objects.exclude(schema_name=get_public_schema_name())
                .only("id", "name", "schema_name")
                .order_by("name")
            )
        states = schema_states(account.schema_name for account in accounts)

        failures: list[Failure] = []
        lagging: list[Account] = []
        for account in accounts:
            state = states[account.schema_name]
            if not state.exists:
                failures.append(
                    Failure(
                        account,
                        f"schema {account.schema_name} does not exist. It is not created here: "
                        "find out why it is gone, restore it from a backup, or delete the "
                        "account with `manage.py delete_account`.",
                    )
                )
            elif state.error is not None:
                failures.append(Failure(account, f"cannot read its migrations: {state.error}"))
            elif state.missing:
                lagging.append(account)
        up_to_date = len(accounts) - len(lagging) - len(failures)

        migrated = 0
        if lagging:
            migration_failures = self._migrate_accounts(lagging, options["jobs"])
            failures.extend(migration_failures)
            migrated = len(lagging) - len(migration_failures)
            if verbosity >= 2:
                failed_ids = {failure.account.pk for failure in migration_failures}
                for account in lagging:
                    if account.pk not in failed_ids:
                        self.stdout.write(f"migrated {account.name} ({account.schema_name})")

        for failure in sorted(failures, key=lambda failure: failure.account.name.lower()):
            self.stderr.write(
                f"FAILED {failure.account.name} ({failure.account.schema_name}): {failure.reason}",
                self.style.ERROR,
            )
        self.stdout.write(
            f"Checked {plural(len(accounts), 'account schema')}: {migrated} migrated, "
            f"{up_to_date} up to date, {len(failures)} failed, "
            f"in {time.monotonic() - started:.1f} s."
        )
        if failures:
            raise CommandError(
                f"{len(failures)} account schema(s) failed to migrate (listed above); "
                "the others were migrated."
            )

    def _migrate_public(self) -> None:
        try:
            call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        except Exception as exc:
            # Account schemas point at public tables: migrating them on a broken public schema
            # would only pile up failures.
            raise CommandError(
                f"Migrating the public schema failed, so no account schema was touched: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _migrate_accounts(self, lagging: list[Account], jobs: int) -> list[Failure]:
        migrate_options = _migrate_options()
        # Forked workers would otherwise share the parent's socket to PostgreSQL.
        connections.close_all()
        failures: list[Failure] = []
        # fork: workers inherit the configured Django (settings, app registry, test database)
        # instead of setting it up again each.
        pool = ProcessPoolExecutor(
            max_workers=min(jobs, len(lagging)), mp_context=multiprocessing.get_context("fork")
        )
        try:
            futures: dict[Future[str | None], Account] = {
                pool.submit(_migrate_schema, account.schema_name, migrate_options): account
                for account in lagging
            }
            # Only now, with every worker forked: tqdm starts a monitor thread, and forking a
            # process that has threads can deadlock the child.
            with ProgressBar(
                self.stderr, total=len(futures), desc="Migrating", unit="schema"
            ) as bar:
                for future in as_completed(futures):
                    try:
                        reason = future.result()
                    except BrokenProcessPool:
                        reason = "its worker process died (killed, or out of memory?)"
                    if reason is not None:
                        failures.append(Failure(futures[future], reason))
                    bar.update()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return failures
