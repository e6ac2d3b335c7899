"""Scheduled backups run by a real Celery worker: the tick enqueues each due account's backup,
the worker writes the archive, keeps it in the storage and records it, retention follows; a
backup that fails is recorded failed with its error and leaves no file."""

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

from accounts.models import User
from channels_app.models import Channel, Message, Server
from config.celery import app
from lifecycle import schedule
from lifecycle.archive import read_manifest
from lifecycle.models import Backup
from lifecycle.restore import restore_backup
from lifecycle.tasks import backup_account, schedule_backups
from tenancy import switch
from tests import lifecycle_support
from tests.factories import UserFactory
from tests.lifecycle_support import purge

SettingsWrapper = Any  # pytest-django exports no type for its settings fixture
# The backups storage on the test's own directory (a fixture).
backup_dir = lifecycle_support.backup_dir


@pytest.fixture
def worker(clean_schemas: None) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


def account_with_history(lines: int = 50) -> User:
    user = UserFactory(email="kept@example.org", account_name="Kept")
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="kept")
        channel = Channel.objects.create(server=server, name="#palaver")
        now = timezone.now()
        Message.objects.bulk_create(
            Message(channel=channel, sender="bob", text=f"line {n}", server_time=now)
            for n in range(lines)
        )
    return user


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the worker")
        time.sleep(0.1)


def test_the_tick_enqueues_the_due_backup_and_the_worker_keeps_it(
    backup_dir: Path, worker: None
) -> None:
    user = account_with_history()
    account = user.account
    slot = schedule.slot_start(account.pk, datetime.now(UTC)) + timedelta(minutes=2)

    assert schedule_backups.delay(now=slot.isoformat()).get(timeout=30) == 1
    wait_for(lambda: Backup.objects.filter(state__in=["done", "failed"]).exists())
    # Again at the next tick: nothing more.
    assert schedule_backups.delay(now=(slot + schedule.TICK).isoformat()).get(timeout=30) == 0

    backup = Backup.objects.get()
    assert backup.state == Backup.State.DONE, backup.error
    assert (backup.account_id, backup.account_name, backup.kind) == (account.pk, "Kept", "weekly")
    stored = backup_dir / backup.path
    data = stored.read_bytes()
    assert backup.path.startswith(f"{account.pk}/") and backup.path.endswith(".palaver-backup.tar")
    assert backup.size == len(data)
    assert backup.checksum == hashlib.sha256(data).hexdigest()
    manifest = read_manifest(str(stored))
    assert manifest["account"]["id"] == str(account.pk)
    assert backup.format_version == manifest["format_version"]
    assert backup.rows == manifest["rows"] >= 50
    assert backup.migrations["channels_app"].startswith("00")
    assert backup.finished_at is not None

    # What was kept restores: the lines are there in a new account.
    copy = restore_backup(source=str(stored), new_name="Kept again", without_users=True)
    with switch(copy):
        assert Message.objects.count() == 50


def test_the_task_applies_retention_to_its_account(
    backup_dir: Path, worker: None, settings: SettingsWrapper
) -> None:
    settings.BACKUP_KEEP_DAILY, settings.BACKUP_KEEP_WEEKLY = 2, 1
    user = account_with_history(lines=3)
    now = timezone.now()
    old = []
    for days in (5, 4, 3):
        path = storages["backups"].save(f"{user.account.pk}/old-{days}.tar", ContentFile(b"x"))
        old.append(
            Backup.objects.create(
                account_id=user.account.pk,
                account_name="Kept",
                kind="weekly" if days == 5 else "daily",
                state="done",
                path=path,
                size=1,
                checksum="0" * 64,
                created_at=now - timedelta(days=days),
            )
        )
    backup = Backup.objects.create(
        account_id=user.account.pk, account_name="Kept", kind="daily", created_at=now
    )
    assert backup_account.delay(str(user.account.pk), backup.pk).get(timeout=60) == "done"
    # Kept: the new one and the newest old daily (2 daily), the weekly (1 weekly).
    assert set(Backup.objects.values_list("pk", flat=True)) == {backup.pk, old[2].pk, old[0].pk}
    assert not (backup_dir / old[1].path).exists()
    assert (backup_dir / old[0].path).exists()


def test_a_failing_backup_is_recorded_failed_with_its_error(
    backup_dir: Path, worker: None, settings: SettingsWrapper, tmp_path: Path
) -> None:
    user = account_with_history(lines=3)
    # The storage's directory cannot be made: a file is in the way.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings.STORAGES = {
        **settings.STORAGES,
        "backups": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(blocker / "backups"), "base_url": None},
        },
    }
    backup = Backup.objects.create(
        account_id=user.account.pk, account_name="Kept", kind="daily", created_at=timezone.now()
    )
    assert backup_account.delay(str(user.account.pk), backup.pk).get(timeout=60) == "failed"
    backup.refresh_from_db()
    assert backup.state == Backup.State.FAILED
    assert "NotADirectoryError" in backup.error or "FileExistsError" in backup.error
    assert backup.path == "" and backup.size is None and backup.finished_at is not None

    # An account purged before its backup ran: failed, saying so.
    gone = Backup.objects.create(
        account_id=user.account.pk, account_name="Kept", kind="daily", created_at=timezone.now()
    )

    account_id = str(user.account.pk)
    purge(user.account)
    assert backup_account.delay(account_id, gone.pk).get(timeout=60) == "failed"
    gone.refresh_from_db()
    assert gone.error == "LookupError: the account no longer exists"


def test_the_daily_prune_task_ages_out_a_purged_accounts_backups(
    backup_dir: Path, worker: None, settings: SettingsWrapper
) -> None:
    from uuid import uuid4

    from lifecycle.tasks import prune_backups

    gone = uuid4()
    old_path = storages["backups"].save(f"{gone}/old.tar", ContentFile(b"x"))
    young_path = storages["backups"].save(f"{gone}/young.tar", ContentFile(b"x"))
    for path, days in ((old_path, 30), (young_path, 1)):
        Backup.objects.create(
            account_id=gone,
            account_name="Gone",
            kind="daily",
            state="done",
            path=path,
            size=1,
            checksum="0" * 64,
            created_at=timezone.now() - timedelta(days=days),
        )
    assert "lifecycle.prune_backups" in {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert prune_backups.delay().get(timeout=60) == 1
    assert list(Backup.objects.values_list("path", flat=True)) == [young_path]
    assert not (backup_dir / old_path).exists()
    assert (backup_dir / young_path).exists()
