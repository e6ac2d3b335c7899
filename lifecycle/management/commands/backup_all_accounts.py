"""Make a manual backup of every account (or of the ones named) into the backups storage."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import get_public_schema_name

from accounts.models import Account
from lifecycle import registry
from lifecycle.management.commands._backups import describe
from lifecycle.models import Backup
from tenancy.management.commands._common import ProgressBar, find_account, plural


class Command(BaseCommand):
    help = (
        "Back up every account (or the ones named) now, into the backups storage, recorded in "
        "the registry as manual backups (kept while the account exists; see list_backups). "
        "Before an upgrade, say."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "accounts", nargs="*", metavar="ACCOUNT", help="Name, id or schema; all if none."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["accounts"]:
            accounts = [find_account(text) for text in options["accounts"]]
        else:
            accounts = list(
                Account.objects.exclude(schema_name=get_public_schema_name()).order_by("name")
            )
        made: list[Backup] = []
        with ProgressBar(
            self.stderr, total=len(accounts), desc="Backing up", unit="account"
        ) as bar:
            for account in accounts:
                started = registry.start_backup(account=account, kind=Backup.Kind.MANUAL)
                made.append(registry.run_backup(backup_id=started.pk))
                bar.update()
        failed = [b for b in made if b.state != Backup.State.DONE]
        for backup in made:
            if backup.state == Backup.State.DONE:
                self.stdout.write(f"made {describe(backup)}, {backup.rows} rows")
        self.stdout.write(
            f"{plural(len(made) - len(failed), 'backup')} made, {len(failed)} failed."
        )
        if failed:
            raise CommandError(
                "These backups failed (recorded as failed in the registry):\n"
                + "\n".join(f"{b.account_name} ({b.account_id}): {b.error}" for b in failed)
            )
