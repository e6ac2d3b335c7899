"""Writes on the backup registry: a backup made and recorded, retention applied, the backups of
a purged account let go. Reads that the commands share are at the bottom."""

import logging
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from lifecycle import storage
from lifecycle.models import Backup
from lifecycle.retention import Policy, past_retention

if TYPE_CHECKING:
    from accounts.models import Account

logger = logging.getLogger(__name__)

# An exception's message kept in the registry is cut to this.
_ERROR_CHARS = 2000


def _account_model() -> Any:
    from accounts.models import Account

    return Account


@transaction.atomic
def start_backup(*, account: "Account", kind: str, now: datetime | None = None) -> Backup:
    """The registry row of a backup about to be made (state running)."""
    return Backup.objects.create(
        account_id=account.pk,
        account_name=account.name,
        kind=kind,
        state=Backup.State.RUNNING,
        created_at=now or timezone.now(),
    )


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the registry keeps of an archive's manifest (lifecycle.backup): its format version,
    the last migration of each app in the schema, and the rows it holds (schema and public)."""
    last: dict[str, str] = {}
    for app, name in manifest.get("migrations") or []:
        last[app] = max(last.get(app, ""), name)
    rows = manifest.get("rows")
    if rows is None:
        rows = sum(int(table.get("rows") or 0) for table in manifest.get("tables") or [])
    return {"format_version": manifest.get("format_version"), "migrations": last, "rows": rows}


def run_backup(*, backup_id: int, write: Callable[..., dict[str, Any]] | None = None) -> Backup:
    """Make the archive of a running registry row's account, keep it in the storage and record
    it done; on any error record it failed with the error, and leave no file behind.

    `write` is lifecycle.backup.write_backup (the archive's one writer) unless given."""
    backup = Backup.objects.get(pk=backup_id)
    if backup.state != Backup.State.RUNNING:
        return backup  # a task delivered twice does the work once
    stored = ""
    try:
        account = _account_model().objects.filter(pk=backup.account_id).first()
        if account is None:
            raise LookupError("the account no longer exists")
        if write is None:
            from lifecycle.backup import write_backup

            write = write_backup
        with tempfile.TemporaryFile(prefix="palaver-backup-") as handle:
            manifest = write(account=account, output=handle)
            checksum, size = storage.checksum_and_size(handle)
            name = storage.name_for(
                account_id=backup.account_id, created_at=backup.created_at, kind=backup.kind
            )
            stored = storage.save(handle=handle, name=name, alias=backup.storage)
        summary = manifest_summary(manifest)
        Backup.objects.filter(pk=backup.pk).update(
            state=Backup.State.DONE,
            path=stored,
            size=size,
            checksum=checksum,
            format_version=summary["format_version"],
            migrations=summary["migrations"],
            rows=summary["rows"],
            finished_at=timezone.now(),
        )
    except Exception as exc:
        logger.exception("backup %s of account %s failed", backup.pk, backup.account_id)
        if stored:
            _delete_file_quietly(stored, backup.storage)
        Backup.objects.filter(pk=backup.pk).update(
            state=Backup.State.FAILED,
            error=(f"{type(exc).__name__}: {exc}")[:_ERROR_CHARS],
            finished_at=timezone.now(),
        )
    backup.refresh_from_db()
    return backup


def _delete_file_quietly(name: str, alias: str) -> None:
    try:
        storage.delete(name=name, alias=alias)
    except Exception:
        logger.exception("could not delete the backup file %s", name)


@dataclass
class Pruned:
    """What one retention pass found past retention, deleted, and could not delete."""

    expired: list[Backup] = field(default_factory=list)
    deleted: list[Backup] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def delete_backups(backups: Sequence[Backup]) -> Pruned:
    """Delete each backup's file, then its row: a file that could not be deleted keeps its row,
    so the next prune tries again (and the registry never forgets a file that is still kept)."""
    result = Pruned(expired=list(backups))
    for backup in backups:
        try:
            storage.delete(name=backup.path, alias=backup.storage)
        except Exception as exc:
            logger.exception("could not delete the backup file %s", backup.path)
            result.errors.append(f"{backup.path}: {type(exc).__name__}: {exc}")
            continue
        Backup.objects.filter(pk=backup.pk).delete()
        result.deleted.append(backup)
    return result


def expired_backups(
    *, account_id: uuid.UUID, now: datetime | None = None, account_exists: bool | None = None
) -> list[Backup]:
    """The backups of an account (existing or not) that retention no longer keeps."""
    if account_exists is None:
        account_exists = _account_model().objects.filter(pk=account_id).exists()
    return past_retention(
        Backup.objects.filter(account_id=account_id),
        account_exists=account_exists,
        now=now or timezone.now(),
        policy=Policy.from_settings(),
    )


def apply_retention(
    *, account_id: uuid.UUID, now: datetime | None = None, dry_run: bool = False
) -> Pruned:
    """Delete (or with dry_run, only list) an account's backups past retention."""
    expired = expired_backups(account_id=account_id, now=now)
    if dry_run:
        return Pruned(expired=expired)
    return delete_backups(expired)


def prune_all(
    *, now: datetime | None = None, dry_run: bool = False, each: Callable[[], None] | None = None
) -> Pruned:
    """Apply retention to every account the registry has backups of, purged ones included
    (one query says which still exist); `each` is called after each account (a progress bar)."""
    now = now or timezone.now()
    account_ids = registry_account_ids()
    existing = set(_account_model().objects.filter(pk__in=account_ids).values_list("pk", flat=True))
    total = Pruned()
    for account_id in account_ids:
        expired = expired_backups(
            account_id=account_id, now=now, account_exists=account_id in existing
        )
        result = Pruned(expired=expired) if dry_run else delete_backups(expired)
        total.expired += result.expired
        total.deleted += result.deleted
        total.errors += result.errors
        if each is not None:
            each()
    return total


def forget_backups_of_purged_account(*, account: "Account", **_: object) -> None:
    """tenancy.services.account_deleting: the account is being purged. Its backups past
    retention (as an account that no longer exists: see lifecycle.retention) go once the purge
    commits, files first; the others stay until they age out (prune_backups)."""
    expired = expired_backups(account_id=account.pk, account_exists=False)
    if expired:
        transaction.on_commit(lambda: _delete_after_purge(expired))


def _delete_after_purge(backups: list[Backup]) -> None:
    result = delete_backups(backups)
    for error in result.errors:
        logger.error("after a purge, a backup could not be deleted: %s", error)


# --- reads ---------------------------------------------------------------------------------------


def registry_account_ids() -> list[uuid.UUID]:
    """Every account the registry has backups of, existing or not."""
    return list(Backup.objects.order_by().values_list("account_id", flat=True).distinct())
