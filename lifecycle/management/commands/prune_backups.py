"""Apply backup retention to every account in the registry, purged ones included."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from lifecycle import registry
from lifecycle.management.commands._backups import describe
from tenancy.management.commands._common import ProgressBar, plural


class Command(BaseCommand):
    help = (
        "Delete the backups past retention (BACKUP_KEEP_DAILY, BACKUP_KEEP_WEEKLY) of every "
        "account, files and registry rows, and print each one deleted. A purged account's "
        "backups age out."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print what would be deleted; delete nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run: bool = options["dry_run"]
        accounts = len(registry.registry_account_ids())
        with ProgressBar(
            self.stderr, total=accounts, desc="Pruning backups", unit="account"
        ) as bar:
            result = registry.prune_all(dry_run=dry_run, each=bar.update)
        verb = "would delete" if dry_run else "deleted"
        for backup in result.expired if dry_run else result.deleted:
            self.stdout.write(f"{verb} {describe(backup)}")
        self.stdout.write(
            f"{plural(len(result.expired), 'backup')} past retention in "
            f"{plural(accounts, 'account')}"
            + ("; nothing deleted (--dry-run)." if dry_run else f"; {len(result.deleted)} deleted.")
        )
        if result.errors:
            raise CommandError(
                f"{plural(len(result.errors), 'backup')} could not be deleted (kept in the "
                "registry, tried again next time):\n" + "\n".join(result.errors)
            )
