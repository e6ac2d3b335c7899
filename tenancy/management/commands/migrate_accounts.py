"""Migrate the public schema, then every account schema that lags behind.

Up-to-date schemas are found with a few bulk queries (tenancy.migration_state) and never
touched, which is what keeps a no-op run over 10,000 schemas to seconds; django-tenants'
`migrate_schemas` runs Django's migrate in every schema, lagging or not. Lagging schemas get
their pending migrations' SQL, captured once and replayed per schema (tenancy.replay); what
cannot be replayed faithfully falls back to Django's migrate, in parallel worker processes, and
the output says which schemas and why.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Sequence
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
from tenancy.replay import ReplayGroup, SchemaOutcome, plan_replay, replay

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


def _some(schemas: Sequence[str], limit: int = 10) -> str:
    """The first `limit` schema names, and how many more."""
    shown = ", ".join(schemas[:limit])
    return shown + (f" and {len(schemas) - limit} more" if len(schemas) > limit else "")


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
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print the plan (the schemas lagging, by group), the SQL each group would get "
            "and why a group would fall back to Django's migrate; change nothing.",
        )
        parser.add_argument(
            "--lock-timeout",
            type=_positive_int,
            default=2000,
            metavar="MS",
            help="How long a schema's replay waits for a lock on one of its tables before it "
            "is put back in the queue (milliseconds, default 2000).",
        )
        parser.add_argument(
            "--lock-retries",
            type=int,
            default=3,
            metavar="N",
            help="How many more times a schema whose table stayed locked is tried, after the "
            "rest of the fleet (default 3).",
        )
        parser.add_argument(
            "--no-replay",
            action="store_true",
            help="Run Django's migrate in each lagging schema instead of replaying SQL.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        verbosity: int = options["verbosity"]
        dry_run: bool = options["dry_run"]
        if options["lock_retries"] < 0:
            raise CommandError("--lock-retries must be 0 or more.")
        if not options["skip_public"] and not dry_run:
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

        by_schema = {account.schema_name: account for account in lagging}
        lagging_states = [states[account.schema_name] for account in lagging]
        if options["no_replay"]:
            groups = [
                ReplayGroup(state.missing, (state.schema,), None, "--no-replay was given")
                for state in lagging_states
            ]
        else:
            groups = plan_replay(lagging_states, lock_timeout_ms=options["lock_timeout"])
        if dry_run:
            self._print_plan(groups, len(accounts), up_to_date, failures)
            return

        migrated = 0
        if lagging:
            migration_failures = self._replay(groups, by_schema, options)
            fallback = [
                by_schema[schema]
                for group in groups
                if not group.replayable
                for schema in group.schemas
            ]
            if fallback:
                migration_failures += self._migrate_accounts(fallback, options["jobs"])
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

    def _print_plan(
        self, groups: list[ReplayGroup], checked: int, up_to_date: int, failures: list[Failure]
    ) -> None:
        """--dry-run: what would be done, and nothing done."""
        lagging = sum(len(group.schemas) for group in groups)
        self.stdout.write(
            f"Dry run: {plural(checked, 'account schema')} checked, {lagging} lagging, "
            f"{up_to_date} up to date, {len(failures)} that cannot be migrated. Nothing changed."
        )
        for failure in failures:
            self.stdout.write(
                f"  cannot migrate {failure.account.name} ({failure.account.schema_name}): "
                f"{failure.reason}"
            )
        for number, group in enumerate(groups, start=1):
            self.stdout.write("")
            how = (
                "replayed as SQL"
                if group.replayable
                else f"Django's migrate, because {group.fallback_reason}"
            )
            self.stdout.write(
                f"Group {number}: {plural(len(group.schemas), 'schema')} missing "
                f"{group.describe_migrations()}: {how}."
            )
            shown = ", ".join(group.schemas[:5])
            more = f" and {len(group.schemas) - 5} more" if len(group.schemas) > 5 else ""
            self.stdout.write(f"  schemas: {shown}{more}")
            if group.statements is not None:
                if not group.statements:
                    self.stdout.write("  SQL: none (shared-app migrations: only recorded)")
                for statement in group.statements:
                    self.stdout.write(f"  {statement}")

    def _replay(
        self, groups: list[ReplayGroup], by_schema: dict[str, Account], options: dict[str, Any]
    ) -> list[Failure]:
        replayable = [group for group in groups if group.replayable]
        total = sum(len(group.schemas) for group in replayable)
        for group in groups:
            if not group.replayable:
                self.stdout.write(
                    f"{plural(len(group.schemas), 'schema')} missing "
                    f"{group.describe_migrations()} get Django's migrate instead of a replay: "
                    f"{group.fallback_reason}: {_some(group.schemas)}."
                )
        if not total:
            return []
        started = time.monotonic()
        # The connections are the workers' own: the main one must not sit in a transaction.
        connections.close_all()
        with ProgressBar(self.stderr, total=total, desc="Replaying", unit="schema") as bar:

            def done(outcome: SchemaOutcome) -> None:
                bar.update()

            result = replay(
                replayable,
                jobs=options["jobs"],
                lock_timeout_ms=options["lock_timeout"],
                lock_retries=options["lock_retries"],
                on_done=done,
            )
        elapsed = time.monotonic() - started
        if result.retried:
            self.stdout.write(
                f"Locked tables made {plural(len(result.retried), 'schema')} wait; tried again "
                f"after the rest: {_some(result.retried)}."
            )
        if result.already:
            self.stdout.write(
                f"{plural(len(result.already), 'schema')} had been migrated meanwhile by another "
                f"run, left as they were: {_some(result.already)}."
            )
        self.stdout.write(
            f"Replayed the pending migrations' SQL in {plural(len(result.migrated), 'schema')} "
            f"in {elapsed:.1f} s ({len(result.migrated) / elapsed if elapsed else 0:.0f} "
            "schemas/s)."
        )
        return [Failure(by_schema[outcome.schema], outcome.describe()) for outcome in result.failed]

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
