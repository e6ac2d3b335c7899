"""Cancel an account's scheduled deletion."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.management.commands._common import find_account
from tenancy.services import AccountDeletionError, cancel_account_deletion


class Command(BaseCommand):
    help = (
        "Cancel an account's scheduled deletion: its users can sign in again, the gateway "
        "connects its autoconnect servers and its scheduled tasks run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", metavar="NAME_OR_ID", help="Name, id or schema name.")

    def handle(self, *args: Any, **options: Any) -> None:
        account = find_account(options["account"])
        try:
            account = cancel_account_deletion(account=account, actor=None)
        except AccountDeletionError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"The deletion of account {account.name!r} ({account.pk}) is cancelled: its "
            "servers reconnect and its scheduled tasks run again.",
            self.style.SUCCESS,
        )
