"""Operator commands: migrate_accounts, list_accounts, provision_account, delete_account,
rotate_secrets. Each runs for real against PostgreSQL and its outcome is read back from it."""

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import override_settings
from django_tenants.signals import schema_pre_migration
from django_tenants.utils import quote_schema_name, schema_exists

from accounts.models import Account, User
from channels_app.models import Channel, Server
from llms.models import LLM, AccountLLM
from tenancy import provisioning, switch
from tenancy.migration_state import expected_migrations, schema_states
from tests.factories import PASSWORD, UserFactory, account

# Every migration of the agents app, in order: "lagging" schemas lack all of them.
AGENTS_MIGRATIONS = tuple(
    sorted(
        key
        for key in MigrationLoader(None, ignore_no_migrations=True).disk_migrations
        if key[0] == "agents"
    )
)
AGENTS_BEHIND = f"behind by {len(AGENTS_MIGRATIONS)}: " + ", ".join(
    f"{app}.{name}" for app, name in AGENTS_MIGRATIONS
)


def run(command: str, *args: str, **options: Any) -> tuple[str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


def run_failing(command: str, *args: str, **options: Any) -> tuple[str, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as error:
        call_command(command, *args, stdout=stdout, stderr=stderr, **options)
    return str(error.value), stdout.getvalue(), stderr.getvalue()


def tables(schema: str, prefix: str = "") -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = %s AND table_name LIKE %s",
            [schema, prefix.replace("_", "\\_") + "%"],
        )
        return {name for (name,) in cursor.fetchall()}


def recorded(schema: str) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, app, name, applied FROM {quote_schema_name(schema)}.django_migrations "
            "ORDER BY id"
        )
        return cursor.fetchall()


def unrecord(schema: str, migration: tuple[str, str]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {quote_schema_name(schema)}.django_migrations "
            "WHERE app = %s AND name = %s",
            list(migration),
        )


def make_lag(schema: str) -> None:
    """Undo the agents app's last migration in one schema, tables and record both, as if the
    schema had been provisioned before that migration existed."""
    for table in tables(schema, "agents_"):
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {quote_schema_name(schema)}.{table} CASCADE")
    for migration in AGENTS_MIGRATIONS:
        unrecord(schema, migration)


def drop_schema(schema: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA {quote_schema_name(schema)} CASCADE")


def account_schemas() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'account\\_%%'")
        return {name for (name,) in cursor.fetchall()}


# --- migration state ----------------------------------------------------------------------------


def test_migration_state_reads_up_to_date_lagging_and_missing_schemas(db: None) -> None:
    fresh, lagging, gone, bare = account(), account(), account(), account()
    assert {(app, name) for _, app, name, _ in recorded(fresh.schema_name)} == (
        expected_migrations()
    )
    assert set(AGENTS_MIGRATIONS) <= expected_migrations()
    assert ("auth", "0001_initial") in expected_migrations()  # shared apps are recorded too
    make_lag(lagging.schema_name)
    drop_schema(gone.schema_name)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {quote_schema_name(bare.schema_name)}.django_migrations")

    states = schema_states(a.schema_name for a in (fresh, lagging, gone, bare))

    assert states[fresh.schema_name].up_to_date
    assert states[fresh.schema_name].describe() == "up to date"
    assert states[lagging.schema_name].missing == AGENTS_MIGRATIONS
    assert states[lagging.schema_name].describe() == AGENTS_BEHIND
    assert not states[gone.schema_name].exists
    assert states[gone.schema_name].describe() == "schema missing"
    # Nothing recorded at all: behind by everything, listed in the order migrate applies them.
    assert states[bare.schema_name].missing == provisioning.account_schema_ddl().migrations


# --- migrate_accounts ---------------------------------------------------------------------------


@pytest.mark.parametrize("replay", [True, False], ids=["replayed", "django-migrate"])
def test_migrate_accounts_migrates_lagging_schemas_only_and_reports_failures(
    clean_schemas: None, tmp_path: Path, replay: bool
) -> None:
    broken, current, gone, lagging = (
        account(account_name=name) for name in ("Broken", "Current", "Gone", "Lagging")
    )
    agents_tables = tables(lagging.schema_name, "agents_")
    assert len(agents_tables) >= 2
    make_lag(lagging.schema_name)
    assert tables(lagging.schema_name, "agents_") == set()
    drop_schema(gone.schema_name)
    # Lagging too, but its agents tables cannot be rebuilt: they point at a table that is gone.
    make_lag(broken.schema_name)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DROP TABLE {quote_schema_name(broken.schema_name)}.channels_app_channel CASCADE"
        )
    untouched = recorded(current.schema_name)
    # Connected before the fork, so the worker processes inherit it and say who migrated what.
    log = tmp_path / "migrated"

    def note(sender: Any, schema_name: str, **kwargs: Any) -> None:
        with log.open("a") as file:
            file.write(f"{schema_name} {os.getpid()}\n")

    schema_pre_migration.connect(note)
    try:
        # One worker, Broken first (by name): it must still migrate Lagging after the failure.
        message, stdout, stderr = run_failing("migrate_accounts", jobs=1, no_replay=not replay)
    finally:
        schema_pre_migration.disconnect(note)

    assert "2 account schema(s) failed" in message
    # The lagging schema is whole again, tables and record.
    assert tables(lagging.schema_name, "agents_") == agents_tables
    assert set(AGENTS_MIGRATIONS) <= {
        (app, name) for _, app, name, _ in recorded(lagging.schema_name)
    }
    assert schema_states([lagging.schema_name])[lagging.schema_name].up_to_date
    # The failed one was rolled back whole, not left half-migrated.
    assert tables(broken.schema_name, "agents_") == set()
    assert schema_states([broken.schema_name])[broken.schema_name].missing == AGENTS_MIGRATIONS
    # Only the lagging schemas were migrated; the up-to-date one was not touched: not one
    # record added or rewritten.
    migrated = dict(line.split() for line in log.read_text().splitlines())
    assert migrated.pop("public") == str(os.getpid())  # public first, in the command itself
    if replay:
        # Replayed as SQL: Django's migrate (and its signal) ran for no account schema.
        assert migrated == {}
        assert "Replaying" in stderr and "2/2" in stderr  # the progress bar, as plain lines
        # The failure names the statement that failed there.
        assert f"FAILED Broken ({broken.schema_name}): relation" in stderr
        assert "in statement: " in stderr
    else:
        # Django's migrate, in a worker process.
        assert set(migrated) == {broken.schema_name, lagging.schema_name}
        assert str(os.getpid()) not in migrated.values()
        assert f"FAILED Broken ({broken.schema_name}): ProgrammingError:" in stderr
        assert "Migrating" in stderr and "2/2" in stderr  # the progress bar, as plain lines
    assert recorded(current.schema_name) == untouched
    # The missing schema is reported, not silently re-created.
    assert not schema_exists(gone.schema_name)
    assert f"FAILED Gone ({gone.schema_name}): schema {gone.schema_name} does not exist" in stderr
    assert "Checked 4 account schemas: 1 migrated, 1 up to date, 2 failed" in stdout


def test_migrate_accounts_with_nothing_to_do_touches_nothing(db: None) -> None:
    first, second = account(), account()
    before = recorded(second.schema_name)

    stdout, _ = run("migrate_accounts", skip_public=True, account=second.name)

    assert "Checked 1 account schema: 0 migrated, 1 up to date, 0 failed" in stdout
    assert recorded(second.schema_name) == before
    assert schema_states([first.schema_name])[first.schema_name].up_to_date


def test_migrate_accounts_rejects_bad_options(db: None) -> None:
    message, _, _ = run_failing("migrate_accounts", skip_public=True, account="nobody")
    assert "No account is named 'nobody'" in message
    with pytest.raises(CommandError, match="at least 1"):
        call_command("migrate_accounts", "--jobs", "0", "--skip-public")


# --- list_accounts ------------------------------------------------------------------------------


def test_list_accounts_shows_each_schema_state(db: None) -> None:
    fresh = UserFactory(account_name="Fresh").account
    lagging = account(account_name="Lagging")
    gone = account(account_name="Gone")
    make_lag(lagging.schema_name)
    drop_schema(gone.schema_name)

    stdout, _ = run("list_accounts")
    lines = stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SCHEMA", "USERS", "CREATED", "STATE"]
    row = {line.split()[0]: line for line in lines[1:-1]}
    assert row["Fresh"].endswith("up to date")
    assert str(fresh.pk) in row["Fresh"] and fresh.schema_name in row["Fresh"]
    assert row["Lagging"].endswith(AGENTS_BEHIND)
    assert row["Gone"].endswith("schema missing")
    assert lines[-1] == "3 accounts, 2 not up to date."

    stdout, _ = run("list_accounts", lagging=True)
    assert "Fresh" not in stdout and "Lagging" in stdout and "Gone" in stdout

    stdout, _ = run("list_accounts", json=True)
    listed = {entry["name"]: entry for entry in json.loads(stdout)}
    assert listed["Lagging"]["missing_migrations"] == [f"{a}.{n}" for a, n in AGENTS_MIGRATIONS]
    assert listed["Lagging"]["state"] == AGENTS_BEHIND
    assert listed["Fresh"] == {
        "name": "Fresh",
        "id": str(fresh.pk),
        "schema": fresh.schema_name,
        "users": 1,
        "created_at": fresh.created_at.isoformat(),
        "state": "up to date",
        "schema_exists": True,
        "missing_migrations": [],
    }
    assert listed["Gone"]["schema_exists"] is False

    stdout, _ = run("list_accounts", lagging=True, json=True)
    assert sorted(entry["name"] for entry in json.loads(stdout)) == ["Gone", "Lagging"]


# --- provision_account --------------------------------------------------------------------------


def test_provision_account_with_admin_creates_account_user_and_schema(db: None) -> None:
    stdout, _ = run(
        "provision_account",
        name="Carol's place",
        admin_email=" Carol@Example.org ",
        password_stdin=True,
        stdin=io.StringIO(PASSWORD + "\n"),
    )

    created = Account.objects.get(name="Carol's place")
    user = User.objects.get(account=created)
    assert user.email == "carol@example.org" and user.is_account_admin
    assert user.check_password(PASSWORD)
    assert schema_states([created.schema_name])[created.schema_name].up_to_date
    assert str(created.pk) in stdout and created.schema_name in stdout


def test_provision_account_alone_or_without_password(db: None) -> None:
    stdout, _ = run("provision_account", name="Bare")
    bare = Account.objects.get(name="Bare")
    assert bare.users.count() == 0 and schema_exists(bare.schema_name)
    assert bare.schema_name in stdout

    stdout, _ = run("provision_account", name="No password", admin_email="dan@example.org")
    assert not User.objects.get(email="dan@example.org").has_usable_password()
    assert "no usable password" in stdout


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"name": "Taken email", "admin_email": "ALICE@example.org"}, "already exists"),
        ({"name": "alice's PLACE", "admin_email": "new@example.org"}, "already exists"),
        ({"name": "alice's place"}, "already exists"),
        ({"name": "Bad email", "admin_email": "not-an-address"}, "not a valid email"),
        ({"name": "   "}, "--name is empty"),
        ({"name": "No user", "password_stdin": True}, "needs --admin-email"),
        (
            {"name": "Weak", "admin_email": "w@example.org", "password_stdin": True},
            "password was refused",
        ),
    ],
)
def test_provision_account_fails_cleanly(alice: User, options: dict[str, Any], error: str) -> None:
    before = (Account.objects.count(), User.objects.count(), account_schemas())

    message, stdout, _ = run_failing("provision_account", stdin=io.StringIO("123\n"), **options)

    assert error in message
    assert (Account.objects.count(), User.objects.count(), account_schemas()) == before
    assert stdout == ""


# --- delete_account -----------------------------------------------------------------------------


def test_delete_account_drops_schema_and_rows(alice: User, bob: User) -> None:
    doomed = alice.account
    stdout, _ = run("delete_account", str(doomed.pk), "--now", yes=True)

    assert not schema_exists(doomed.schema_name)
    assert not Account.objects.filter(pk=doomed.pk).exists()
    assert not User.objects.filter(pk=alice.pk).exists()
    assert f"dropped schema {doomed.schema_name}" in stdout and "1 user " in stdout
    # The other account is untouched.
    assert schema_exists(bob.account.schema_name) and User.objects.filter(pk=bob.pk).exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_delete_account_confirms_on_a_terminal_and_refuses_off_one(alice: User) -> None:
    doomed = alice.account

    message, _, _ = run_failing(
        "delete_account", doomed.name, "--now", stdin=io.StringIO(doomed.name)
    )
    assert "stdin is not a terminal" in message and "--yes" in message
    message, stdout, _ = run_failing(
        "delete_account", doomed.name, "--now", stdin=FakeTerminal("nope\n")
    )
    assert "did not match" in message and "Type the account name" in stdout
    assert schema_exists(doomed.schema_name) and Account.objects.filter(pk=doomed.pk).exists()

    run("delete_account", doomed.name, "--now", stdin=FakeTerminal(doomed.name + "\n"))
    assert not schema_exists(doomed.schema_name)
    assert not Account.objects.filter(pk=doomed.pk).exists()

    message, _, _ = run_failing("delete_account", "nobody", yes=True)
    assert "No account is named 'nobody'" in message


# --- rotate_secrets -----------------------------------------------------------------------------

SERVER_PASSWORD = "server-secret-1"
SASL_PASSWORD = "sasl-secret-2"
CHANNEL_KEY = "channel-secret-3"
API_KEY = "sk-secret-4"


def raw(schema: str, table: str, column: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {quote_schema_name(schema)}.{table}")
        (value,) = cursor.fetchone()
        return str(value)


def test_rotate_secrets_reencrypts_public_and_account_secrets(alice: User, bob: User) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    llm = LLM.objects.create(name="Test LLM", kind="openai", base_url="https://llm.example.org")
    with override_settings(SECRET_ENCRYPTION_KEYS=[old]):
        with switch(alice):
            server = Server.objects.create(
                name="Libera",
                host="irc.libera.chat",
                nick="alice",
                password=SERVER_PASSWORD,
                sasl_password=SASL_PASSWORD,
            )
            Channel.objects.create(server=server, name="#secret", key=CHANNEL_KEY)
            Channel.objects.create(server=server, name="#open")  # no key: nothing to rotate
        with switch(bob):
            Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
        AccountLLM.objects.create(
            account=alice.account, llm=llm, api_key=API_KEY, default_model="m"
        )
    schema = alice.account.schema_name
    before = {
        "password": raw(schema, "channels_app_server", "password"),
        "api_key": raw("public", "llms_accountllm", "api_key"),
    }

    with override_settings(SECRET_ENCRYPTION_KEYS=[new, old]):
        stdout, stderr = run("rotate_secrets")
    assert (
        "Rotated 4 secrets (0 already under the newest key) in 2 account schemas and public"
        in stdout
    )
    assert "0 failed" in stdout and "Accounts" in stderr

    assert raw(schema, "channels_app_server", "password") != before["password"]
    assert raw("public", "llms_accountllm", "api_key") != before["api_key"]
    with override_settings(SECRET_ENCRYPTION_KEYS=[new]):
        with switch(alice):
            server = Server.objects.get()
            assert (server.password, server.sasl_password) == (SERVER_PASSWORD, SASL_PASSWORD)
            assert Channel.objects.get(name="#secret").key == CHANNEL_KEY
            assert Channel.objects.get(name="#open").key == ""
        assert AccountLLM.objects.get().api_key == API_KEY

        # A second run finds everything current and changes nothing.
        stdout, _ = run("rotate_secrets")
    assert "Rotated 0 secrets (4 already under the newest key)" in stdout


def test_rotate_secrets_names_undecryptable_tokens_without_revealing_them(alice: User) -> None:
    lost, current = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(SECRET_ENCRYPTION_KEYS=[lost]), switch(alice):
        server = Server.objects.create(
            name="Libera", host="irc.libera.chat", nick="alice", password=SERVER_PASSWORD
        )
    token = raw(alice.account.schema_name, "channels_app_server", "password")

    with override_settings(SECRET_ENCRYPTION_KEYS=[current]):
        message, stdout, stderr = run_failing("rotate_secrets")

    assert "1 secret(s) or schema(s) could not be rotated" in message
    assert f"channels_app.Server password of row {server.pk} does not decrypt" in stderr
    assert alice.account.schema_name in stderr
    for output in (message, stdout, stderr):
        assert token not in output and SERVER_PASSWORD not in output
    # Left as it was, still readable with the key that wrote it.
    assert raw(alice.account.schema_name, "channels_app_server", "password") == token
