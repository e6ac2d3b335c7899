from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Union, cast

from django.contrib.auth import get_user_model
from django.db import connection as _connection
from django_tenants.utils import get_public_schema_name, get_tenant_model

# django-tenants' DatabaseWrapper (set_tenant, schema_name, ...) is untyped; the stubs only know
# Django's base wrapper.
connection: Any = _connection

# tenancy sits below accounts: accounts (sign-up, the admin, its views) provisions and switches
# schemas through tenancy, so tenancy never imports accounts when it runs. It reaches the tenant
# and user models through the settings (TENANT_MODEL, AUTH_USER_MODEL), as django-tenants and
# django.contrib.auth do, and names them only for the type checker: an import under
# TYPE_CHECKING never executes, so it cannot close a circle at import time.
# tests/test_architecture.py fails if a runtime import of accounts comes back.
if TYPE_CHECKING:
    from accounts.models import Account, User


def tenant_model() -> "type[Account]":
    return cast("type[Account]", get_tenant_model())


def user_model() -> "type[User]":
    return cast("type[User]", get_user_model())


class NoTenantError(RuntimeError):
    """Account data was touched while no account was active."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} works on data in an account's schema, but no account is active. "
            "Wrap the code in `with tenancy.switch(user_or_account):` (jobs, gateway, shell), "
            "or reach it through a signed-in request."
        )


def current_account() -> "Account | None":
    tenant = connection.tenant
    return tenant if isinstance(tenant, tenant_model()) else None


def is_public() -> bool:
    return bool(connection.schema_name == get_public_schema_name())


@contextmanager
def switch(target: Union["User", "Account"]) -> Iterator["Account"]:
    """Run the body in the account's schema; restore whatever was active before. Nestable."""
    if isinstance(target, user_model()):
        account = target.account
    elif isinstance(target, tenant_model()):
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
