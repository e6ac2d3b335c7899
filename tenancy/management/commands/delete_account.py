"""Delete an account: drop its schema and every public row that belongs to it. No undo."""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import schema_exists

from tenancy.management.commands._common import find_account
from tenancy.services import delete_account


class Command(BaseCommand):
    help = (
        "Delete an account for good: its schema (every server, message, agent, document...), "
        "its users, sessions and configuration rows."
    )
    # Tests hand the command a stream that poses as a terminal.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", metavar="NAME_OR_ID", help="Name, id or schema name.")
        parser.add_argument(
            "--yes",
            action="store_true",
            help="Do not ask for confirmation (required when stdin is not a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account = find_account(options["account"])
        users = account.users.count()
        had_schema = schema_exists(account.schema_name)
        if not options["yes"]:
            self._confirm(account.name, users, options.get("stdin") or sys.stdin)

        name, pk, schema = account.name, account.pk, account.schema_name
        delete_account(account=account)
        dropped = f"dropped schema {schema}" if had_schema else f"schema {schema} was already gone"
        self.stdout.write(
            f"Deleted account {name!r} ({pk}): {dropped}, deleted {users} "
            f"user{'s' if users != 1 else ''} and the account's other public rows.",
            self.style.SUCCESS,
        )

    def _confirm(self, name: str, users: int, stdin: Any) -> None:
        # Scripts must say --yes: a pipe that happens to contain the name is not a person.
        if not stdin.isatty():
            raise CommandError(
                "Refusing to delete without confirmation: stdin is not a terminal. "
                "Pass --yes to delete non-interactively."
            )
        self.stdout.write(
            f"This deletes account {name!r}, its {users} user(s) and all of its data. "
            f"Type the account name to confirm: ",
            ending="",
        )
        self.stdout.flush()
        answer = stdin.readline().strip()
        if answer != name:
            raise CommandError("The name did not match; nothing was deleted.")
