from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.dispatch import Signal

from tenancy import provisioning
from tenancy.context import public_schema, tenant_model

if TYPE_CHECKING:  # see tenancy/context.py: tenancy never imports accounts at run time
    from accounts.models import Account

# Sent with `account=` inside delete_account's transaction, while the schema still exists: what
# an account keeps outside its schema and public rows (uploaded files in a storage) is found
# then, and removed once the deletion commits.
account_deleting = Signal()


@transaction.atomic
def provision_account(*, name: str, settings: dict[str, Any] | None = None) -> "Account":
    """The one way an account comes to be: its row and its schema, together or not at all."""
    with public_schema():
        account = tenant_model()(name=name.strip(), settings=settings or {})
        account.full_clean(exclude=["schema_name"])
        account.save()
        provisioning.create_schema(account)
    return account


@transaction.atomic
def delete_account(*, account: "Account") -> None:
    """Drop the account's schema and every public row that belongs to it."""
    account_deleting.send(sender=type(account), account=account)
    with public_schema():
        provisioning.drop_schema(account)
        account.delete()
