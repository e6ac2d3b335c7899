"""Fleet migrations by replay: `manage.py migrate_accounts` applying a migration added at test
time (tests.extra_migrations) to many account schemas by replaying its captured SQL
(tenancy.replay), checked against what Django's own migrate builds, schema by schema, from the
catalogs (columns, indexes, constraints, sequences, migration rows)."""

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django_tenants.utils import quote_schema_name

from accounts.models import Account
from channels_app.models import Channel
from config.database import connection_params, database_url
from tenancy.context import switch
from tenancy.migration_state import schema_states
from tenancy.provisioning import account_schema_ddl
from tenancy.services import provision_account
from tests.extra_migrations import (
    child_environment,
    extra_migrations,
    leaf_migration,
    migration_source,
    schema_fingerprint,
)
from tests.factories import ChannelFactory

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
LLMS_LEAF = leaf_migration("llms")
# A shared (public) app's migration: an account schema only records it.
SHARED = migration_source(
    app_label="llms",
    depends_on=LLMS_LEAF,
    operations="""
        migrations.AddField(
            model_name="llm", name="fleet_note", field=models.TextField(blank=True, default="")
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


# --- what cannot be replayed, and what needs no replay -------------------------------------------


def test_a_run_python_migration_falls_back_to_django_migrate(clean_schemas: None) -> None:
    accounts = fleet(3)
    with switch(accounts[1]):
        channel = cast(Channel, ChannelFactory())
    with extra_migrations("channels_app", {"0901_fleet_python": PYTHON}):
        stdout, _ = run(dry_run=True)
        reason = (
            "channels_app.0901_fleet_python runs RunPython, whose effect is not SQL that can be "
            "captured once"
        )
        assert (
            "Group 1: 3 schemas missing channels_app.0901_fleet_python: Django's migrate, "
            f"because {reason}." in stdout
        )

        stdout, stderr = run(jobs=2)

        assert (
            "3 schemas missing channels_app.0901_fleet_python get Django's migrate instead of a "
            f"replay: {reason}: " + ", ".join(a.schema_name for a in accounts) in stdout
        )
        assert "Migrating" in stderr and "Replaying" not in stderr
        assert "Checked 3 account schemas: 3 migrated, 0 up to date, 0 failed" in stdout
        assert all(up_to_date(accounts).values())
        for account in accounts:
            assert "label" in columns(account.schema_name)
            assert rows_of(account.schema_name, "channels_app", "0901_fleet_python") == 1
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT label FROM {quote_schema_name(accounts[1].schema_name)}"
                ".channels_app_channel WHERE id = %s",
                [channel.pk],
            )
            assert cursor.fetchone() == ("labelled",)  # the RunPython ran


def test_a_shared_app_migration_is_only_recorded_in_account_schemas(clean_schemas: None) -> None:
    accounts = fleet(20)
    before = {a.schema_name: fingerprint(a.schema_name) for a in accounts}
    with extra_migrations("llms", {"0901_fleet_shared": SHARED}):
        assert not any(up_to_date(accounts).values())  # every schema lags by it
        stdout, _ = run(dry_run=True)
        assert "Group 1: 20 schemas missing llms.0901_fleet_shared: replayed as SQL." in stdout
        assert "SQL: none (shared-app migrations: only recorded)" in stdout

        started = time.monotonic()
        stdout, stderr = run(jobs=2)
        elapsed = time.monotonic() - started

        assert "Replayed the pending migrations' SQL in 20 schemas" in stdout
        assert "Checked 20 account schemas: 20 migrated, 0 up to date, 0 failed" in stdout
        assert "Migrating" not in stderr  # no per-schema migrate
        assert elapsed < 10, elapsed  # Django's migrate takes about 0.5 s per schema
        assert all(up_to_date(accounts).values())
        for account in accounts:
            after = fingerprint(account.schema_name)
            assert after["migrations"] == sorted(
                [*before[account.schema_name]["migrations"], ("llms", "0901_fleet_shared")]
            )
            # Nothing else changed: the public table's column is not the account's business.
            assert {**after, "migrations": []} == {
                **before[account.schema_name],
                "migrations": [],
            }


# --- failures, locks, interruptions --------------------------------------------------------------


def test_a_failing_statement_leaves_its_schema_as_it_was_and_the_others_migrated(
    clean_schemas: None,
) -> None:
    # The first by name: the one the capture would run in first.
    bad, *good = fleet(6)
    with switch(bad):
        forbidden = cast(Channel, ChannelFactory(name="#forbidden"))
    before = fingerprint(bad.schema_name)
    with extra_migrations("channels_app", {"0901_fleet_checked": CHECKED}):
        message, stdout, stderr = run_failing(jobs=2)

        assert "1 account schema(s) failed to migrate" in message
        assert f"FAILED {bad.name} ({bad.schema_name}): " in stderr
        assert 'check constraint "channel_name_allowed"' in stderr
        assert 'in statement: ALTER TABLE "channels_app_channel" ADD CONSTRAINT' in stderr
        assert "Checked 6 account schemas: 5 migrated, 0 up to date, 1 failed" in stdout
        # The failed schema is exactly as it was: no column, no migration row.
        assert fingerprint(bad.schema_name) == before
        assert "label" not in columns(bad.schema_name)
        assert rows_of(bad.schema_name, "channels_app", "0901_fleet_checked") == 0
        expected = fingerprint(good[0].schema_name)
        assert "label" in expected["columns"]["channels_app_channel"]
        assert all(up_to_date(good).values())

        # Fixed, run again: it is migrated, like the others.
        with switch(bad):
            Channel.objects.filter(pk=forbidden.pk).update(name="#allowed")
        stdout, _ = run()
        assert "Checked 6 account schemas: 1 migrated, 5 up to date, 0 failed" in stdout
        assert differences(fingerprint(bad.schema_name), expected) == []


def test_a_locked_table_is_retried_after_the_others(clean_schemas: None) -> None:
    accounts = fleet(6)
    busy = accounts[2]
    with extra_migrations("channels_app", {"0901_fleet_checked": CHECKED}):
        with table_locked(busy.schema_name) as release:
            timer = release_later(release, 1.5)
            stdout, _ = run(jobs=2, lock_timeout=200, lock_retries=10)
            timer.join()
        assert "Checked 6 account schemas: 6 migrated, 0 up to date, 0 failed" in stdout
        assert f"tried again after the rest: {busy.schema_name}." in stdout
        assert all(up_to_date(accounts).values())
        expected = fingerprint(accounts[0].schema_name)
        assert differences(fingerprint(busy.schema_name), expected) == []


def test_a_table_locked_for_good_is_reported_and_the_others_migrated(
    clean_schemas: None,
) -> None:
    accounts = fleet(4)
    busy = accounts[0]  # the first: the capture too must get past it
    before = fingerprint(busy.schema_name)
    with extra_migrations("channels_app", {"0901_fleet_checked": CHECKED}):
        with table_locked(busy.schema_name):
            message, stdout, stderr = run_failing(jobs=2, lock_timeout=100, lock_retries=1)
        # (Read once the lock is gone: the catalog functions would wait for it too.)
        assert fingerprint(busy.schema_name) == before
        assert "1 account schema(s) failed" in message
        assert (
            f"FAILED {busy.name} ({busy.schema_name}): a table stayed locked (lock_timeout)"
            in stderr
        )
        assert "Checked 4 account schemas: 3 migrated, 0 up to date, 1 failed" in stdout
        assert up_to_date(accounts) == {
            a.schema_name: a.schema_name != busy.schema_name for a in accounts
        }
        stdout, _ = run()
        assert "Checked 4 account schemas: 1 migrated, 3 up to date, 0 failed" in stdout


def waiting_for_lock(schema: str, table: str = "channels_app_channel") -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND relation = %s::regclass)",
            [f"{quote_schema_name(schema)}.{table}"],
        )
        (waiting,) = cursor.fetchone()
    return bool(waiting)


def test_an_interrupted_run_resumed_migrates_every_schema_exactly_once(
    clean_schemas: None,
) -> None:
    accounts = fleet(8)
    stuck = accounts[4]
    with extra_migrations("channels_app", {"0901_fleet_checked": CHECKED}):
        env = {
            **os.environ,
            **child_environment(),
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
        }
        with table_locked(stuck.schema_name) as release:
            # One worker, in name order: it migrates the first four, then waits on the lock.
            child = subprocess.Popen(
                [sys.executable, "manage.py", "migrate_accounts", "--skip-public", "--jobs", "1",
                 "--lock-timeout", "60000"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while not waiting_for_lock(stuck.schema_name):
                    assert child.poll() is None, child.communicate()[0]
                    assert time.monotonic() < deadline, "the child never reached the lock"
                    time.sleep(0.1)
                state = up_to_date(accounts)
                assert [state[a.schema_name] for a in accounts] == [True] * 4 + [False] * 4
            finally:
                child.send_signal(signal.SIGKILL)
                child.communicate(timeout=30)
            assert child.returncode == -signal.SIGKILL
            # Resumed at once, while the lock is still held, and it goes away meanwhile.
            timer = release_later(release, 2.0)
            stdout, stderr = run(jobs=2, lock_timeout=200, lock_retries=10)
            timer.join()
        assert "Checked 8 account schemas: 4 migrated, 4 up to date, 0 failed" in stdout, (
            stdout + stderr
        )
        # The killed run's backend still committed the stuck schema once the lock went away:
        # the resumed run waited for it and left that schema alone.
        assert (
            f"1 schema had been migrated meanwhile by another run, left as they were: "
            f"{stuck.schema_name}." in stdout
        )
        expected = fingerprint(accounts[0].schema_name)
        for account in accounts:
            assert rows_of(account.schema_name, "channels_app", "0901_fleet_checked") == 1
            assert differences(fingerprint(account.schema_name), expected) == [], account
        stdout, _ = run()
        assert "Checked 8 account schemas: 0 migrated, 8 up to date, 0 failed" in stdout


def test_an_interrupted_run_stops_taking_schemas(clean_schemas: None) -> None:
    """Ctrl-C: the schema in hand is finished or rolled back, no other is started."""
    accounts = fleet(6)
    stuck = accounts[2]
    with extra_migrations("channels_app", {"0901_fleet_checked": CHECKED}):
        env = {
            **os.environ,
            **child_environment(),
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
        }
        with table_locked(stuck.schema_name):
            child = subprocess.Popen(
                [sys.executable, "manage.py", "migrate_accounts", "--skip-public", "--jobs", "1",
                 "--lock-timeout", "1500", "--lock-retries", "0"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while not waiting_for_lock(stuck.schema_name):
                    assert child.poll() is None, child.communicate()[0]
                    assert time.monotonic() < deadline, "the child never reached the lock"
                    time.sleep(0.05)
                child.send_signal(signal.SIGINT)
                output, _ = child.communicate(timeout=30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
        assert child.returncode != 0, output
        state = up_to_date(accounts)
        # The first two done, the stuck one rolled back at its lock_timeout, the rest untouched.
        assert [state[a.schema_name] for a in accounts] == [True, True] + [False] * 4, output
        stdout, _ = run()
        assert "Checked 6 account schemas: 4 migrated, 2 up to date, 0 failed" in stdout


def test_a_provisioned_schema_is_exactly_what_django_migrate_builds(clean_schemas: None) -> None:
    """Provisioning replays the captured DDL with one fold (tenancy.provisioning._collect_sql: a
    column added to a table the same DDL creates gets no temporary DEFAULT, which costs a pass
    over the whole catalog per column at fleet scale); the schema must still be the one Django's
    migrate builds, column for column, index for index."""
    provisioned = provision_account(name="Provisioned")
    control = "account_migrate_control"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {quote_schema_name(control)}")
    try:
        call_command(
            "migrate_schemas", tenant=True, schema_name=control, interactive=False, verbosity=0
        )
        assert differences(fingerprint(provisioned.schema_name), fingerprint(control)) == []
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {quote_schema_name(control)} CASCADE")
    # The fold took every temporary default away (Django's own SQL has some: agents 0002 adds
    # columns with Python defaults to the tables of 0001), and kept the database defaults.
    statements = account_schema_ddl().statements
    added_with_default = [s for s in statements if re.search(r"ADD COLUMN .* DEFAULT ", s)]
    assert added_with_default == []
    assert any("DROP DEFAULT" in s for s in statements)
