"""List the backups in the registry: every account's, or one account's (purged ones too)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from lifecycle.management.commands._backups import account_ids_named, size_text
from lifecycle.models import Backup
from tenancy.management.commands._common import plural

COLUMNS = ("ACCOUNT", "KIND", "WHEN (UTC)", "SIZE", "ROWS", "STATE")


class Command(BaseCommand):
    help = (
        "List backups, newest first: account, kind (daily, weekly, manual), when, size, rows "
        "and state (a failed one with its error)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "account",
            nargs="?",
            metavar="ACCOUNT",
            help="Only this account's: its name, id or schema (a purged one's id or name too).",
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON list.")

    def handle(self, *args: Any, **options: Any) -> None:
        backups = Backup.objects.all()
        if options["account"]:
            account_id, _ = account_ids_named(options["account"])
            backups = backups.filter(account_id=account_id)
        rows = list(backups.order_by("account_name", "account_id", "-created_at", "-id"))

        if options["json"]:
            self.stdout.write(json.dumps([self._json(b) for b in rows], indent=2))
            return
        if not rows:
            self.stdout.write("No backups.")
            return
        table = [COLUMNS] + [
            (
                b.account_name,
                b.kind,
                f"{b.created_at:%Y-%m-%d %H:%M}",
                size_text(b.size),
                "-" if b.rows is None else str(b.rows),
                b.state if b.state != Backup.State.FAILED else f"failed: {b.error}",
            )
            for b in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
        for number, row in enumerate(table):
            cells = [
                cell.rjust(width) if COLUMNS[i] in ("SIZE", "ROWS") else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=False))
            ]
            self.stdout.write(
                "  ".join([*cells, row[-1]]), self.style.MIGRATE_HEADING if number == 0 else None
            )
        total = sum(b.size or 0 for b in rows if b.state == Backup.State.DONE)
        failed = sum(b.state == Backup.State.FAILED for b in rows)
        accounts = len({b.account_id for b in rows})
        self.stdout.write(
            f"{plural(len(rows), 'backup')} of {plural(accounts, 'account')}, "
            f"{size_text(total)} kept, {failed} failed."
        )

    @staticmethod
    def _json(backup: Backup) -> dict[str, Any]:
        return {
            "id": backup.pk,
            "account_id": str(backup.account_id),
            "account_name": backup.account_name,
            "kind": backup.kind,
            "state": backup.state,
            "error": backup.error,
            "created_at": backup.created_at.isoformat(),
            "finished_at": backup.finished_at.isoformat() if backup.finished_at else None,
            "storage": backup.storage,
            "path": backup.path,
            "size": backup.size,
            "rows": backup.rows,
            "checksum": backup.checksum,
            "format_version": backup.format_version,
            "migrations": backup.migrations,
        }
