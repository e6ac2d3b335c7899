"""Delete an account: by default schedule it (the grace period, then the purge), or --now."""

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.management.commands._common import find_account, plural
from tenancy.services import AccountDeletionError, purge_account, request_account_deletion


class Command(BaseCommand):
    help = (
        "Delete an account. By default as the account page does: its IRC connections, sessions "
        "and scheduled tasks stop now and the purge follows after ACCOUNT_DELETION_GRACE_DAYS "
        "(cancel_account_deletion undoes it until then). With --now, purge at once for good: "
        "its schema (every server, message, agent, document...), users, sessions, public rows, "
        "Redis keys and queued tasks."
    )
    # Tests hand the command a stream that poses as a terminal.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", metavar="NAME_OR_ID", help="Name, id or schema name.")
        parser.add_argument(
            "--now",
            action="store_true",
            help="Purge at once, without the grace period. No undo.",
        )
        parser.add_argument(
            "--yes",
            action="store_true",
            help="Do not ask for confirmation (required when stdin is not a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account = find_account(options["account"])
        users = account.users.count()
        if not options["now"] and account.pending_deletion:
            raise CommandError(
                f"Account {account.name!r} is already scheduled for deletion on "
                f"{account.purge_after:%Y-%m-%d %H:%M} UTC. Pass --now to purge it now, or "
                "run cancel_account_deletion."
            )
        if not options["yes"]:
            self._confirm(account.name, users, options["now"], options.get("stdin") or sys.stdin)

        if options["now"]:
            report = purge_account(account=account)
            dropped = (
                f"dropped schema {report.schema_name}"
                if report.had_schema
                else f"schema {report.schema_name} was already gone"
            )
            self.stdout.write(
                f"Deleted account {report.name!r} ({report.account_id}): {dropped}, deleted "
                f"{plural(report.users, 'user')} and {plural(report.public_rows, 'public row')} "
                f"in all, {plural(report.redis_keys, 'Redis key')} and "
                f"{plural(report.queued_tasks, 'queued task')}.",
                self.style.SUCCESS,
            )
            return
        try:
            account = request_account_deletion(account=account, actor=None)
        except AccountDeletionError as exc:  # scheduled meanwhile
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Account {account.name!r} ({account.pk}) is scheduled for deletion: its connections "
            f"are closed and its {plural(users, 'user')} signed out; it will be purged after "
            f"{account.purge_after:%Y-%m-%d %H:%M} UTC "
            f"({plural(settings.ACCOUNT_DELETION_GRACE_DAYS, 'day')}). "
            "`manage.py cancel_account_deletion` undoes it until then.",
            self.style.SUCCESS,
        )

    def _confirm(self, name: str, users: int, now: bool, stdin: Any) -> None:
        # Scripts must say --yes: a pipe that happens to contain the name is not a person.
        if not stdin.isatty():
            raise CommandError(
                "Refusing to delete without confirmation: stdin is not a terminal. "
                "Pass --yes to delete non-interactively."
            )
        when = (
            "now, for good"
            if now
            else f"after {plural(settings.ACCOUNT_DELETION_GRACE_DAYS, 'day')}"
        )
        self.stdout.write(
            f"This deletes account {name!r}, its {users} user(s) and all of its data {when}. "
            f"Type the account name to confirm: ",
            ending="",
        )
        self.stdout.flush()
        answer = stdin.readline().strip()
        if answer != name:
            raise CommandError("The name did not match; nothing was deleted.")
