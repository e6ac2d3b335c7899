"""Create an account (row and schema), optionally with its first user, as sign-up does."""

import sys
from typing import Any

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email
from django.db import IntegrityError

from accounts.models import Account, User, normalize_email
from accounts.services import AccountNameTakenError, EmailTakenError, sign_up
from tenancy.services import provision_account

NAME_MAX_LENGTH = Account._meta.get_field("name").max_length or 100


def _messages(error: ValidationError) -> str:
    return "; ".join(error.messages)


class Command(BaseCommand):
    help = (
        "Create an account and its schema. With --admin-email, also its first user (an account "
        "admin), exactly as sign-up does."
    )
    # Tests hand the command a stream to read the password from, as createsuperuser's do.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="The account's name (unique).")
        parser.add_argument("--admin-email", help="Create the account's first user.")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the first user's password from the first line of stdin. Without it the "
            "user gets an unusable password and must reset it.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"].strip()
        if not name:
            raise CommandError("--name is empty: an account needs a name.")
        if len(name) > NAME_MAX_LENGTH:
            raise CommandError(f"--name is longer than {NAME_MAX_LENGTH} characters.")
        if Account.objects.filter(name__iexact=name).exists():
            raise CommandError(f"An account named {name!r} already exists (names ignore case).")

        email: str | None = options["admin_email"]
        if email is None:
            if options["password_stdin"]:
                raise CommandError("--password-stdin needs --admin-email: there is no user.")
            account = self._provision(name)
            self.stdout.write(
                f"Created account {account.name!r}: id {account.pk}, schema {account.schema_name}"
            )
            return

        email = normalize_email(email)
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"{email!r} is not a valid email address.") from None
        if User.objects.filter(email=email).exists():
            raise CommandError(f"A user with the email {email} already exists.")
        password = self._read_password(options) if options["password_stdin"] else None
        user = self._sign_up(name, email, password)
        account = user.account
        self.stdout.write(
            f"Created account {account.name!r}: id {account.pk}, schema {account.schema_name}\n"
            f"Created user {user.email} (account admin)."
        )
        if password is None:
            self.stdout.write(
                "The user has no usable password: they cannot sign in until one is set "
                "(`manage.py changepassword` or a password reset).",
                self.style.WARNING,
            )

    def _read_password(self, options: dict[str, Any]) -> str:
        stdin = options.get("stdin") or sys.stdin
        password = stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("No password on stdin: the first line was empty.")
        try:
            password_validation.validate_password(password)
        except ValidationError as exc:
            raise CommandError(f"The password was refused: {_messages(exc)}") from None
        return password

    def _provision(self, name: str) -> Account:
        try:
            return provision_account(name=name)
        except ValidationError as exc:
            raise CommandError(f"The account was not created: {_messages(exc)}") from None
        except IntegrityError:
            # Someone else took the name between the check above and the insert.
            raise CommandError(f"An account named {name!r} already exists.") from None

    def _sign_up(self, name: str, email: str, password: str | None) -> User:
        # The checks in handle() give the common errors clear words; these catch the races and
        # anything the model itself refuses. sign_up is atomic, so an error leaves nothing.
        try:
            return sign_up(account_name=name, email=email, password=password)
        except EmailTakenError:
            raise CommandError(f"A user with the email {email} already exists.") from None
        except AccountNameTakenError:
            raise CommandError(f"An account named {name!r} already exists.") from None
        except ValidationError as exc:
            raise CommandError(f"The account was not created: {_messages(exc)}") from None
