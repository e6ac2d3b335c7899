"""`make lint`'s migration check (tenancy/migration_lint.py, scripts/check_migrations.py): a
migration added to an account app at test time is applied in the scratch schema and judged on
what PostgreSQL does with its SQL."""

import os
import subprocess
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest

from tenancy.migration_lint import (
    ACKNOWLEDGEMENT,
    ERROR,
    WARNING,
    Base,
    Finding,
    Report,
    check,
    prepare,
)
from tests.extra_migrations import extra_migrations, leaf_migration, migration_source

pytestmark = pytest.mark.django_db

NEW = "0099_lint_probe"


@cache
def _real_tree() -> Base:
    """The tree on disk, built once per test session: a test's extra migrations are then the
    only ones applied statement by statement and judged (the real tree is judged in full by
    test_the_real_tree_passes)."""
    return prepare()


def _check_added(app: str, sources: dict[str, str]) -> Report:
    base = _real_tree()
    with extra_migrations(app, sources):
        report = check(base=base)
    assert report.checked == len(sources)
    return report


def _check_with(operations: str, *, app: str = "channels_app", extra: str = "") -> Report:
    source = migration_source(app_label=app, depends_on=leaf_migration(app), operations=operations)
    if extra:
        source = source.replace(
            "class Migration(migrations.Migration):\n",
            f"class Migration(migrations.Migration):\n{extra}\n",
        )
    return _check_added(app, {NEW: source})


def _of_new(report: Report, app: str = "channels_app") -> list[Finding]:
    return [f for f in report.findings if f.migration == f"{app}.{NEW}"]


def _add_field(field: str, name: str = "probe", model: str = "channel") -> str:
    return f"        migrations.AddField(model_name={model!r}, name={name!r}, field={field}),"


def _scratch_schemas() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'palaver_migration_lint_%'"
        )
        return int(cursor.fetchone()[0])


def test_the_real_tree_passes() -> None:
    report = check()
    assert _scratch_schemas() == 0
    assert report.ok, report.errors or report.problems
    assert report.checked >= 10
    # The acknowledged migrations do have findings: the lint is not passing by seeing nothing.
    assert {f.migration for f in report.findings if f.acknowledged} >= {
        "agents.0002_agents_that_run",
        "knowledge.0003_document_indexing_state",
    }


@pytest.mark.parametrize(
    "field",
    [
        "models.CharField(max_length=20, null=True)",
        # A Python default is evaluated once by Django: a constant DEFAULT, then DROP DEFAULT.
        "models.CharField(max_length=20, default='plain')",
        "models.UUIDField(default=__import__('uuid').uuid4)",
        # Now() is STATEMENT_TIMESTAMP(): stable, stored once in the catalog, no rewrite.
        "models.DateTimeField(db_default=__import__('django.db.models.functions', "
        "fromlist=['Now']).Now())",
        "models.IntegerField(db_default=7)",
        # A new column's foreign key has nothing to validate while the column is NULL.
        "models.ForeignKey('channels_app.server', null=True, on_delete=models.CASCADE, "
        "related_name='+')",
    ],
)
def test_additive_columns_are_not_flagged(field: str) -> None:
    findings = _of_new(_check_with(_add_field(field)))
    assert [f for f in findings if f.level == ERROR] == []


def test_a_volatile_db_default_rewrites_the_table() -> None:
    report = _check_with(
        _add_field(
            "models.UUIDField(db_default=__import__('django.contrib.postgres.functions', "
            "fromlist=['RandomUUID']).RandomUUID())"
        )
    )
    (finding,) = _of_new(report)
    assert finding.level == ERROR and not report.ok
    assert "rewrites channels_app_channel" in finding.what
    assert "GEN_RANDOM_UUID()" in finding.statement.upper()


def test_run_sql_is_flagged_for_review() -> None:
    report = _check_with("        migrations.RunSQL('SELECT 1', migrations.RunSQL.noop),")
    (finding,) = _of_new(report)
    assert finding.level == ERROR and "RunSQL" in finding.what and not report.ok


def test_a_type_change_postgresql_cannot_make_in_place_is_flagged() -> None:
    # Channel.id: bigint; a smallint column made integer needs a rewrite.
    report = _check_with(
        _add_field("models.SmallIntegerField(null=True)")
        + "\n"
        + "        migrations.AlterField(model_name='channel', name='probe', "
        "field=models.IntegerField(null=True)),",
    )
    # The column was added by the same migration, on an existing table: the rewrite counts.
    assert any("rewrites channels_app_channel" in f.what for f in _of_new(report))


def _two_steps(first: str, second: str, app: str = "channels_app") -> Report:
    """`first` in one migration, `second` in the next: the tests look at the second."""
    leaf = leaf_migration(app)
    sources = {
        "0098_lint_setup": migration_source(app_label=app, depends_on=leaf, operations=first),
        NEW: migration_source(app_label=app, depends_on="0098_lint_setup", operations=second),
    }
    return _check_added(app, sources)


def _alter(field: str) -> str:
    return f"        migrations.AlterField(model_name='channel', name='probe', field={field}),"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            "models.CharField(max_length=10, null=True)",
            "models.CharField(max_length=50, null=True)",
        ),
        ("models.CharField(max_length=10, null=True)", "models.TextField(null=True)"),
    ],
)
def test_type_changes_postgresql_makes_in_place_pass(before: str, after: str) -> None:
    report = _two_steps(_add_field(before), _alter(after))
    assert _of_new(report) == []


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("models.IntegerField(null=True)", "models.BigIntegerField(null=True)"),
        (
            "models.CharField(max_length=50, null=True)",
            "models.CharField(max_length=10, null=True)",
        ),
        ("models.TextField(null=True)", "models.CharField(max_length=10, null=True)"),
    ],
)
def test_type_changes_that_rewrite_are_flagged(before: str, after: str) -> None:
    report = _two_steps(_add_field(before), _alter(after))
    (finding,) = [f for f in _of_new(report) if f.level == ERROR]
    assert "rewrites channels_app_channel" in finding.what
    assert "TYPE" in finding.statement


def test_not_null_on_an_existing_column_is_a_full_scan() -> None:
    report = _two_steps(
        _add_field("models.IntegerField(null=True)"), _alter("models.IntegerField(default=0)")
    )
    errors = [f for f in _of_new(report) if f.level == ERROR]
    assert any("SET NOT NULL" in f.what and "channels_app_channel" in f.what for f in errors)


def test_constraints_need_not_valid() -> None:
    check_constraint = (
        "        migrations.AddConstraint(model_name='channel', constraint=models.CheckConstraint("
        "condition=models.Q(probe__gte=0), name='probe_positive')),"
    )
    report = _two_steps(_add_field("models.IntegerField(null=True)"), check_constraint)
    (finding,) = _of_new(report)
    assert finding.level == ERROR and "NOT VALID" in finding.what

    unique = (
        "        migrations.AddConstraint(model_name='channel', constraint=models.UniqueConstraint("
        "fields=['probe'], name='probe_unique')),"
    )
    report = _two_steps(_add_field("models.IntegerField(null=True)"), unique)
    (finding,) = _of_new(report)
    assert finding.level == ERROR and "USING INDEX" in finding.what

    # The recommended way passes: NOT VALID in one migration, VALIDATE in the next.
    not_valid = (
        "        migrations.RunSQL('ALTER TABLE channels_app_channel ADD CONSTRAINT probe_positive "
        "CHECK (probe >= 0) NOT VALID', 'ALTER TABLE channels_app_channel DROP CONSTRAINT "
        "probe_positive'),"
    )
    report = _two_steps(_add_field("models.IntegerField(null=True)") + "\n" + not_valid, "")
    setup = [f for f in report.findings if f.migration == "channels_app.0098_lint_setup"]
    # RunSQL is always for review, but PostgreSQL scanned nothing for the NOT VALID constraint.
    assert [f.what for f in setup] == [f.what for f in setup if "RunSQL" in f.what]


def test_an_index_on_an_existing_table_is_a_warning() -> None:
    index = (
        "        migrations.AddIndex(model_name='channel', index=models.Index("
        "fields=['probe'], name='probe_idx')),"
    )
    report = _two_steps(_add_field("models.IntegerField(null=True)"), index)
    (finding,) = _of_new(report)
    assert finding.level == WARNING and "CONCURRENTLY" in finding.what
    assert report.ok  # a warning does not fail the lint


def test_statements_on_a_table_the_migration_creates_are_not_flagged() -> None:
    create = (
        "        migrations.CreateModel(name='Probe', fields=["
        "('id', models.BigAutoField(primary_key=True)), "
        "('n', models.IntegerField(null=True))]),\n"
        "        migrations.AlterField(model_name='probe', name='n', "
        "field=models.BigIntegerField(default=0)),\n"
        "        migrations.AddIndex(model_name='probe', index=models.Index("
        "fields=['n'], name='probe_n_idx')),\n"
        "        migrations.AddConstraint(model_name='probe', constraint=models.CheckConstraint("
        "condition=models.Q(n__gte=0), name='probe_n_positive')),"
    )
    report = _check_with(create)
    assert _of_new(report) == []


def test_run_python_is_flagged_for_review() -> None:
    report = _check_with("        migrations.RunPython(migrations.RunPython.noop),")
    (finding,) = _of_new(report)
    assert finding.level == ERROR and "RunPython" in finding.what


def test_an_acknowledged_migration_passes_and_an_empty_acknowledgement_does_not() -> None:
    rewrite = _add_field(
        "models.FloatField(db_default=__import__('django.db.models.functions', "
        "fromlist=['Random']).Random())"
    )
    report = _check_with(rewrite, extra=f'    {ACKNOWLEDGEMENT} = "channels are few per account"')
    assert report.ok
    assert [f.acknowledged for f in _of_new(report)] == [True]

    report = _check_with(rewrite, extra=f'    {ACKNOWLEDGEMENT} = "  "')
    assert not report.ok and "non-empty" in report.problems[0]

    # An acknowledgement with nothing to acknowledge is stale: it fails too.
    report = _check_with(
        _add_field("models.IntegerField(null=True)"),
        extra=f'    {ACKNOWLEDGEMENT} = "nothing to see"',
    )
    assert not report.ok and "acknowledges nothing" in report.problems[0]


def test_nothing_is_left_behind() -> None:
    # The full check (test_the_real_tree_passes) and prepare() use the same scratch schema.
    report = _check_with(_add_field("models.IntegerField(null=True)"))
    assert report.checked == 1
    assert _scratch_schemas() == 0
    assert check(base=_real_tree()).checked == 0  # nothing added since the base: none judged
    assert _scratch_schemas() == 0


def test_a_base_that_does_not_fit_the_graph_is_refused() -> None:
    base = _real_tree()
    # A migration the tree on disk does not have (the base was prepared on another graph).
    with pytest.raises(ValueError, match="does not"):
        check(base=replace(base, nodes=base.nodes | {("channels_app", NEW)}))
    # A migration of the base whose dependency is not in it: it would run before it.
    first = ("channels_app", "0001_initial")
    assert first in base.nodes
    with pytest.raises(ValueError, match="depends on"):
        check(base=replace(base, nodes=base.nodes - {first}))


def test_the_script_passes_on_the_tree_and_says_so() -> None:
    from django.db import connection

    from config.database import database_url

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "check_migrations.py")],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "DATABASE_URL": database_url(connection.settings_dict)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 unacknowledged statements" in result.stdout


def test_the_readme_recipes_pass_without_a_scan() -> None:
    """NOT NULL the slow-lock-free way, and a concurrent index: nothing but RunSQL's review."""
    app = "channels_app"
    table = "channels_app_channel"
    steps = {
        "0097_lint_column": _add_field("models.IntegerField(null=True)"),
        "0098_lint_not_valid": (
            f"        migrations.RunSQL('ALTER TABLE {table} ADD CONSTRAINT probe_nn "
            "CHECK (probe IS NOT NULL) NOT VALID', migrations.RunSQL.noop),"
        ),
        NEW: (
            f"        migrations.RunSQL('ALTER TABLE {table} VALIDATE CONSTRAINT probe_nn', "
            "migrations.RunSQL.noop),\n"
            f"        migrations.RunSQL('ALTER TABLE {table} ALTER COLUMN probe SET NOT NULL', "
            "migrations.RunSQL.noop),"
        ),
        "0100_lint_index": (
            "        __import__('django.contrib.postgres.operations', fromlist=['x'])"
            ".AddIndexConcurrently(model_name='channel', index=models.Index("
            "fields=['probe'], name='probe_idx')),"
        ),
    }
    sources = {}
    depends_on = leaf_migration(app)
    for name, operations in steps.items():
        sources[name] = migration_source(
            app_label=app, depends_on=depends_on, operations=operations
        )
        depends_on = name
    sources["0100_lint_index"] = sources["0100_lint_index"].replace(
        "class Migration(migrations.Migration):\n",
        "class Migration(migrations.Migration):\n    atomic = False\n",
    )
    report = _check_added(app, sources)
    mine = [f for f in report.findings if "_lint_" in f.migration]
    assert mine, "the RunSQL operations are at least flagged for review"
    assert [f.what for f in mine if "RunSQL" not in f.what] == []
    # Without the validated check, the same SET NOT NULL is a full scan.
    report = _two_steps(
        _add_field("models.IntegerField(null=True)"),
        f"        migrations.RunSQL('ALTER TABLE {table} ALTER COLUMN probe SET NOT NULL', "
        "migrations.RunSQL.noop),",
    )
    assert any("SET NOT NULL" in f.what for f in _of_new(report))
