"""Apply backup retention to every account in the registry, purged ones included."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.models import Account
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
        now = timezone.now()
        account_ids = registry.registry_account_ids()
        existing = set(Account.objects.filter(pk__in=account_ids).values_list("pk", flat=True))
        expired = deleted = 0
        errors: list[str] = []
        verb = "would delete" if dry_run else "deleted"
        lines: list[str] = []
        with ProgressBar(
            self.stderr, total=len(account_ids), desc="Pruning backups", unit="account"
        ) as bar:
            for account_id in account_ids:
                expired_here = registry.expired_backups(
                    account_id=account_id, now=now, account_exists=account_id in existing
                )
                result = (
                    registry.Pruned(expired=expired_here)
                    if dry_run
                    else registry.delete_backups(expired_here)
                )
                expired += len(result.expired)
                deleted += len(result.deleted)
                errors += result.errors
                shown = result.expired if dry_run else result.deleted
                lines += [f"{verb} {describe(backup)}" for backup in shown]
                bar.update()
        for line in lines:
            self.stdout.write(line)
        summary = (
            f"{plural(expired, 'backup')} past retention in {plural(len(account_ids), 'account')}"
            + ("; nothing deleted (--dry-run)." if dry_run else f"; {deleted} deleted.")
        )
        self.stdout.write(summary)
        if errors:
            raise CommandError(
                f"{plural(len(errors), 'backup')} could not be deleted (kept in the registry, "
                "tried again next time):\n" + "\n".join(errors)
            )
