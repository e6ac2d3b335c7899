"""Fleet migrations by replay: `manage.py migrate_accounts` applying a migration added at test
time (tests.extra_migrations) to many account schemas by replaying its captured SQL
(tenancy.replay), checked against what Django's own migrate builds, schema by schema, from the
catalogs (columns, indexes, constraints, sequences, migration rows)."""

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django_tenants.utils import quote_schema_name

from accounts.models import Account
from config.database import connection_params
from tenancy.migration_state import schema_states
from tenancy.services import provision_account
from tests.extra_migrations import (
    extra_migrations,
    leaf_migration,
    migration_source,
    schema_fingerprint,
)

ROOT = Path(__file__).resolve().parent.parent
CHANNELS_LEAF = leaf_migration("channels_app")

# One migration whose SQL needs the live schema: the FK's and the unique's names to drop them
# come from introspection, the rest from the model state.
ONE = migration_source(
    app_label="channels_app",
    depends_on=CHANNELS_LEAF,
    operations="""
        migrations.AddField(
            model_name="channel",
            name="label",
            field=models.CharField(max_length=20, default="general"),
        ),
        migrations.AddField(
            model_name="channel",
            name="code",
            field=models.CharField(max_length=12, null=True, unique=True),
        ),
        migrations.AddIndex(
            model_name="channel",
            index=models.Index(fields=["label", "-created_at"], name="channel_label_recent"),
        ),
        migrations.AddConstraint(
            model_name="channel",
            constraint=models.CheckConstraint(
                condition=~models.Q(label=""), name="channel_label_not_empty"
            ),
        ),
        migrations.AlterField(
            model_name="channel", name="name", field=models.CharField(max_length=80)
        ),
        migrations.AlterField(
            model_name="channel",
            name="server",
            field=models.ForeignKey(
                on_delete=models.CASCADE,
                related_name="channels",
                to="channels_app.server",
                db_constraint=False,
            ),
        ),""",
)
# A second one, undoing what the first added: a schema lagging by both must get the unique
# constraint (and its LIKE index) created and then dropped again, as migrate does.
TWO = migration_source(
    app_label="channels_app",
    depends_on="0901_fleet_one",
    operations="""
        migrations.AlterField(
            model_name="channel",
            name="code",
            field=models.CharField(max_length=12, null=True),
        ),
        migrations.AlterField(
            model_name="channel",
            name="label",
            field=models.CharField(max_length=40, default="general"),
        ),""",
)
# Adds a column and a check that a row of one schema may violate.
CHECKED = migration_source(
    app_label="channels_app",
    depends_on=CHANNELS_LEAF,
    operations="""
        migrations.AddField(
            model_name="channel",
            name="label",
            field=models.CharField(max_length=20, default="general"),
        ),
        migrations.AddConstraint(
            model_name="channel",
            constraint=models.CheckConstraint(
                condition=~models.Q(name="#forbidden"), name="channel_name_allowed"
            ),
        ),""",
)
PYTHON = f"""from django.db import migrations, models


def label_channels(apps, schema_editor):
    apps.get_model("channels_app", "Channel").objects.update(label="labelled")


class Migration(migrations.Migration):
    dependencies = [("channels_app", {CHANNELS_LEAF!r})]

    operations = [
        migrations.AddField(
            model_name="channel",
            name="label",
            field=models.CharField(max_length=20, default="general"),
        ),
        migrations.RunPython(label_channels, migrations.RunPython.noop),
    ]
"""


# --- helpers -------------------------------------------------------------------------------------


def fleet(count: int, prefix: str = "Fleet") -> list[Account]:
    """`count` accounts with their schemas, named so that the command takes them in this order."""
    return [provision_account(name=f"{prefix} {number:02d}") for number in range(count)]


def run(**options: Any) -> tuple[str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("migrate_accounts", stdout=stdout, stderr=stderr, skip_public=True, **options)
    return stdout.getvalue(), stderr.getvalue()


def run_failing(**options: Any) -> tuple[str, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as error:
        call_command("migrate_accounts", stdout=stdout, stderr=stderr, skip_public=True, **options)
    return str(error.value), stdout.getvalue(), stderr.getvalue()


def fingerprint(schema: str) -> dict[str, Any]:
    return schema_fingerprint(connection, schema)


def differences(actual: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one line each (pytest's diff of two large nested
    dicts is unreadable and slow)."""
    lines = []
    for part in expected:
        mine, theirs = actual[part], expected[part]
        if isinstance(theirs, list):
            mine, theirs = dict.fromkeys(mine, True), dict.fromkeys(theirs, True)
        for key in sorted(set(mine) | set(theirs), key=repr):
            if mine.get(key) != theirs.get(key):
                lines.append(f"{part} {key}: {mine.get(key)!r} != expected {theirs.get(key)!r}")
    return lines


def columns(schema: str, table: str = "channels_app_channel") -> dict[str, Any]:
    return dict(fingerprint(schema)["columns"][table])


def rows_of(schema: str, app: str, name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {quote_schema_name(schema)}.django_migrations "
            "WHERE app = %s AND name = %s",
            [app, name],
        )
        (count,) = cursor.fetchone()
    return int(count)


def up_to_date(accounts: list[Account]) -> dict[str, bool]:
    states = schema_states(a.schema_name for a in accounts)
    return {a.schema_name: states[a.schema_name].up_to_date for a in accounts}


def other_connection() -> psycopg.Connection[Any]:
    return psycopg.connect(**connection_params(settings.DATABASES["default"]))


@contextmanager
def table_locked(schema: str, table: str = "channels_app_channel") -> Iterator[threading.Event]:
    """Another connection holds ACCESS EXCLUSIVE on the table until the yielded event is set
    (or the block ends)."""
    release = threading.Event()
    conn = other_connection()
    conn.execute(f"LOCK TABLE {quote_schema_name(schema)}.{table} IN ACCESS EXCLUSIVE MODE")

    def hold() -> None:
        release.wait()
        conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        yield release
    finally:
        release.set()
        holder.join()
        conn.close()


def release_later(release: threading.Event, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, release.set)
    timer.start()
    return timer


# --- replayed exactly as migrate builds ----------------------------------------------------------


@pytest.mark.parametrize(
    "sources",
    [{"0901_fleet_one": ONE}, {"0901_fleet_one": ONE, "0902_fleet_two": TWO}],
    ids=["one-migration", "two-migrations-the-second-undoing-the-first"],
)
def test_replay_builds_each_schema_exactly_as_django_migrate(
    clean_schemas: None, sources: dict[str, str]
) -> None:
    control, *accounts = fleet(21)
    before = fingerprint(accounts[0].schema_name)
    assert before == fingerprint(control.schema_name)
    pending = [("channels_app", name) for name in sources]
    with extra_migrations("channels_app", sources):
        # --dry-run: the plan, the SQL, the counts; nothing changed.
        stdout, _ = run(dry_run=True)
        assert "Dry run: 21 account schemas checked, 21 lagging, 0 up to date" in stdout
        assert "Nothing changed." in stdout
        described = ", ".join(f"{app}.{name}" for app, name in pending)
        assert f"Group 1: 21 schemas missing {described}: replayed as SQL." in stdout
        assert f"schemas: {control.schema_name}, {accounts[0].schema_name}," in stdout
        assert "and 16 more" in stdout
        assert "ADD COLUMN \"label\" varchar(20) DEFAULT 'general' NOT NULL" in stdout
        assert 'CREATE INDEX "channel_label_recent"' in stdout
        assert "DROP CONSTRAINT" in stdout  # the FK, by its introspected name
        assert all(fingerprint(a.schema_name) == before for a in (control, *accounts))

        # The control schema gets Django's own migrate, the others the replay.
        stdout, stderr = run(account=control.name, no_replay=True, jobs=1)
        assert "Checked 1 account schema: 1 migrated, 0 up to date, 0 failed" in stdout
        assert "Migrating" in stderr
        expected = fingerprint(control.schema_name)
        assert expected != before
        assert set(pending) <= set(expected["migrations"])

        stdout, stderr = run(jobs=2)
        assert "Replayed the pending migrations' SQL in 20 schemas" in stdout
        assert "Checked 21 account schemas: 20 migrated, 1 up to date, 0 failed" in stdout
        assert "Django's migrate instead" not in stdout and "Migrating" not in stderr

        for account in accounts:
            assert differences(fingerprint(account.schema_name), expected) == [], account
            for app, name in pending:
                assert rows_of(account.schema_name, app, name) == 1
        assert all(up_to_date(accounts).values())
        stdout, _ = run()
        assert "Checked 21 account schemas: 0 migrated, 21 up to date, 0 failed" in stdout
