"""Which account schemas lag behind the migration graph, read in bulk.

Asking Django's migration loader per schema costs a connection round trip and a graph build per
account; over 10,000 accounts that alone breaks the "no-op migrate in seconds" target. Instead,
one query lists which schemas exist, and one query per batch of a few hundred schemas returns
only the (schema, migration) pairs that are missing, so an up-to-date database sends back
nothing at all.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from django.db import DatabaseError, transaction
from django.db.migrations.loader import MigrationLoader
from django_tenants.utils import quote_schema_name

from tenancy.context import connection

# Large enough that 10,000 schemas take a few dozen queries, small enough that PostgreSQL plans
# each UNION ALL quickly (planning time grows with the number of branches).
BATCH_SIZE = 250

Migration = tuple[str, str]


@dataclass(frozen=True)
class SchemaState:
    schema: str
    exists: bool
    missing: tuple[Migration, ...]  # expected migrations not recorded in the schema, in graph order
    error: str | None = None  # why its django_migrations could not be read, if it could not

    @property
    def up_to_date(self) -> bool:
        return self.exists and not self.missing and self.error is None

    def describe(self, limit: int | None = None) -> str:
        """'up to date', 'behind by N: app.name, ...', 'schema missing' or 'unreadable: ...'."""
        if not self.exists:
            return "schema missing"
        if self.error is not None:
            return f"unreadable: {self.error}"
        if not self.missing:
            return "up to date"
        names = [f"{app}.{name}" for app, name in self.missing]
        if limit is not None and len(names) > limit:
            names = [*names[:limit], f"and {len(names) - limit} more"]
        return f"behind by {len(self.missing)}: {', '.join(names)}"


@cache
def _expected_in_order() -> tuple[Migration, ...]:
    """Every node of the graph, in the order migrate applies them from scratch (the order
    provisioning records them in, tenancy.provisioning.account_schema_ddl).

    Read from the graph, not from the provisioning DDL: building that refuses an account-app
    migration that runs Python, and such a migration must still be seen as missing, so that
    migrate_accounts can apply it with Django's migrate."""
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    order: dict[Migration, None] = {}
    for target in graph.leaf_nodes():
        for key in graph.forwards_plan(target):
            order.setdefault(key, None)
    return tuple(order)


def expected_migrations() -> frozenset[Migration]:
    """Every migration an account schema must have recorded: what provisioning records, which is
    every node of the graph, as `migrate` records them in an account schema (shared apps' too,
    applied there as no-ops by the router)."""
    return frozenset(_expected_in_order())


def schema_states(schema_names: Iterable[str]) -> dict[str, SchemaState]:
    """The state of each schema, keyed by name. Names must come from accounts_account."""
    names = list(dict.fromkeys(schema_names))
    order = _expected_in_order()
    has_table = _schemas_with_migrations_table(names)
    missing: dict[str, set[Migration]] = {}
    errors: dict[str, str] = {}
    for start in range(0, len(names), BATCH_SIZE):
        batch = [name for name in names[start : start + BATCH_SIZE] if has_table.get(name)]
        _read_missing(batch, order, missing, errors)
    states = {}
    for name in names:
        if name not in has_table:
            states[name] = SchemaState(schema=name, exists=False, missing=())
            continue
        # A schema without a django_migrations table has nothing recorded: it lacks everything.
        lacking = missing.get(name, set()) if has_table[name] else set(order)
        states[name] = SchemaState(
            schema=name,
            exists=True,
            missing=tuple(m for m in order if m in lacking),
            error=errors.get(name),
        )
    return states


def _schemas_with_migrations_table(names: Sequence[str]) -> dict[str, bool]:
    """Existing schemas among `names`, each mapped to whether it has a django_migrations table."""
    if not names:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, EXISTS ("
            "  SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid"
            "  AND c.relname = 'django_migrations' AND c.relkind IN ('r', 'p')"
            ") FROM pg_namespace n WHERE n.nspname = ANY(%s)",
            [list(names)],
        )
        return {name: bool(has) for name, has in cursor.fetchall()}


def _read_missing(
    batch: Sequence[str],
    order: Sequence[Migration],
    missing: dict[str, set[Migration]],
    errors: dict[str, str],
) -> None:
    """Add the batch's missing migrations to `missing`, and to `errors` the schemas whose
    django_migrations could not be read."""
    if not batch:
        return
    # The batch index, not the name, goes into the SELECT list: it is an int we generated, so
    # nothing from the database is ever spliced into the SQL as a literal.
    branches = [
        f"SELECT {index} AS i, e.app, e.name FROM expected e WHERE NOT EXISTS ("
        f"SELECT 1 FROM {quote_schema_name(schema)}.django_migrations m "
        "WHERE m.app = e.app AND m.name = e.name)"
        for index, schema in enumerate(batch)
    ]
    sql = (
        "WITH expected(app, name) AS MATERIALIZED ("
        "SELECT * FROM unnest(%s::text[], %s::text[])) " + " UNION ALL ".join(branches)
    )
    params = [[app for app, _ in order], [name for _, name in order]]
    try:
        # A savepoint, so that one bad schema (dropped since the existence check, say) fails
        # only this batch, which is then read one schema at a time, not the caller's transaction.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    except DatabaseError as exc:
        if len(batch) == 1:
            errors[batch[0]] = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            return
        for schema in batch:
            _read_missing([schema], order, missing, errors)
        return
    for index, app, name in rows:
        missing.setdefault(batch[index], set()).add((app, name))
