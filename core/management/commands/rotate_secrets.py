"""Re-encrypt every stored secret under the newest key in SECRET_ENCRYPTION_KEYS.

Key rotation: prepend a new key, run this, then drop the old key once it reports no failure.
Every EncryptedTextField is found through the app registry: models of SHARED_APPS in the public
schema, models of TENANT_APPS in every account schema.
"""

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.apps import AppConfig, apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, transaction
from django.db.backends.utils import CursorWrapper
from django_tenants.utils import get_public_schema_name, quote_schema_name

from accounts.models import Account
from core import crypto
from core.fields import encrypted_fields
from tenancy import switch
from tenancy.context import connection
from tenancy.management.commands._common import ProgressBar, find_account, plural


@dataclass(frozen=True)
class EncryptedTable:
    label: str  # app_label.Model, for messages
    table: str
    pk_column: str
    columns: tuple[str, ...]


@dataclass
class Report:
    rotated: int = 0
    current: int = 0  # already under the newest key
    failures: list[str] = field(default_factory=list)


def _is_listed(config: AppConfig, entries: set[str]) -> bool:
    # An app is listed by its module ("llms") or by its AppConfig's dotted path.
    return config.name in entries or f"{type(config).__module__}.{type(config).__name__}" in entries


def encrypted_tables(app_entries: Iterable[str]) -> list[EncryptedTable]:
    """The tables, among the listed apps' models, that hold EncryptedTextField columns."""
    entries = set(app_entries)
    tables = []
    for config in apps.get_app_configs():
        if not _is_listed(config, entries):
            continue
        for model in config.get_models():
            meta = model._meta
            if meta.proxy or not meta.managed:
                continue  # a proxy shares its table with a model handled on its own
            # Only the model's own table: a multi-table parent's columns are its parent's.
            local = {f.attname: f.column for f in meta.local_concrete_fields}
            columns = tuple(local[name] for name in encrypted_fields(model) if name in local)
            if columns:
                assert meta.pk is not None
                tables.append(EncryptedTable(meta.label, meta.db_table, meta.pk.column, columns))
    return tables


def _first_line(exc: BaseException) -> str:
    # PostgreSQL's DETAIL lines may quote a failing row, and with it a token: only the primary
    # message is ever shown.
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret (EncryptedTextField) under the newest key in "
        "SECRET_ENCRYPTION_KEYS, in the public schema and in every account schema."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--account",
            metavar="NAME_OR_ID",
            help="Only this account's schema (the public schema is skipped).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        keys: list[str] = settings.SECRET_ENCRYPTION_KEYS
        crypto.box()  # fail here, with its clear message, on an empty or malformed key list
        newest = Fernet(keys[0].encode())
        public_tables = encrypted_tables(settings.SHARED_APPS)
        account_tables = encrypted_tables(settings.TENANT_APPS)
        report = Report()

        if options["account"]:
            accounts = [find_account(options["account"])]
        else:
            self._rotate_schema(get_public_schema_name(), public_tables, newest, report, "public")
            accounts = list(
                Account.objects.exclude(schema_name=get_public_schema_name()).order_by("name")
            )

        existing = self._existing_schemas([a.schema_name for a in accounts])
        missing = [a for a in accounts if a.schema_name not in existing]
        if account_tables:
            with ProgressBar(
                self.stderr, total=len(accounts), desc="Accounts", unit="account"
            ) as bar:
                for account in accounts:
                    if account.schema_name in existing:
                        with switch(account):
                            self._rotate_schema(
                                account.schema_name,
                                account_tables,
                                newest,
                                report,
                                f"account {account.name!r} ({account.schema_name})",
                            )
                    bar.update()

        for account in missing:
            self.stderr.write(
                f"Skipped account {account.name!r}: its schema {account.schema_name} does not "
                "exist, so it holds no secrets.",
                self.style.WARNING,
            )
        for failure in report.failures:
            self.stderr.write(failure, self.style.ERROR)
        schemas = plural(len(accounts) - len(missing), "account schema")
        self.stdout.write(
            f"Rotated {plural(report.rotated, 'secret')} ({report.current} already under the "
            f"newest key) in {schemas}{'' if options['account'] else ' and public'}; "
            f"{len(report.failures)} failed; in {time.monotonic() - started:.1f} s."
        )
        if report.failures:
            raise CommandError(
                f"{len(report.failures)} secret(s) or schema(s) could not be rotated (listed "
                "above). Keep every current key in SECRET_ENCRYPTION_KEYS until this passes."
            )
        if len(keys) == 1:
            self.stdout.write(
                "Only one key is configured: every secret was already under it. To rotate, "
                "prepend a new key to SECRET_ENCRYPTION_KEYS and run this again."
            )

    def _existing_schemas(self, names: list[str]) -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [names])
            return {name for (name,) in cursor.fetchall()}

    def _rotate_schema(
        self,
        schema: str,
        tables: list[EncryptedTable],
        newest: Fernet,
        report: Report,
        where: str,
    ) -> None:
        # One transaction per schema: a schema is rotated whole or not at all, and a failure in
        # one schema (a table missing from a lagging one, say) does not undo the others.
        part = Report()
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                for table in tables:
                    self._rotate_table(cursor, schema, table, newest, part, where)
        except DatabaseError as exc:
            report.failures.append(
                f"{where}: nothing rotated, the schema could not be read or written "
                f"({_first_line(exc)}). If it lags behind, run `manage.py migrate_accounts`."
            )
            report.failures.extend(part.failures)
            return
        report.rotated += part.rotated
        report.current += part.current
        report.failures.extend(part.failures)

    def _rotate_table(
        self,
        cursor: CursorWrapper,
        schema: str,
        table: EncryptedTable,
        newest: Fernet,
        report: Report,
        where: str,
    ) -> None:
        qn = connection.ops.quote_name
        # Qualified by schema, so a table missing from an account schema is an error rather
        # than a silent fall-through to a same-named table later on the search path.
        qualified = f"{quote_schema_name(schema)}.{qn(table.table)}"
        columns = ", ".join(qn(column) for column in table.columns)
        non_empty = " OR ".join(f"{qn(column)} <> ''" for column in table.columns)
        cursor.execute(
            f"SELECT {qn(table.pk_column)}, {columns} FROM {qualified} WHERE {non_empty}"
        )
        updates: dict[str, list[tuple[str, Any, str]]] = {}
        for pk, *tokens in cursor.fetchall():
            for column, token in zip(table.columns, tokens, strict=True):
                if not token:
                    continue
                try:
                    # Checks the signature only: cheaper than decrypting, and enough to know.
                    newest.extract_timestamp(token.encode())
                except InvalidToken:
                    pass
                else:
                    report.current += 1
                    continue
                try:
                    rotated = crypto.rotate(token)
                except crypto.SecretDecryptionError:
                    report.failures.append(
                        f"{where}: {table.label} {column} of row {pk} does not decrypt with any "
                        "key in SECRET_ENCRYPTION_KEYS."
                    )
                    continue
                updates.setdefault(column, []).append((rotated, pk, token))
        for column, rows in updates.items():
            # Matching the old token too: a secret changed since the SELECT keeps its new value.
            cursor.executemany(
                f"UPDATE {qualified} SET {qn(column)} = %s "
                f"WHERE {qn(table.pk_column)} = %s AND {qn(column)} = %s",
                rows,
            )
            report.rotated += len(rows)
