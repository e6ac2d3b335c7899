from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Union

from django.db import connection as _connection
from django_tenants.utils import get_public_schema_name

# django-tenants' DatabaseWrapper (set_tenant, schema_name, ...) is untyped; the stubs only know
# Django's base wrapper.
connection: Any = _connection

if TYPE_CHECKING:
    from accounts.models import Account, User


class NoTenantError(RuntimeError):
    """Account data was touched while no account was active."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} works on data in an account's schema, but no account is active. "
            "Wrap the code in `with tenancy.switch(user_or_account):` (jobs, gateway, shell), "
            "or reach it through a signed-in request."
        )


def current_account() -> "Account | None":
    from accounts.models import Account

    tenant = connection.tenant
    return tenant if isinstance(tenant, Account) else None


def is_public() -> bool:
    return bool(connection.schema_name == get_public_schema_name())


@contextmanager
def switch(target: Union["User", "Account"]) -> Iterator["Account"]:
    """Run the body in the account's schema; restore whatever was active before. Nestable."""
    from accounts.models import Account, User

    if isinstance(target, User):
        account = target.account
    elif isinstance(target, Account):
        account = target
    else:
        raise TypeError(f"tenancy.switch takes a User or an Account, not {type(target).__name__}")
    previous = connection.tenant
    connection.set_tenant(account)
    try:
        yield account
    finally:
        connection.set_tenant(previous)


@contextmanager
def public_schema() -> Iterator[None]:
    """Run the body on the public schema (creating or dropping accounts happens there)."""
    previous = connection.tenant
    connection.set_schema_to_public()
    try:
        yield
    finally:
        connection.set_tenant(previous)
