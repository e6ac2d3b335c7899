"""A real Celery worker, consuming from the real Redis, runs account tasks in the schema of the
code that enqueued them, and refuses account work without an account."""

from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker

from accounts.models import User
from channels_app.models import Server
from config.celery import app
from tenancy import NoTenantError, switch
from tenancy.context import connection
from tenancy.tasks import account_task
from tests.factories import UserFactory


@account_task(name="tests.server_hosts")
def server_hosts() -> dict[str, object]:
    return {
        "schema": connection.schema_name,
        "hosts": list(Server.objects.values_list("host", flat=True)),
    }


@pytest.fixture
def worker(clean_schemas: None) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


@pytest.fixture
def two_accounts(clean_schemas: None) -> tuple[User, User]:
    alice = UserFactory(email="alice@example.org")
    bob = UserFactory(email="bob@example.org")
    with switch(alice):
        Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
    with switch(bob):
        Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
    return alice, bob


def test_task_runs_in_the_enqueuers_schema(two_accounts: tuple[User, User], worker: None) -> None:
    alice, bob = two_accounts
    with switch(alice):
        for_alice = server_hosts.delay()
    with switch(bob):
        for_bob = server_hosts.delay()
    assert for_alice.get(timeout=20) == {
        "schema": alice.account.schema_name,
        "hosts": ["irc.libera.chat"],
    }
    assert for_bob.get(timeout=20) == {
        "schema": bob.account.schema_name,
        "hosts": ["irc.efnet.org"],
    }


def test_account_task_cannot_be_enqueued_without_an_account(db: None) -> None:
    assert connection.schema_name == "public"
    with pytest.raises(NoTenantError, match=r"tests\.server_hosts"):
        server_hosts.delay()


def test_worker_refuses_account_task_sent_for_public(
    two_accounts: tuple[User, User], worker: None
) -> None:
    result = server_hosts.apply_async(headers={"_schema_name": "public"})
    with pytest.raises(NoTenantError):
        result.get(timeout=20)
