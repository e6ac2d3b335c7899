"""Back up one account to an archive (lifecycle.backup): its schema, its public rows and its
uploaded files, in one consistent snapshot, while it keeps working."""

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from lifecycle.archive import ArchiveError
from lifecycle.backup import write_backup
from tenancy.management.commands._common import ProgressBar, find_account, plural


def default_path(name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"palaver-{slugify(name) or 'account'}-{stamp}.tar")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


class RowsProgress:
    """A progress(done, total) callable drawing migrate_accounts' bar, made on the first call
    (the total is known then)."""

    def __init__(self, command: BaseCommand, desc: str) -> None:
        self._command = command
        self._desc = desc
        self._bar: ProgressBar | None = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = ProgressBar(self._command.stderr, total=total, desc=self._desc, unit="row")
        if done > self._done:
            self._bar.update(done - self._done)
            self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


class Command(BaseCommand):
    help = (
        "Back up one account (its schema, its users and configuration rows, its uploaded "
        "files) to a tar archive, without stopping it. Restore it with restore_account."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", metavar="NAME_OR_ID", help="Name, id or schema name.")
        parser.add_argument(
            "--output",
            metavar="PATH",
            help="Where to write the archive (default: palaver-<name>-<UTC time>.tar here). "
            "A directory gets that name inside it.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account = find_account(options["account"])
        path = Path(options["output"]) if options["output"] else default_path(account.name)
        if path.is_dir():
            path = path / default_path(account.name)
        if path.exists():
            raise CommandError(f"{path} exists; not overwriting it. Choose another --output.")
        started = time.monotonic()
        progress = RowsProgress(self, "Backing up")
        try:
            manifest = write_backup(account=account, output=path, progress=progress)
        except ArchiveError as exc:
            raise CommandError(str(exc)) from None
        finally:
            progress.close()
        seconds = time.monotonic() - started
        self.stdout.write(
            f"Backed up account {account.name!r} ({account.pk}) to {path}: "
            f"{human_size(path.stat().st_size)}, {plural(manifest['rows'], 'row')}, "
            f"{plural(len(manifest['uploads']), 'uploaded file')}, in {seconds:.1f} s.",
            self.style.SUCCESS,
        )
        if manifest["uploads_missing"]:
            self.stderr.write(
                f"{plural(len(manifest['uploads_missing']), 'uploaded file')} listed in the "
                "account were gone from the storage (deleted while the backup ran?): "
                + ", ".join(manifest["uploads_missing"][:5])
            )
