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
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.migrations.executor import MigrationExecutor
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
        statements = recorder_sql + executor.loader.collect_sql(plan)  # type: ignore[attr-defined]
        migrations = tuple((m.app_label, m.name) for m, _ in plan)
    finally:
        connection.set_tenant(previous)
    return AccountSchemaDDL(statements=tuple(statements), migrations=migrations)


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
