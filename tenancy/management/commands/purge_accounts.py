"""Purge accounts pending deletion now: those named, or every one whose grace period is over."""

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.context import tenant_model
from tenancy.management.commands._common import ProgressBar, find_account, plural
from tenancy.services import AccountDeletionError, expired_account_ids, purge_account


class Command(BaseCommand):
    help = (
        "Purge accounts pending deletion, for good: the ones named (even before their grace "
        "period is over), or, with no name, every one whose grace period is over (what the "
        "hourly beat task does). Accounts not pending deletion are refused: "
        "`delete_account --now` purges one of those."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "accounts", nargs="*", metavar="NAME_OR_ID", help="Name, id or schema name."
        )
        parser.add_argument(
            "--yes",
            action="store_true",
            help="Do not ask for confirmation (required when stdin is not a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["accounts"]:
            accounts = [find_account(name) for name in options["accounts"]]
            waiting = [a.name for a in accounts if not a.pending_deletion]
            if waiting:
                raise CommandError(
                    f"Not pending deletion: {', '.join(repr(n) for n in waiting)}. Nothing was "
                    "purged. `delete_account NAME` schedules a deletion, `--now` purges at once."
                )
        else:
            ids = expired_account_ids()
            accounts = list(tenant_model().objects.filter(pk__in=ids).order_by("purge_after"))
            if not accounts:
                self.stdout.write("No account's grace period is over: nothing to purge.")
                return
        if not options["yes"]:
            self._confirm(accounts, options.get("stdin") or sys.stdin)
        started = time.monotonic()
        purged, failed = 0, []
        with ProgressBar(self.stderr, total=len(accounts), desc="Purging", unit="account") as bar:
            for account in accounts:
                try:
                    purge_account(account=account)
                    purged += 1
                except AccountDeletionError as exc:  # purged meanwhile (the beat task)
                    failed.append(str(exc))
                bar.update()
        for reason in failed:
            self.stderr.write(reason)
        self.stdout.write(
            f"Purged {plural(purged, 'account')} in {time.monotonic() - started:.1f} s.",
            self.style.SUCCESS,
        )
        if failed:
            raise CommandError(f"{plural(len(failed), 'account')} could not be purged.")

    def _confirm(self, accounts: list[Any], stdin: Any) -> None:
        if not stdin.isatty():
            raise CommandError(
                "Refusing to purge without confirmation: stdin is not a terminal. "
                "Pass --yes to purge non-interactively."
            )
        names = ", ".join(a.name for a in accounts)
        self.stdout.write(
            f"This purges {plural(len(accounts), 'account')} for good ({names}). "
            "Type 'purge' to confirm: ",
            ending="",
        )
        self.stdout.flush()
        if stdin.readline().strip() != "purge":
            raise CommandError("Not confirmed; nothing was purged.")
