"""What the backup commands share. The leading underscore keeps Django from listing this module
as a command."""

import contextlib
import uuid

from django.core.management.base import CommandError
from django.template.defaultfilters import filesizeformat

from lifecycle.models import Backup
from tenancy.management.commands._common import find_account


def account_ids_named(text: str) -> tuple[uuid.UUID, str]:
    """The account an operator named: an existing one by its name, id or schema, or one the
    registry still has backups of (purged since) by its id or the name it had then."""
    try:
        account = find_account(text)
    except CommandError as not_found:
        recorded = Backup.objects.filter(account_name__iexact=text.strip())
        with contextlib.suppress(ValueError):
            recorded = recorded | Backup.objects.filter(account_id=uuid.UUID(text.strip()))
        found = list(recorded.order_by().values_list("account_id", "account_name").distinct()[:2])
        if not found:
            raise not_found from None
        if len({pk for pk, _ in found}) > 1:
            raise CommandError(
                f"{text!r} names backups of more than one account; pass the id instead."
            ) from None
        return found[0][0], found[0][1]
    return account.pk, account.name


def size_text(size: int | None) -> str:
    return "-" if size is None else str(filesizeformat(size)).replace("\xa0", " ")


def describe(backup: Backup) -> str:
    """One line naming a backup, for what prune prints."""
    return (
        f"{backup.kind} backup of {backup.account_name!r} ({backup.account_id}) made "
        f"{backup.created_at:%Y-%m-%d %H:%M} UTC, {backup.state}, "
        f"{size_text(backup.size)}: {backup.path or '(no file)'}"
    )
