"""Writes of exports: starting one (one at a time per account), building it (in a worker, with
progress), and removing archives: expired ones (the periodic sweep, and when a new export is
started) and every one of an account being deleted."""

import contextlib
import logging
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from core.limits import lock_account
from exports import archive as content
from exports.models import Export
from exports.readme import readme
from exports.storage import archive_name, expiry_of, folder_of, storage
from llms.selectors import account_timezone
from tenancy import current_account, switch

if TYPE_CHECKING:
    from accounts.models import Account

logger = logging.getLogger(__name__)


class ExportRefused(Exception):
    """No export was started; the message says why, for the page."""


def _remove_files(names: list[str]) -> None:
    store = storage()
    for name in names:
        try:
            store.delete(name)
        except Exception:
            logger.exception("could not delete the export archive %s", name)


def _remove_files_on_commit(names: list[str]) -> None:
    if names:
        transaction.on_commit(lambda: _remove_files(names))


@transaction.atomic
def start_export(*, requested_by: str) -> Export:
    """Queue an export of the active account for a worker (exports.tasks.build_export). Refused
    while one is in progress; one that stopped moving for EXPORT_STALL_SECONDS (its worker
    died) is marked failed first, and expired archives are removed."""
    lock_account()  # two clicks at once: one export
    now = timezone.now()
    stalled = now - timedelta(seconds=settings.EXPORT_STALL_SECONDS)
    Export.objects.filter(status__in=Export.IN_PROGRESS, updated_at__lt=stalled).update(
        status=Export.Status.FAILED,
        error="The export stopped before it was finished. Start a new one.",
        finished_at=now,
        updated_at=now,
    )
    expire_due(now=now)
    if Export.objects.filter(status__in=Export.IN_PROGRESS).exists():
        raise ExportRefused("An export is already being made; this page follows it.")
    # Counted now too, so the page shows what is to come while the export waits for a worker.
    export = Export.objects.create(
        requested_by=requested_by[:254], lines_total=content.count_lines()
    )
    from exports.tasks import build_export

    export_id = str(export.pk)
    transaction.on_commit(lambda: build_export.delay(export_id))
    return export


def expire_due(*, now: datetime) -> int:
    """Mark the active account's archives past their expiry as expired and delete their files
    (once committed); returns how many."""
    due = list(
        Export.objects.filter(status=Export.Status.READY, expires_at__lte=now).values_list(
            "pk", "file_name"
        )
    )
    if due:
        Export.objects.filter(pk__in=[pk for pk, _ in due]).update(
            status=Export.Status.EXPIRED, file_name="", updated_at=now
        )
        _remove_files_on_commit([name for _, name in due if name])
    return len(due)


class _Progress:
    """Counts lines written and tells the row, at most every PROGRESS_SECONDS: the page reads
    the counts, the start time and the rate from there."""

    PROGRESS_SECONDS = 0.2

    def __init__(self, export_id: uuid.UUID) -> None:
        self.export_id = export_id
        self.done = 0
        self._told = 0.0

    def __call__(self, lines: int) -> None:
        self.done += lines
        if time.monotonic() - self._told >= self.PROGRESS_SECONDS:
            self.tell()

    def tell(self) -> None:
        self._told = time.monotonic()
        Export.objects.filter(pk=self.export_id, status=Export.Status.RUNNING).update(
            lines_done=self.done, updated_at=timezone.now()
        )


def write_archive(
    out: IO[bytes], *, account: "Account", zone_name: str, progress: content.Progress
) -> None:
    """The whole export of `account` (its schema active) as a zip into `out`."""
    batch = settings.EXPORT_BATCH_LINES
    archive = content.Archive(out)
    try:
        archive.text(
            "README.txt",
            readme(
                account=account.name,
                exported=timezone.now(),
                zone=zone_name,
                version=content.FORMAT_VERSION,
            ),
        )
        archive.json("account.json", content.account_settings(account, zone=zone_name))
        archive.json("servers.json", content.servers_and_channels())
        for channel in content.buffers():
            content.write_channel_history(
                archive,
                channel=channel,
                network=channel.server.name,
                zone=zone_name,
                batch=batch,
                progress=progress,
            )
        archive.json("agents.json", content.agents(account))
        archive.jsonl("tasks.jsonl", content.tasks())
        archive.jsonl("usage.jsonl", content.usage())
        archive.json("knowledge.json", content.knowledge(archive))
    finally:
        archive.close()


def build_export_now(*, export_id: uuid.UUID | str) -> Export | None:
    """Build the queued export `export_id` of the active account into the "exports" storage.
    Not one transaction: the progress it writes as it goes is what the page shows meanwhile.
    None when there was nothing to do (no such export, or not queued any more)."""
    account = current_account()
    if account is None:
        raise RuntimeError("build_export_now runs inside an account (tenancy.switch)")
    now = timezone.now()
    queued = Export.objects.filter(pk=export_id, status=Export.Status.QUEUED)
    if not queued.update(status=Export.Status.RUNNING, started_at=now, updated_at=now):
        return None
    export = Export.objects.get(pk=export_id)
    total = content.count_lines()
    Export.objects.filter(pk=export.pk).update(lines_total=total)
    progress = _Progress(export.pk)
    saved = ""
    try:
        with tempfile.TemporaryFile() as spool:
            write_archive(
                spool, account=account, zone_name=account_timezone(account=account),
                progress=progress,
            )  # fmt: skip
            size = spool.tell()
            finished = timezone.now()
            expires = finished + timedelta(seconds=settings.EXPORT_LINK_TTL)
            spool.seek(0)
            name = archive_name(account_id=account.pk, export_id=export.pk, expires_at=expires)
            saved = storage().save(name, File(spool, name=name))
        ready = Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING).update(
            status=Export.Status.READY,
            file_name=saved,
            size=size,
            lines_done=progress.done,
            lines_total=max(total, progress.done),
            finished_at=finished,
            expires_at=expires,
            updated_at=finished,
        )
        if not ready:  # given up on meanwhile (EXPORT_STALL_SECONDS): nobody will fetch it
            _remove_files([saved])
            return None
    except Exception:
        logger.exception("export %s of account %s failed", export.pk, account.pk)
        if saved:
            _remove_files([saved])
        with contextlib.suppress(Exception):  # the schema may be gone (account deleted)
            Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING).update(
                status=Export.Status.FAILED,
                error="Something went wrong while making the archive. Start a new export; "
                "if it fails again, tell the operators.",
                finished_at=timezone.now(),
                updated_at=timezone.now(),
            )
        raise
    export.refresh_from_db()
    return export


def delete_expired_files(*, now: datetime | None = None) -> int:
    """The periodic sweep (exports.tasks.delete_expired_exports): every archive in the storage
    whose expiry (in its name) has passed is deleted, found by listing the storage alone (no
    account's schema is entered). Returns how many were deleted."""
    moment = (now or timezone.now()).timestamp()
    store = storage()
    try:
        folders, _files = store.listdir("")
    except FileNotFoundError:  # nothing was ever exported
        return 0
    deleted = 0
    for folder in folders:
        _, files = store.listdir(folder)
        expired = [f"{folder}/{f}" for f in files if (expiry_of(f) or moment + 1) <= moment]
        _remove_files(expired)
        deleted += len(expired)
    return deleted


def delete_files_of_account(*, account: "Account", **_: object) -> None:
    """The account is being deleted (tenancy.services.account_deleting, its schema still
    there): every archive of it goes once the deletion commits, those its rows name and any
    other file in its folder (a worker's, written as the account went)."""
    with switch(account):
        names = [n for n in Export.objects.values_list("file_name", flat=True) if n]
    folder = folder_of(account.pk)

    def remove() -> None:
        store = storage()
        found = list(names)
        with contextlib.suppress(FileNotFoundError):
            found += [f"{folder}/{f}" for f in store.listdir(folder)[1]]
        _remove_files(sorted(set(found)))

    transaction.on_commit(remove)
