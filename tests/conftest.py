"""Shared fixtures. Tests run against the real PostgreSQL and Redis from the environment.

Most tests use the `db` fixture: each test runs in a transaction that is rolled back, and since
an account's schema is created by DDL inside that transaction (tenancy.provisioning), the schema
disappears with it. Tests that need committed data (a live server, a Celery worker, concurrent
connections) use `transactional_db`; the `clean_schemas` fixture then drops what they created.
"""

from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client

from accounts.models import SCHEMA_PREFIX, User
from tests.factories import PASSWORD, UserFactory


@pytest.fixture(autouse=True)
def _public_schema_and_clean_cache() -> Iterator[None]:
    connection.set_schema_to_public()
    cache.clear()
    yield
    connection.set_schema_to_public()


def drop_account_schemas() -> None:
    connection.set_schema_to_public()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [SCHEMA_PREFIX + "%"]
        )
        for (schema,) in cursor.fetchall():
            cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def clean_schemas(transactional_db: None) -> Iterator[None]:
    yield
    drop_account_schemas()


@pytest.fixture
def alice(db: None) -> User:
    """Persona A: uses Libera."""
    return UserFactory(email="alice@example.org", account_name="Alice's place")


@pytest.fixture
def bob(db: None) -> User:
    """Persona B: uses EFnet."""
    return UserFactory(email="bob@example.org", account_name="Bob's place")


def signed_in_client(user: User) -> Client:
    client = Client()
    assert client.login(username=user.email, password=PASSWORD)
    return client


@pytest.fixture
def alice_client(alice: User) -> Client:
    return signed_in_client(alice)


@pytest.fixture
def bob_client(bob: User) -> Client:
    return signed_in_client(bob)
