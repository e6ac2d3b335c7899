"""`manage.py demo_user`: a person to sign in as on a development machine (`make run` calls it)."""

import os
import secrets
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import AccountNameTakenError, sign_up

DEMO_EMAIL = "demo@palaver.local"
DEMO_ACCOUNT_NAME = "Demo"


class Command(BaseCommand):
    help = (
        f"Ensure the demo user {DEMO_EMAIL} (account {DEMO_ACCOUNT_NAME!r}) exists, give it a "
        "fresh random password and print how to sign in."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        # A fresh password every run: nothing sign-in-able is ever written down in the repo.
        password = secrets.token_urlsafe(12)
        user = User.objects.filter(email=DEMO_EMAIL).first()
        if user is None:
            try:
                user = sign_up(account_name=DEMO_ACCOUNT_NAME, email=DEMO_EMAIL, password=password)
            except AccountNameTakenError:
                raise CommandError(
                    f"an account named {DEMO_ACCOUNT_NAME!r} exists without {DEMO_EMAIL}; "
                    "delete or rename it (manage.py delete_account) and run this again"
                ) from None
            self.stdout.write(f"Created the demo account {DEMO_ACCOUNT_NAME!r}.")
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        port = os.environ.get("PORT") or "8000"
        self.stdout.write(
            self.style.SUCCESS(f"Demo sign-in: {DEMO_EMAIL} / {password}")
            + f"  at http://127.0.0.1:{port}/"
        )
