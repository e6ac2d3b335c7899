"""Shared fixtures. Tests run against the real PostgreSQL and Redis from the environment.

Most tests use the `db` fixture: each test runs in a transaction that is rolled back, and since
an account's schema is created by DDL inside that transaction (tenancy.provisioning), the schema
disappears with it. Tests that need committed data (a live server, a Celery worker, concurrent
connections) use `transactional_db`; the `clean_schemas` fixture then drops what they created.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client, override_settings

from accounts.models import SCHEMA_PREFIX, User
from llms.models import LLM
from llms.services import sync_tool_catalog
from tenancy.context import connection
from tests.factories import PASSWORD, UserFactory
from tests.llm_servers import LLMServer

pytest_plugins = ["tests.ircd", "tests.gateway_support", "tests.pgvector_support"]

# As llms/migrations/0002_seed_catalog.py seeds it.
LLM_CATALOG = [
    {
        "name": "OpenAI",
        "kind": "openai",
        "base_url": "https://api.openai.com/v1",
        "known_models": ["gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini"],
    },
    {
        "name": "Anthropic",
        "kind": "anthropic",
        "base_url": "https://api.anthropic.com",
        "known_models": ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"],
    },
]


@pytest.fixture(autouse=True)
def _public_schema_and_clean_cache() -> Iterator[None]:
    connection.set_schema_to_public()
    cache.clear()
    yield
    connection.set_schema_to_public()


@pytest.fixture(autouse=True)
def _catalogs(request: pytest.FixtureRequest) -> None:
    """The catalogs migrations and post_migrate fill, restored for every test that uses the
    database: a transactional test's flush empties them."""
    if not {"db", "transactional_db", "live_server"} & set(request.fixturenames):
        return
    request.getfixturevalue("db" if "db" in request.fixturenames else "transactional_db")
    sync_tool_catalog()
    for provider in LLM_CATALOG:
        LLM.objects.get_or_create(name=provider["name"], defaults=provider)


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


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    """A loopback LLM provider speaking the OpenAI and Anthropic wire formats
    (tests/llm_servers.py), with the runner's SDK clients made afresh around it (they are cached
    per process with the timeouts and retries they were built with)."""
    from agents.runner.providers import reset_clients

    reset_clients()
    with LLMServer() as server:
        yield server
    reset_clients()


def storages_with(alias: str, location: Path) -> dict[str, Any]:
    """settings.STORAGES with `alias` a FileSystemStorage in `location`, never served by URL."""
    return {
        **settings.STORAGES,
        alias: {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location), "base_url": None},
        },
    }


@pytest.fixture
def storage_dir(tmp_path: Path) -> Iterator[Path]:
    """The uploads storage in a directory of the test's own."""
    location = tmp_path / "uploads"
    with override_settings(STORAGES=storages_with("uploads", location)):
        yield location
