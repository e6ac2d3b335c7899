"""A migration added to an account app at run time, for the fleet-migration tests and benchmark.

`extra_migrations("channels_app", {"0099_fleet_column": SOURCE})` points the app's migration
module (settings.MIGRATION_MODULES) at a temporary package holding the app's real migrations
plus the new ones, so Django's loader, provisioning's captured SQL and migrate_accounts all see
a graph with one more leaf, as after a deploy; on exit everything is as it was. The new
migrations' names must sort after the app's last one and name it (or another new one) as their
dependency: `leaf_migration("channels_app")` gives it.
"""

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module, invalidate_caches
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test.utils import override_settings


def leaf_migration(app_label: str) -> str:
    """The name of the app's latest migration on disk."""
    loader = MigrationLoader(connection, ignore_no_migrations=True, load=True)
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
