"""Pages at speed (issue 11, item 12): the web's pooled database connections never carry one
account's search_path into another request and stay within the per-schema memory bound; the
main pages keep the number of queries they make (figures in docs/benchmarks.md, "Issue 11:
pages")."""

import http.client
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import User
from channels_app.models import Channel, Message, Notification, Server
from config.database import connection_params
from tenancy import db_memory, switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.test_chat_e2e import AsgiServer, serving, uvicorn_env

# --- pooled connections under uvicorn ---------------------------------------------------------


def _users_with_servers(count: int) -> list[tuple[User, str]]:
    """`count` users in their own accounts, each with a server named after the account."""
    out = []
    for _ in range(count):
        user = cast(User, UserFactory())
        name = f"net-{uuid.uuid4().hex[:10]}"
        with switch(user):
            Server.objects.create(name=name, host="irc.example.org", nick="me")
        out.append((user, name))
    cast(Any, connection).set_schema_to_public()
    return out


def _get(server: AsgiServer, path: str, user: User) -> str:
    cookie_name = settings.SESSION_COOKIE_NAME
    session = signed_in_client(user).cookies[cookie_name].value
    parts = urlsplit(server.url)
    assert parts.hostname and parts.port
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": f"{cookie_name}={session}"})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, f"{path}: {response.status}"
        return body
    finally:
        conn.close()


def _web_backends(application_name: str) -> set[int]:
    """Backend pids the web has open (its connections carry `application_name`)."""
    params = connection_params(connection.settings_dict, dbname="postgres")
    with psycopg.connect(**params, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return {int(row[0]) for row in rows}


@pytest.fixture
def pooled_web(clean_schemas: None, tmp_path: Path) -> Iterator[Any]:
    """Start the web (uvicorn, DATABASE_POOL on, one pooled connection) with extra settings."""
    started: list[Any] = []

    def start(**extra: str) -> tuple[AsgiServer, str]:
        redis_url = settings.CACHES["default"]["LOCATION"]
        application_name = f"palaver-pool-{uuid.uuid4().hex[:8]}"
        env = uvicorn_env(redis_url) | {
            "DATABASE_POOL": "true",
            "DATABASE_POOL_MAX_SIZE": "1",
            "PGAPPNAME": application_name,
            **extra,
        }
        context = serving(env, tmp_path)
        server = context.__enter__()
        started.append(context)
        return server, application_name

    yield start
    for context in started:
        context.__exit__(None, None, None)


def test_one_pooled_connection_serves_accounts_in_turn_without_leaking(pooled_web: Any) -> None:
    """Alice's and Bob's requests alternate on the web's single pooled connection: each sees
    their own account's data only, and the connection is reused, not opened per request."""
    server, application_name = pooled_web()
    users = _users_with_servers(2)
    for _ in range(4):
        for (user, own), (_, other) in zip(users, reversed(users), strict=True):
            body = _get(server, reverse("channels:server_list"), user)
            assert own in body
            assert other not in body
    assert len(_web_backends(application_name)) == 1


def test_pooled_connection_is_recycled_after_the_schema_limit(pooled_web: Any) -> None:
    """With DATABASE_RECYCLE_AFTER_SCHEMAS=2 the pooled connection is retired once it has
    served two accounts, and the next request gets a new backend with the right data."""
    server, application_name = pooled_web(DATABASE_RECYCLE_AFTER_SCHEMAS="2")
    users = _users_with_servers(3)
    seen: set[int] = set()
    for user, own in users + users:
        assert own in _get(server, reverse("channels:server_list"), user)
        seen |= _web_backends(application_name)
    # Six requests over three accounts, two schemas per backend: at least three backends.
    assert len(seen) >= 3


@pytest.mark.django_db
def test_reset_puts_a_returned_connection_back_on_public() -> None:
    """The pool's reset: a connection handed back with an account's search_path waits in the
    pool on public."""
    params = connection_params(connection.settings_dict)
    with psycopg.connect(**params, autocommit=True) as raw:
        raw.execute('SET search_path = "account_x", public')
        db_memory.reset_pooled_connection(raw)
        row = raw.execute("SHOW search_path").fetchone()
        assert row is not None
        assert row[0] == "public"


@pytest.mark.django_db
def test_reset_retires_a_connection_past_the_schema_limit(settings: Any) -> None:
    settings.DATABASE_RECYCLE_AFTER_SCHEMAS = 3
    params = connection_params(connection.settings_dict)
    with psycopg.connect(**params, autocommit=True) as raw:
        state = db_memory._State()
        db_memory._states[raw] = state
        state.schemas.update({"a", "b"})
        before = db_memory.recycles["schemas"]
        db_memory.reset_pooled_connection(raw)
        assert db_memory.recycles["schemas"] == before
        assert not raw.closed
        state.schemas.add("c")
        raw._expire_at = 1e18  # as psycopg_pool sets it
        db_memory.reset_pooled_connection(raw)
        assert db_memory.recycles["schemas"] == before + 1
        assert raw._expire_at == 0.0


# --- queries per page --------------------------------------------------------------------------


@pytest.fixture
def busy_alice(alice: User) -> tuple[User, dict[str, int]]:
    """Alice with a server, three channels, 100 lines and five highlights."""
    from datetime import timedelta

    from django.utils import timezone

    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.example.org", nick="alice")
        channels = [Channel.objects.create(server=server, name=n) for n in ("#a", "#b", "#c")]
        start = timezone.now() - timedelta(hours=1)
        messages = Message.objects.bulk_create(
            Message(
                channel=channels[0],
                sender=f"nick{n % 5}",
                text=f"line {n} https://example.org/{n}",
                server_time=start + timedelta(seconds=n),
            )
            for n in range(100)
        )
        Notification.objects.bulk_create(
            Notification(message=m, kind=Notification.Kind.HIGHLIGHT) for m in messages[-5:]
        )
    cast(Any, connection).set_schema_to_public()
    return alice, {"server": server.pk, "channel": channels[0].pk}


def _count_queries(client: Client, path: str) -> int:
    client.get(path)  # warm: a first request may fill caches
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200, f"{path}: {response.status_code}"
    return len(queries.captured_queries)
