"""Restore an account from an archive made by backup_account (lifecycle.restore): as the same
account (moved here, or back after a deletion), as a new account, or over an existing one."""

import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from lifecycle.archive import ArchiveError, read_manifest
from lifecycle.management.commands.backup_account import RowsProgress, human_size
from lifecycle.restore import restore_backup
from tenancy.management.commands._common import find_account, plural


class Command(BaseCommand):
    help = (
        "Restore an account from a backup_account archive: as the account it was made from "
        "(which must not exist here), over an existing account (--replace, after "
        "confirmation), or as a new account (--as-new NAME)."
    )
    # Tests hand the command a stream that poses as a terminal.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("archive", metavar="ARCHIVE", help="The archive's path.")
        how = parser.add_mutually_exclusive_group()
        how.add_argument(
            "--replace",
            metavar="NAME_OR_ID",
            help="Replace this account's data (schema, users, configuration, files) with the "
            "archive's. Its sessions end.",
        )
        how.add_argument(
            "--as-new",
            metavar="NAME",
            help="Restore as a new account of this name, with new ids, next to the others.",
        )
        parser.add_argument(
            "--without-users",
            action="store_true",
            help="Leave the archive's users out (needed with --as-new while their emails "
            "belong to another account here).",
        )
        parser.add_argument(
            "--yes",
            action="store_true",
            help="Do not ask before --replace (required when stdin is not a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["archive"])
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            manifest = read_manifest(path)
        except ArchiveError as exc:
            raise CommandError(str(exc)) from None
        source = manifest["account"]
        self.stdout.write(
            f"Archive of account {source['name']!r} ({source['id']}), made "
            f"{manifest['created_at']}: {plural(manifest['rows'], 'row')}, "
            f"{plural(len(manifest['uploads']), 'uploaded file')}, "
            f"{human_size(path.stat().st_size)}."
        )
        account = None
        if options["replace"]:
            account = find_account(options["replace"])
            if not options["yes"]:
                self._confirm(account.name, options.get("stdin") or sys.stdin)
        started = time.monotonic()
        progress = RowsProgress(self, "Restoring")
        try:
            restored = restore_backup(
                source=path,
                account=account,
                replace=account is not None,
                new_name=options["as_new"],
                without_users=options["without_users"],
                progress=progress,
            )
        except ArchiveError as exc:
            raise CommandError(str(exc)) from None
        finally:
            progress.close()
        how = (
            "over the existing account"
            if account is not None
            else ("as a new account" if options["as_new"] else "as the same account")
        )
        self.stdout.write(
            f"Restored account {restored.name!r} ({restored.pk}) {how} from {path}: "
            f"{plural(manifest['rows'], 'row')} in {time.monotonic() - started:.1f} s.",
            self.style.SUCCESS,
        )

    def _confirm(self, name: str, stdin: Any) -> None:
        if not stdin.isatty():
            raise CommandError(
                "Refusing to replace without confirmation: stdin is not a terminal. "
                "Pass --yes to replace non-interactively."
            )
        self.stdout.write(
            f"This replaces every piece of data of account {name!r} (its history, servers, "
            "agents, documents, users, keys and files) with the archive's, and signs its people "
            "out. Type the account name to confirm: ",
            ending="",
        )
        self.stdout.flush()
        if stdin.readline().strip() != name:
            raise CommandError("The name did not match; nothing was restored.")
