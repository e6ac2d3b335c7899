"""A migration added to an account app at run time, for the fleet-migration tests and benchmark.

`extra_migrations("channels_app", {"0099_fleet_column": SOURCE})` points the app's migration
module (settings.MIGRATION_MODULES) at a temporary package holding the app's real migrations
plus the new ones, so Django's loader, provisioning's captured SQL and migrate_accounts all see
a graph with one more leaf, as after a deploy; on exit everything is as it was. The new
migrations' names must sort after the app's last one and name it (or another new one) as their
dependency: `leaf_migration("channels_app")` gives it.
"""

import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module, invalidate_caches
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.migrations.loader import MigrationLoader
from django.test.utils import override_settings


def leaf_migration(app_label: str) -> str:
    """The name of the app's latest migration on disk."""
    # No connection: the graph on disk, without reading what the database has applied.
    loader = MigrationLoader(None, ignore_no_migrations=True, load=True)
    leaves = loader.graph.leaf_nodes(app_label)
    if len(leaves) != 1:
        raise RuntimeError(f"{app_label} has {len(leaves)} leaf migrations: {leaves}")
    return leaves[0][1]


def clear_migration_caches() -> None:
    """Forget what was computed from the migration graph (provisioning's DDL and the expected
    migrations), so the next use sees the graph as it is now."""
    from tenancy import migration_state, provisioning

    provisioning.account_schema_ddl.cache_clear()
    migration_state._expected_in_order.cache_clear()


@contextmanager
def extra_migrations(app_label: str, sources: dict[str, str]) -> Iterator[str]:
    """The app's migrations plus `sources` (name -> file text), for the duration; yields the
    temporary package's module name."""
    app = apps.get_app_config(app_label)
    original = Path(app.path) / "migrations"
    root = Path(tempfile.mkdtemp(prefix="palaver-migrations-"))
    package = f"palaver_extra_migrations_{uuid.uuid4().hex[:12]}"
    target = root / package
    shutil.copytree(original, target, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in sources.items():
        (target / f"{name}.py").write_text(text)
    sys.path.insert(0, str(root))
    invalidate_caches()
    modules = {**getattr(settings, "MIGRATION_MODULES", {}), app_label: package}
    try:
        with override_settings(MIGRATION_MODULES=modules):
            import_module(package)
            clear_migration_caches()
            yield package
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        shutil.rmtree(root, ignore_errors=True)
        clear_migration_caches()


def migration_source(*, app_label: str, depends_on: str, operations: str) -> str:
    """A migration file: `operations` is the Python source of the operations list's items."""
    return (
        "from django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    dependencies = [({app_label!r}, {depends_on!r})]\n\n"
        "    operations = [\n"
        f"{operations}\n"
        "    ]\n"
    )


# --- what a schema is made of, to compare two schemas --------------------------------------------

_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0
  AND NOT a.attisdropped
"""
_INDEXES = """
SELECT t.relname, i.relname, pg_get_indexdef(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
WHERE n.nspname = %s
"""
_CONSTRAINTS = """
SELECT t.relname, con.conname, con.contype, pg_get_constraintdef(con.oid),
       con.condeferrable, con.condeferred
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = con.connamespace
WHERE n.nspname = %s
"""
_SEQUENCES = """
SELECT c.relname, s.seqtypid::regtype::text, s.seqincrement, s.seqmin, s.seqmax
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s
"""


def schema_fingerprint(conn_or_cursor: Any, schema: str) -> dict[str, Any]:
    """What a schema is made of, read from the catalogs, with the schema's own name replaced by
    `<schema>` so that two schemas built alike compare equal:

    - columns: {table: {column: (type, not null, default, identity, generated)}}
    - indexes: {(table, index): definition}
    - constraints: {(table, constraint): (type, definition, deferrable, deferred)}
    - sequences: {sequence: (type, increment, min, max)}
    - migrations: sorted [(app, name)] of its django_migrations ([] without the table)

    `conn_or_cursor` is anything with `cursor()` (a Django or psycopg connection) or a cursor
    (Django's or psycopg's)."""
    if hasattr(conn_or_cursor, "execute") and hasattr(conn_or_cursor, "fetchall"):
        return _fingerprint(conn_or_cursor, schema)
    with conn_or_cursor.cursor() as cursor:
        return _fingerprint(cursor, schema)


def _fingerprint(cursor: Any, schema: str) -> dict[str, Any]:
    def normal(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        quoted = '"' + schema.replace('"', '""') + '"'
        return text.replace(quoted + ".", "<schema>.").replace(schema + ".", "<schema>.")

    def rows(query: str) -> list[tuple[Any, ...]]:
        cursor.execute(query, [schema])
        return list(cursor.fetchall())

    columns: dict[str, dict[str, tuple[Any, ...]]] = {}
    for table, column, type_, not_null, default, identity, generated in rows(_COLUMNS):
        columns.setdefault(table, {})[column] = (
            type_,
            not_null,
            normal(default),
            identity,
            generated,
        )
    indexes = {(table, index): normal(definition) for table, index, definition in rows(_INDEXES)}
    constraints = {
        (table, name): (kind, normal(definition), deferrable, deferred)
        for table, name, kind, definition, deferrable, deferred in rows(_CONSTRAINTS)
    }
    sequences = {name: tuple(rest) for name, *rest in rows(_SEQUENCES)}
    migrations: list[tuple[str, str]] = []
    if "django_migrations" in columns:
        quoted = '"' + schema.replace('"', '""') + '"'
        cursor.execute(f"SELECT app, name FROM {quoted}.django_migrations ORDER BY app, name")
        migrations = [(app, name) for app, name in cursor.fetchall()]
    return {
        "columns": columns,
        "indexes": indexes,
        "constraints": constraints,
        "sequences": sequences,
        "migrations": migrations,
    }


def child_environment() -> dict[str, str]:
    """Environment variables that give a child process (`manage.py ...` with
    DJANGO_SETTINGS_MODULE=tests.settings_extra_migrations) the migrations added by the
    enclosing `extra_migrations` blocks."""
    modules = {
        app: module
        for app, module in getattr(settings, "MIGRATION_MODULES", {}).items()
        if module.startswith("palaver_extra_migrations_")
    }
    paths = sorted(
        {str(Path(sys.modules[module].__path__[0]).parent) for module in modules.values()}
    )
    return {
        "DJANGO_SETTINGS_MODULE": "tests.settings_extra_migrations",
        "PALAVER_EXTRA_MIGRATIONS": json.dumps({"paths": paths, "modules": modules}),
    }
