"""List accounts with their users and the migration state of their schemas."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Count
from django_tenants.utils import get_public_schema_name

from tenancy.context import tenant_model, user_model
from tenancy.management.commands._common import plural
from tenancy.migration_state import schema_states

COLUMNS = ("NAME", "ID", "SCHEMA", "USERS", "CREATED", "STATE")
# A schema that lacks everything would otherwise print a couple of dozen migration names.
STATE_NAMES_SHOWN = 3


class Command(BaseCommand):
    help = "List accounts: name, id, schema, users, creation date and migration state."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--lagging",
            action="store_true",
            help="Only accounts whose schema is behind, missing or unreadable.",
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON list.")

    def handle(self, *args: Any, **options: Any) -> None:
        accounts = list(
            tenant_model().objects.exclude(schema_name=get_public_schema_name()).order_by("name")
        )
        users: dict[Any, int] = dict(
            user_model()
            .objects.values("account")
            .annotate(n=Count("pk"))
            .values_list("account", "n")
        )
        states = schema_states(account.schema_name for account in accounts)
        if options["lagging"]:
            accounts = [a for a in accounts if not states[a.schema_name].up_to_date]

        if options["json"]:
            rows = [
                {
                    "name": account.name,
                    "id": str(account.pk),
                    "schema": account.schema_name,
                    "users": users.get(account.pk, 0),
                    "created_at": account.created_at.isoformat(),
                    "state": states[account.schema_name].describe(),
                    "schema_exists": states[account.schema_name].exists,
                    "missing_migrations": [
                        f"{app}.{name}" for app, name in states[account.schema_name].missing
                    ],
                }
                for account in accounts
            ]
            self.stdout.write(json.dumps(rows, indent=2))
            return

        if not accounts:
            self.stdout.write(
                "Every account schema is up to date." if options["lagging"] else "No accounts."
            )
            return
        table = [COLUMNS] + [
            (
                account.name,
                str(account.pk),
                account.schema_name,
                str(users.get(account.pk, 0)),
                account.created_at.date().isoformat(),
                states[account.schema_name].describe(limit=STATE_NAMES_SHOWN),
            )
            for account in accounts
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
        for number, row in enumerate(table):
            cells = [
                cell.rjust(width) if COLUMNS[i] == "USERS" else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=False))
            ]
            line = "  ".join([*cells, row[-1]])
            self.stdout.write(line, self.style.MIGRATE_HEADING if number == 0 else None)
        if not options["lagging"]:
            behind = sum(not states[a.schema_name].up_to_date for a in accounts)
            self.stdout.write(f"{plural(len(accounts), 'account')}, {behind} not up to date.")
