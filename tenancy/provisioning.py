"""Creating and dropping account schemas.

An account's schema is built by replaying the SQL of every account-app migration, captured once
per process with Django's own `collect_sql` (what `sqlmigrate` prints), then recording those
migrations as applied. It all happens in the caller's transaction, so the account row, its users
and its schema are created together or not at all. This costs about what the raw DDL costs,
where running `migrate` per schema (django-tenants' default) costs ~100x more, and it does not
slow down as accounts accumulate.
"""

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration
from django.db.migrations.recorder import MigrationRecorder
from django_tenants.utils import get_public_schema_name, quote_schema_name, schema_exists

from tenancy.context import connection

if TYPE_CHECKING:  # see tenancy/context.py: tenancy never imports accounts at run time
    from accounts.models import Account

# A schema name that is never created: the migration router needs a non-public schema to select
# the account apps while SQL is collected.
_COLLECT_SCHEMA = "account_ddl_collector"


@dataclass(frozen=True)
class AccountSchemaDDL:
    statements: tuple[str, ...]
    migrations: tuple[tuple[str, str], ...]

    @property
    def sql(self) -> str:
        return "\n".join(self.statements)


class ProvisioningError(RuntimeError):
    pass


def account_app_labels() -> set[str]:
    return {app.rsplit(".", 1)[-1] for app in settings.TENANT_APPS}


@cache
def account_schema_ddl() -> AccountSchemaDDL:
    """The DDL of a fully migrated account schema, unqualified (it lands in the first schema of
    the search path), with the django_migrations table first."""
    previous = connection.tenant
    connection.set_schema(_COLLECT_SCHEMA)
    try:
        executor = MigrationExecutor(connection)
        graph = executor.loader.graph
        plan = executor.migration_plan(graph.leaf_nodes(), clean_start=True)
        labels = account_app_labels()
        for migration, _backwards in plan:
            if migration.app_label not in labels:
                continue
            for operation in migration.operations:
                if not operation.reduces_to_sql:
                    raise ProvisioningError(
                        f"migration {migration.app_label}.{migration.name} runs Python "
                        f"({type(operation).__name__}); account schemas cannot be built from SQL "
                        "alone. Make it SQL, or squash it away."
                    )
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            editor.create_model(MigrationRecorder.Migration)
            recorder_sql = list(editor.collected_sql)
        statements = recorder_sql + _collect_sql(executor, plan)
        migrations = tuple((m.app_label, m.name) for m, _ in plan)
    finally:
        connection.set_tenant(previous)
    return AccountSchemaDDL(statements=tuple(statements), migrations=migrations)


def _collect_sql(executor: MigrationExecutor, plan: list[tuple[Migration, bool]]) -> list[str]:
    """The plan's SQL, as `sqlmigrate` collects it (MigrationLoader.collect_sql), with one fold:
    a column added to a table this same DDL creates gets no temporary DEFAULT.

    Django adds a NOT NULL column with a Python default as `ADD COLUMN c ... DEFAULT v NOT NULL`
    then `DROP DEFAULT`, so the rows already there get v. A new account's tables have no rows,
    so the DEFAULT does nothing here, and it is costly: PostgreSQL checks every expression
    index of the whole database for uses of the table's row type on each such ADD COLUMN, a
    cost that grows with the number of account schemas (docs/benchmarks.md, issue 10). The
    schema comes out the same (the DROP DEFAULT still runs, the column is NOT NULL); only
    pg_attribute's missing-value bookkeeping, which no query sees, differs. Database defaults
    (db_default) are part of the column and are kept."""
    statements: list[str] = []
    state = None
    created: set[str] = set()
    for migration, _backwards in plan:
        with connection.schema_editor(collect_sql=True, atomic=migration.atomic) as editor:
            _fold_defaults_of_new_tables(editor, created)
            if state is None:
                state = executor.loader.project_state(
                    (migration.app_label, migration.name), at_end=False
                )
            state = migration.apply(state, editor, collect_sql=True)
        statements.extend(editor.collected_sql)
    return statements


def _fold_defaults_of_new_tables(editor: Any, created: set[str]) -> None:
    create_model = editor.create_model
    add_field = editor.add_field
    column_sql = editor.column_sql

    def creating(model: Any) -> None:
        created.add(model._meta.db_table)
        create_model(model)

    def adding(model: Any, field: Any) -> None:
        if model._meta.db_table not in created:
            add_field(model, field)
            return
        editor.column_sql = lambda m, f, include_default=False: column_sql(
            m, f, include_default=False
        )
        try:
            add_field(model, field)
        finally:
            editor.column_sql = column_sql

    editor.create_model = creating
    editor.add_field = adding


def create_schema(account: "Account") -> None:
    """Create and fill the account's schema inside the current transaction."""
    if connection.schema_name != get_public_schema_name():
        raise ProvisioningError("account schemas are created from the public schema")
    ddl = account_schema_ddl()
    schema = quote_schema_name(account.schema_name)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
        # SET LOCAL ends with the transaction; the explicit reset keeps the rest of the
        # caller's transaction on public.
        cursor.execute(f"SET LOCAL search_path = {schema}")
        cursor.execute(ddl.sql)
        cursor.execute(
            "INSERT INTO django_migrations (app, name, applied) "
            "SELECT app, name, now() FROM unnest(%s::text[], %s::text[]) AS m(app, name)",
            [[app for app, _ in ddl.migrations], [name for _, name in ddl.migrations]],
        )
        cursor.execute(f"SET LOCAL search_path = {quote_schema_name(get_public_schema_name())}")


def drop_schema(account: "Account") -> None:
    if schema_exists(account.schema_name):
        with connection.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {quote_schema_name(account.schema_name)} CASCADE")
