from typing import TYPE_CHECKING, Any

from django.db import transaction

from tenancy import provisioning
from tenancy.context import public_schema, tenant_model

if TYPE_CHECKING:  # see tenancy/context.py: tenancy never imports accounts at run time
    from accounts.models import Account


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
    with public_schema():
        provisioning.drop_schema(account)
        account.delete()
