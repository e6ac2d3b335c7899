"""Scheduled backups: when each account is due (spread over the day, once a day, idempotent),
which backups retention keeps, and the operator commands that list and prune them."""

import io
import itertools
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from accounts.models import User
from lifecycle import registry, schedule
from lifecycle.models import Backup
from lifecycle.retention import Policy, past_retention
from tests import lifecycle_support
from tests.factories import PASSWORD, UserFactory
from tests.lifecycle_support import purge

# A Tuesday.
SettingsWrapper = Any  # pytest-django exports no type for its settings fixture
# The backups storage on the test's own directory (a fixture).
backup_dir = lifecycle_support.backup_dir

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def stored_backup(
    account_id: uuid.UUID,
    created_at: datetime,
    kind: str,
    *,
    name: str = "Alice's place",
    state: str = Backup.State.DONE,
) -> Backup:
    """A registry row whose file is really in the storage (a few bytes stand for an archive)."""
    path = ""
    if state == Backup.State.DONE:
        path = storages["backups"].save(
            f"{account_id}/{created_at:%Y%m%dT%H%M%SZ}-{kind}.palaver-backup.tar",
            ContentFile(b"archive"),
        )
    return Backup.objects.create(
        account_id=account_id,
        account_name=name,
        kind=kind,
        state=state,
        path=path,
        size=7 if path else None,
        checksum="0" * 64 if path else "",
        rows=42 if path else None,
        error="" if state != Backup.State.FAILED else "OSError: disk full",
        created_at=created_at,
    )


def daily_history(account_id: uuid.UUID, *, days: int, end: datetime = NOW) -> list[Backup]:
    """One scheduled backup a day for `days` days up to `end`, the first of each ISO week
    weekly, as the schedule records them."""
    made: list[Backup] = []
    for age in range(days, 0, -1):
        when = end - timedelta(days=age) + timedelta(hours=1)
        first_of_week = not any(
            b.kind == Backup.Kind.WEEKLY
            and schedule.week_start(b.created_at) == schedule.week_start(when)
            for b in made
        )
        kind = Backup.Kind.WEEKLY if first_of_week else Backup.Kind.DAILY
        made.append(stored_backup(account_id, when, kind))
    return made


# --- when backups are due --------------------------------------------------------------------


def test_slots_are_spread_over_the_day_and_stable() -> None:
    ids = [uuid.uuid5(uuid.NAMESPACE_OID, str(n)) for n in range(2400)]
    slots = [schedule.slot_minute(i) for i in ids]
    assert slots == [schedule.slot_minute(i) for i in ids]  # an account keeps its time
    per_hour = Counter(slot // 60 for slot in slots)
    # 100 an hour on average: every hour has some, none has the crowd.
    assert len(per_hour) == 24
    assert min(per_hour.values()) >= 60
    assert max(per_hour.values()) <= 140
    per_quarter = Counter(slot // 15 for slot in slots)
    assert max(per_quarter.values()) <= 3 * 2400 / 96


@pytest.mark.parametrize("tick_minutes", [15, 7, 60])
def test_one_backup_per_day_at_the_accounts_time_whatever_the_tick(tick_minutes: int) -> None:
    for n in range(50):
        account_id = uuid.uuid5(uuid.NAMESPACE_OID, f"tick-{n}")
        slot = schedule.slot_minute(account_id)
        made: list[datetime] = []
        moment = NOW.replace(hour=0, minute=0)
        while moment < NOW.replace(hour=0, minute=0) + timedelta(days=5):
            if schedule.is_due(account_id, now=moment, last_backup=made[-1] if made else None):
                made.append(moment)
            moment += timedelta(minutes=tick_minutes)
        # One a day (the first day's slot may fall before the first tick of the run or after
        # the last), each within the window after the account's time.
        assert len(made) in (4, 5, 6)
        for when in made:
            since_slot = (when - when.replace(hour=0, minute=0)).total_seconds() / 60 - slot
            assert 0 <= since_slot % (24 * 60) < schedule.WINDOW.total_seconds() / 60
        for earlier, later in itertools.pairwise(made):
            assert later - earlier > timedelta(hours=23)


def test_a_slot_missed_for_longer_than_the_window_waits_for_the_next_day() -> None:
    account_id = uuid.uuid5(uuid.NAMESPACE_OID, "late")
    start = schedule.slot_start(account_id, NOW)
    assert schedule.is_due(account_id, now=start, last_backup=None)
    assert schedule.is_due(account_id, now=start + schedule.WINDOW / 2, last_backup=None)
    assert not schedule.is_due(account_id, now=start + schedule.WINDOW, last_backup=None)
    assert not schedule.is_due(account_id, now=start - timedelta(minutes=1), last_backup=None)
    # Done at its time: not again until the next day's time.
    assert not schedule.is_due(account_id, now=start + timedelta(minutes=30), last_backup=start)
    tomorrow = start + timedelta(days=1)
    assert schedule.is_due(account_id, now=tomorrow, last_backup=start)


def at_slot(user: User, minutes_after: int = 5) -> datetime:
    return schedule.slot_start(user.account.pk, NOW) + timedelta(minutes=minutes_after)


def test_the_tick_records_each_due_backup_once(alice: User, bob: User) -> None:
    now = at_slot(alice)
    # Bob's time is his own (ids are random: he may share alice's hour, one time in 24).
    bob_due = schedule.is_due(bob.account.pk, now=now, last_backup=None)
    first = schedule.start_due_backups(now=now)
    expected = {(alice.account.pk, "Alice's place", Backup.State.RUNNING, Backup.Kind.WEEKLY)}
    if bob_due:
        expected.add((bob.account.pk, "Bob's place", Backup.State.RUNNING, Backup.Kind.WEEKLY))
    # Each the first of its ISO week: the weekly one.
    assert {(b.account_id, b.account_name, b.state, b.kind) for b in first} == expected
    # The same tick run twice, and ticks later in the window, record nothing more for alice
    # (bob's own time may come in the next quarter hour).
    assert schedule.start_due_backups(now=now) == []
    later = schedule.start_due_backups(now=now + timedelta(minutes=15))
    assert alice.account.pk not in {b.account_id for b in later}
    assert Backup.objects.filter(account_id=alice.account.pk).count() == 1

    # Done; the next day's is a daily one.
    Backup.objects.update(state=Backup.State.DONE, path="x", size=1, checksum="0" * 64)
    next_day = schedule.start_due_backups(now=now + timedelta(days=1))
    assert {(b.account_id, b.kind) for b in next_day} >= {(alice.account.pk, Backup.Kind.DAILY)}
    assert {b.kind for b in next_day} == {Backup.Kind.DAILY}


def test_a_failed_attempt_is_tried_again_within_the_window(alice: User) -> None:
    now = at_slot(alice)
    [attempt] = schedule.start_due_backups(now=now)
    Backup.objects.filter(pk=attempt.pk).update(state=Backup.State.FAILED, error="boom")
    [again] = schedule.start_due_backups(now=now + timedelta(minutes=15))
    # The failed one was no weekly backup: the retry still is.
    assert again.kind == Backup.Kind.WEEKLY
    assert Backup.objects.filter(account_id=alice.account.pk).count() == 2


def test_a_backup_that_lost_its_worker_is_marked_failed(alice: User) -> None:
    now = at_slot(alice)
    [attempt] = schedule.start_due_backups(now=now)
    schedule.start_due_backups(now=now + schedule.RUNNING_TIMEOUT + timedelta(minutes=1))
    attempt.refresh_from_db()
    assert attempt.state == Backup.State.FAILED
    assert "worker stopped" in attempt.error


def test_scheduling_switched_off_enqueues_nothing(alice: User, settings: SettingsWrapper) -> None:
    from lifecycle.tasks import schedule_backups

    settings.BACKUP_SCHEDULE = False
    assert schedule_backups() == 0
    assert not Backup.objects.exists()


def test_the_beat_entry_runs_the_tick_every_quarter_hour(settings: SettingsWrapper) -> None:
    from config.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["backups-tick"]
    assert entry["task"] == "lifecycle.schedule_backups"
    assert entry["task"] in app.tasks
    assert entry["schedule"].minute == {0, 15, 30, 45}
    assert timedelta(minutes=15) == schedule.TICK


# --- retention -------------------------------------------------------------------------------


def test_retention_keeps_the_newest_daily_and_weekly(db: None, backup_dir: Path) -> None:
    account_id = uuid.uuid4()
    made = daily_history(account_id, days=60)
    manual = stored_backup(account_id, NOW - timedelta(days=90), Backup.Kind.MANUAL)
    old_failure = stored_backup(
        account_id, NOW - timedelta(days=30), Backup.Kind.DAILY, state=Backup.State.FAILED
    )
    new_failure = stored_backup(
        account_id, NOW - timedelta(hours=2), Backup.Kind.DAILY, state=Backup.State.FAILED
    )
    newest_7 = made[-7:]
    weekly = [b for b in made if b.kind == Backup.Kind.WEEKLY]
    assert len(weekly) >= 8
    expected_kept = {b.pk for b in newest_7} | {b.pk for b in weekly[-4:]} | {manual.pk}
    expected_kept |= {new_failure.pk}

    # The account does not exist in this test's database: seen as an existing one here.
    result = registry.delete_backups(
        past_retention(
            Backup.objects.filter(account_id=account_id),
            account_exists=True,
            now=NOW,
            policy=Policy(keep_daily=7, keep_weekly=4),
        )
    )
    assert result.errors == []
    assert old_failure.pk in {b.pk for b in result.deleted}
    assert set(Backup.objects.values_list("pk", flat=True)) == expected_kept
    on_disk = {str(p.relative_to(backup_dir)) for p in backup_dir.rglob("*") if p.is_file()}
    assert on_disk == set(Backup.objects.exclude(path="").values_list("path", flat=True))
    assert len(on_disk) == len(expected_kept) - 1  # the recent failure has no file


def test_a_weekly_backup_counts_as_that_days_backup_too() -> None:
    account_id = uuid.uuid4()
    backups = [
        Backup(account_id=account_id, kind=kind, state="done", created_at=NOW - timedelta(days=d))
        for d, kind in [(1, "daily"), (2, "weekly"), (3, "daily"), (9, "weekly")]
    ]
    expired = past_retention(
        backups, account_exists=True, now=NOW, policy=Policy(keep_daily=2, keep_weekly=1)
    )
    # Newest two scheduled (daily d1, weekly d2); newest weekly is d2: d3 and d9 go.
    assert [b.created_at for b in expired] == [NOW - timedelta(days=3), NOW - timedelta(days=9)]


def test_a_purged_accounts_backups_age_out() -> None:
    account_id = uuid.uuid4()
    backups = [
        Backup(account_id=account_id, kind=kind, state="done", created_at=NOW - timedelta(days=d))
        for d, kind in [(1, "daily"), (3, "weekly"), (6, "manual"), (10, "weekly"), (40, "weekly")]
    ]
    policy = Policy(keep_daily=5, keep_weekly=4)
    assert past_retention(backups, account_exists=True, now=NOW, policy=policy) == []
    gone = past_retention(backups, account_exists=False, now=NOW, policy=policy)
    # Daily and manual ones go after 5 days, weekly ones after 4 weeks.
    assert [b.created_at for b in gone] == [NOW - timedelta(days=d) for d in (6, 40)]
    much_later = past_retention(
        backups, account_exists=False, now=NOW + timedelta(weeks=5), policy=policy
    )
    assert len(much_later) == len(backups)


# --- commands --------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_prune_dry_run_changes_nothing_then_prune_deletes(
    alice: User, backup_dir: Path, settings: SettingsWrapper
) -> None:
    settings.BACKUP_KEEP_DAILY, settings.BACKUP_KEEP_WEEKLY = 3, 1
    account_id = alice.account.pk
    made = daily_history(account_id, days=10)
    files_before = sorted(p for p in backup_dir.rglob("*") if p.is_file())
    rows_before = list(Backup.objects.values_list("pk", flat=True))

    printed = run("prune_backups", "--dry-run")
    assert sorted(p for p in backup_dir.rglob("*") if p.is_file()) == files_before
    assert list(Backup.objects.values_list("pk", flat=True)) == rows_before
    # 10 scheduled: the newest 3 and the newest weekly are kept.
    kept = {b.pk for b in made[-3:]} | {[b for b in made if b.kind == Backup.Kind.WEEKLY][-1].pk}
    doomed = [b for b in made if b.pk not in kept]
    assert printed.count("would delete ") == len(doomed)
    for backup in doomed:
        assert backup.path in printed
    assert f"{len(doomed)} backups past retention in 1 account; nothing deleted" in printed

    printed = run("prune_backups")
    assert printed.count("\ndeleted ") + printed.startswith("deleted ") == len(doomed)
    assert set(Backup.objects.values_list("pk", flat=True)) == kept
    assert len([p for p in backup_dir.rglob("*") if p.is_file()]) == len(kept)
    assert "0 backups past retention" in run("prune_backups")


def test_prune_handles_accounts_that_no_longer_exist(db: None, backup_dir: Path) -> None:
    gone = uuid.uuid4()
    old = stored_backup(gone, NOW - timedelta(days=400), Backup.Kind.WEEKLY, name="Gone")
    printed = run("prune_backups")
    assert f"deleted weekly backup of 'Gone' ({gone})" in printed
    assert not Backup.objects.filter(pk=old.pk).exists()
    assert not (backup_dir / old.path).exists()


def test_prune_says_what_it_could_not_delete_and_fails(
    db: None, backup_dir: Path, settings: SettingsWrapper
) -> None:
    stuck = stored_backup(uuid.uuid4(), NOW - timedelta(days=400), Backup.Kind.DAILY, name="X")
    # The row names a storage that is no longer configured: its file cannot be reached.
    Backup.objects.filter(pk=stuck.pk).update(storage="old-bucket")
    with pytest.raises(CommandError, match=r"(?s)1 backup could not be deleted.*old-bucket"):
        run("prune_backups")
    assert Backup.objects.filter(pk=stuck.pk).exists()


def test_list_backups_shows_account_kind_time_size_rows_state(
    alice: User, bob: User, backup_dir: Path
) -> None:
    stored_backup(alice.account.pk, NOW - timedelta(days=1), Backup.Kind.WEEKLY)
    stored_backup(alice.account.pk, NOW, Backup.Kind.DAILY, state=Backup.State.FAILED)
    stored_backup(bob.account.pk, NOW, Backup.Kind.MANUAL, name="Bob's place")

    everything = run("list_backups").splitlines()
    assert everything[0].split() == ["ACCOUNT", "KIND", "WHEN", "(UTC)", "SIZE", "ROWS", "STATE"]
    assert len(everything) == 5
    assert everything[-1] == "3 backups of 2 accounts, 14 bytes kept, 1 failed."
    alices = run("list_backups", "Alice's place").splitlines()
    assert len(alices) == 4
    assert alices[1].split()[2:] == [
        "daily",
        "2026-12-01",
        "12:00",
        "-",
        "-",
        "failed:",
        "OSError:",
        "disk",
        "full",
    ]
    assert alices[2].split()[2:] == ["weekly", "2026-11-30", "12:00", "7", "bytes", "42", "done"]
    as_json = json.loads(run("list_backups", str(bob.account.pk), "--json"))
    assert [(b["account_name"], b["kind"], b["size"]) for b in as_json] == [
        ("Bob's place", "manual", 7)
    ]
    with pytest.raises(CommandError, match="No account is named 'nobody'"):
        run("list_backups", "nobody")


def test_list_backups_finds_a_purged_accounts_backups(db: None, backup_dir: Path) -> None:
    gone = uuid.uuid4()
    stored_backup(gone, NOW, Backup.Kind.DAILY, name="Long gone")
    assert "Long gone" in run("list_backups", str(gone))
    assert "Long gone" in run("list_backups", "long gone")


# --- the purge of an account -----------------------------------------------------------------


def test_purging_an_account_deletes_its_backups_past_retention(
    clean_schemas: None, backup_dir: Path, settings: SettingsWrapper
) -> None:
    settings.BACKUP_KEEP_DAILY, settings.BACKUP_KEEP_WEEKLY = 3, 2
    user = UserFactory(account_name="Leaving")
    other = UserFactory(account_name="Staying")
    now = datetime.now(UTC)
    made = daily_history(user.account.pk, days=30, end=now)
    others = daily_history(other.account.pk, days=30, end=now)
    # Within retention for a purged account: daily ones of the last 3 days, weekly ones of the
    # last 2 weeks.
    staying = {
        b.pk
        for b in made
        if b.created_at > now - timedelta(days=3)
        or (b.kind == Backup.Kind.WEEKLY and b.created_at > now - timedelta(weeks=2))
    }
    # Daily retention keeps the newest 3, weekly the newest 2: those still young enough stay.
    staying &= {b.pk for b in made[-3:]} | {
        b.pk for b in [b for b in made if b.kind == Backup.Kind.WEEKLY][-2:]
    }
    assert 3 <= len(staying) <= 5

    account_id = user.account.pk
    purge(user.account)

    left = set(Backup.objects.filter(account_id=account_id).values_list("pk", flat=True))
    assert left == staying
    files = {str(p.relative_to(backup_dir)) for p in backup_dir.rglob("*") if p.is_file()}
    assert {b.path for b in made if b.pk in staying} <= files
    assert not {b.path for b in made if b.pk not in staying} & files
    # Another account's backups are not touched.
    assert Backup.objects.filter(account_id=other.account.pk).count() == len(others)


def test_a_failed_purge_deletes_no_backup(clean_schemas: None, backup_dir: Path) -> None:
    user = UserFactory(account_name="Leaving")
    old = stored_backup(user.account.pk, NOW - timedelta(days=400), Backup.Kind.DAILY)
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        purge(user.account)
        raise RuntimeError("the purge failed after the signal")
    assert Backup.objects.filter(pk=old.pk).exists()
    assert (backup_dir / old.path).exists()


# --- admin ---------------------------------------------------------------------------------------


def test_admin_shows_the_registry_read_only(alice: User, backup_dir: Path) -> None:
    UserFactory(email="ops@example.org", is_staff=True, is_superuser=True)
    client = Client()
    assert client.login(username="ops@example.org", password=PASSWORD)
    backup = stored_backup(alice.account.pk, NOW, Backup.Kind.WEEKLY)
    page = client.get(reverse("admin:lifecycle_backup_changelist"))
    assert page.status_code == 200
    assert "Alice&#x27;s place" in page.content.decode()
    assert client.get(reverse("admin:lifecycle_backup_add")).status_code == 403
    detail = client.get(reverse("admin:lifecycle_backup_change", args=[backup.pk]))
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    assert (
        client.post(reverse("admin:lifecycle_backup_delete", args=[backup.pk]), {"post": "yes"})
    ).status_code == 403
    assert Backup.objects.filter(pk=backup.pk).exists()


# --- an S3-compatible storage, as configured (no object store is reachable from the tests) ---


def settings_in_child(**env: str) -> subprocess.CompletedProcess[str]:
    """Load the settings with these variables in a child process and describe the "backups"
    storage: the settings are read once per process."""
    script = (
        "import django; django.setup()\n"
        "from django.core.files.storage import storages\n"
        "s = storages['backups']\n"
        "print(type(s).__module__, type(s).__name__, s.bucket_name, s.location, s.endpoint_url,"
        " s.region_name, s.default_acl, s.file_overwrite)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_s3_compatible_target_is_configured_through_django_storages() -> None:
    result = settings_in_child(
        BACKUP_STORAGE_BACKEND="storages.backends.s3.S3Storage",
        BACKUP_S3_BUCKET="palaver-backups-test",
        BACKUP_S3_ENDPOINT_URL="https://objects.example.org",
        BACKUP_S3_REGION="eu-west-1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "storages.backends.s3",
        "S3Storage",
        "palaver-backups-test",
        "palaver-backups",
        "https://objects.example.org",
        "eu-west-1",
        "private",
        "False",
    ]
    missing = settings_in_child(BACKUP_STORAGE_BACKEND="storages.backends.s3.S3Storage")
    assert missing.returncode != 0
    assert "BACKUP_S3_BUCKET" in missing.stderr


# --- manual backups --------------------------------------------------------------------------


def test_backup_all_accounts_makes_manual_backups_and_says_which_failed(
    clean_schemas: None, backup_dir: Path
) -> None:
    from django.db import connection

    kept = UserFactory(account_name="Kept").account
    broken = UserFactory(account_name="Broken").account
    printed = run("backup_all_accounts", "Kept")
    assert "1 backup made, 0 failed." in printed
    [backup] = Backup.objects.all()
    assert (backup.account_id, backup.kind, backup.state) == (kept.pk, "manual", "done")
    assert (backup_dir / backup.path).stat().st_size == backup.size

    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA "{broken.schema_name}" CASCADE')
    with pytest.raises(CommandError, match=r"Broken \(.*\): ArchiveError: The schema .* not exist"):
        run("backup_all_accounts")
    states = sorted(Backup.objects.values_list("account_name", "state"))
    assert states == [("Broken", "failed"), ("Kept", "done"), ("Kept", "done")]
    # Manual backups are kept while the account exists.
    assert "0 backups past retention" in run("prune_backups")
