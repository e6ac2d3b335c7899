"""`manage.py backup_account` and `restore_account`: what they print, how they fail (exit code
and message), the confirmation before a replace; and an archive made by this code restored
after a deploy that added a migration (the schema migrated forward by replay)."""

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import Account
from channels_app.models import Message
from config.database import database_url
from lifecycle.backup import write_backup
from lifecycle.restore import restore_backup
from tenancy import switch
from tenancy.context import connection
from tenancy.services import purge_account
from tests.extra_migrations import extra_migrations, leaf_migration, migration_source
from tests.test_lifecycle_backup import make_account

pytestmark = pytest.mark.usefixtures("clean_schemas")
ROOT = Path(__file__).resolve().parent.parent


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*args: str, **options: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def failing(*args: str, **options: Any) -> str:
    with pytest.raises(CommandError) as raised:
        run(*args, **options)
    return str(raised.value)


def test_backup_and_restore_commands(
    transactional_db: None, storage_dir: Path, tmp_path: Path
) -> None:
    user = make_account()
    account = user.account
    path = tmp_path / "alice.tar"

    stdout, stderr = run("backup_account", "alice's PLACE", output=str(path))
    assert f"to {path}:" in stdout and " rows, 1 uploaded file, in " in stdout
    assert "Backing up" in stderr and "row" in stderr  # the progress bar
    assert "not overwriting" in failing("backup_account", account.name, output=str(path))

    assert "No account is named 'nobody'" in failing("backup_account", "nobody")
    message = failing("backup_account", account.name, output=str(tmp_path / "no" / "dir.tar"))
    assert "Cannot write" in message and "No such file or directory" in message

    # Replace asks first, and only a person on a terminal can answer.
    message = failing("restore_account", str(path), replace=account.name)
    assert "stdin is not a terminal" in message and "--yes" in message
    message = failing(
        "restore_account", str(path), replace=account.name, stdin=FakeTerminal("nope\n")
    )
    assert "did not match" in message
    with switch(account):
        Message.objects.all().delete()
    stdout, stderr = run(
        "restore_account", str(path), replace=account.name, stdin=FakeTerminal(account.name + "\n")
    )
    assert "Restored account" in stdout and "over the existing account" in stdout
    assert "Restoring" in stderr
    with switch(account):
        assert Message.objects.count() == 300

    # Exists already; as a new account with its people's emails taken; then without them.
    assert "exists here" in failing("restore_account", str(path))
    assert "emails are taken" in failing("restore_account", str(path), as_new="Copy")
    stdout, _ = run("restore_account", str(path), as_new="Copy", without_users=True)
    assert "as a new account" in stdout

    corrupt = tmp_path / "corrupt.tar"
    data = bytearray(path.read_bytes())
    data[data.index(b"schema/channels_app_message.copy.gz") + 1024] ^= 0x01
    corrupt.write_bytes(bytes(data))
    assert "corrupt" in failing("restore_account", str(corrupt), as_new="Other")
    assert not Account.objects.filter(name="Other").exists()
    assert "is not a file" in failing("restore_account", str(tmp_path / "missing.tar"))


def test_commands_exit_non_zero_with_the_message(transactional_db: None, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url(settings.DATABASES["default"])}
    for args, words in (
        (["backup_account", "nobody"], "No account is named 'nobody'"),
        (["restore_account", str(tmp_path / "missing.tar")], "is not a file"),
    ):
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done
        assert words in done.stderr and "Traceback" not in done.stderr


FUTURE_COLUMN = """        migrations.AddField(
            model_name="message",
            name="restored_flag",
            field=models.CharField(max_length=20, default="migrated"),
        ),"""


def test_an_archive_restored_after_a_deploy_is_migrated_by_replay(
    transactional_db: None, storage_dir: Path
) -> None:
    """Made by this code, restored by code with one more migration (tests.extra_migrations, as
    after a deploy): the restored schema gets it the way migrate_accounts gives it."""
    user = make_account()
    account = user.account
    out = io.BytesIO()
    write_backup(account=account, output=out)
    purge_account(account=account)
    source = migration_source(
        app_label="channels_app",
        depends_on=leaf_migration("channels_app"),
        operations=FUTURE_COLUMN,
    )
    with extra_migrations("channels_app", {"0901_restored_flag": source}):
        restored = restore_backup(source=io.BytesIO(out.getvalue()))
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT restored_flag, count(*) FROM "{restored.schema_name}".'
                "channels_app_message GROUP BY 1"
            )
            assert cursor.fetchall() == [("migrated", 300)]
            cursor.execute(
                f'SELECT count(*) FROM "{restored.schema_name}".django_migrations '
                "WHERE app = 'channels_app' AND name = '0901_restored_flag'"
            )
            assert cursor.fetchone()[0] == 1
        # The rest drops the column again: the schema is this test's own.
        with connection.cursor() as cursor:
            cursor.execute(
                f'ALTER TABLE "{restored.schema_name}".channels_app_message '
                "DROP COLUMN restored_flag"
            )
