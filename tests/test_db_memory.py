"""Long-lived database connections are recycled once they have touched too many account schemas
or hold too much backend memory (tenancy/db_memory.py): the gateway writer between account
transactions, without losing or repeating a line; web requests and Celery tasks between units
of work. Against the real PostgreSQL: its catalog caches are what grows."""

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.fixups.django import DjangoFixup
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from channels_app.models import Channel, Message, Server
from config.celery import app
from gateway.storage import Store
from tenancy import db_memory, switch
from tenancy.tasks import account_task
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.test_gateway_storage import _close_stores, line, run_store  # noqa: F401 (fixture)

# pytest-django's settings fixture (its class is not exported).
SettingsWrapper = Any

ACCOUNTS = 9
SCHEMA_LIMIT = 3


@pytest.fixture
def no_recycling(settings: SettingsWrapper) -> SettingsWrapper:
    """Both limits off; each test turns on the one it is about. The counts start afresh: they
    belong to the thread's connection wrapper, which outlives a test."""
    db_memory._states.clear()
    settings.DATABASE_RECYCLE_AFTER_SCHEMAS = 0
    settings.DATABASE_RECYCLE_AFTER_BYTES = 0
    settings.DATABASE_MEMORY_CHECK_SECONDS = 0
    return settings


@pytest.fixture
def many_accounts(clean_schemas: None) -> list[tuple[User, int]]:
    users = []
    for n in range(ACCOUNTS):
        user: User = UserFactory(email=f"user{n}@example.org")
        with switch(user):
            server = Server.objects.create(name="Libera", host="irc.libera.chat", nick=f"u{n}")
        users.append((user, server.pk))
    return users


@pytest.fixture
def backends_opened() -> Iterator[dict[str, list[int]]]:
    """Backend pids of the connections opened, by thread name."""
    import threading

    opened: dict[str, list[int]] = {}

    def record(sender: Any, connection: Any, **kwargs: Any) -> None:
        pid = connection.connection.info.backend_pid
        opened.setdefault(threading.current_thread().name, []).append(pid)

    connection_created.connect(record)
    yield opened
    connection_created.disconnect(record)


def read_account_tables(user: User) -> None:
    """What the writer does in a schema, as far as the catalog caches go."""
    with switch(user):
        Message.objects.filter(channel__server__name="x").exists()
        Channel.objects.filter(name="#x").exists()


@pytest.mark.parametrize("after_schemas", [SCHEMA_LIMIT, 0])
def test_writer_recycles_between_account_transactions_and_loses_no_line(
    many_accounts: list[tuple[User, int]],
    no_recycling: SettingsWrapper,
    backends_opened: dict[str, list[int]],
    after_schemas: int,
) -> None:
    """Two waves of lines for every account, each wave one batch spanning all of them: the
    writer's connection is renewed every SCHEMA_LIMIT accounts, inside a batch and across
    batches, and every line is stored once, in order. With the limit off (0) the writer keeps
    one connection: the control that shows what the limit changes."""
    no_recycling.DATABASE_RECYCLE_AFTER_SCHEMAS = after_schemas
    store = Store(publish=False)
    for user, _server in many_accounts:
        store.add_account(user.account)
    for wave in range(2):
        for n in range(5):
            for user, server in many_accounts:
                store.put(line(user, server, f"wave {wave} line {n}", wave * 10 + n))
        target = (wave + 1) * 5 * ACCOUNTS
        run_store(store, lambda: store.stored >= target)  # noqa: B023 (called in the loop)
    assert store.stored == 2 * 5 * ACCOUNTS and store.dropped == 0
    for user, _server in many_accounts:
        with switch(user):
            texts = list(Message.objects.order_by("id").values_list("text", flat=True))
        assert texts == [f"wave {w} line {n}" for w in range(2) for n in range(5)]

    writer_backends = [
        pid for name, pids in backends_opened.items() if "gateway-db" in name for pid in pids
    ]
    if after_schemas:
        # Each backend serves SCHEMA_LIMIT accounts, then the next account opens a new one.
        assert len(writer_backends) == 2 * ACCOUNTS // SCHEMA_LIMIT
        assert len(set(writer_backends)) == len(writer_backends)
    else:
        # One connection per writer that had accounts, kept throughout.
        lanes = {store._lane(user.account.pk) for user, _server in many_accounts}
        assert len(writer_backends) == len(lanes)


def test_schema_limit_counts_switches_and_noted_schemas(
    no_recycling: SettingsWrapper, many_accounts: list[tuple[User, int]]
) -> None:
    no_recycling.DATABASE_RECYCLE_AFTER_SCHEMAS = SCHEMA_LIMIT
    connection.close()
    connection.ensure_connection()
    first = connection.connection
    for user, _server in many_accounts[: SCHEMA_LIMIT - 1]:
        read_account_tables(user)
    # Switching back to public, and to the same schema again, does not count.
    read_account_tables(many_accounts[0][0])
    assert db_memory.schemas_touched(connection) == SCHEMA_LIMIT - 1
    assert db_memory.maybe_recycle(connection) is None
    assert connection.connection is first

    # Schema-qualified SQL does not switch; the code running it says what it touched.
    db_memory.note_schemas(connection, [many_accounts[-1][0].account.schema_name])
    assert db_memory.maybe_recycle(connection) == "schemas"
    assert connection.connection is None
    read_account_tables(many_accounts[0][0])
    assert connection.connection is not first
    assert db_memory.schemas_touched(connection) == 1


def test_no_recycle_inside_a_transaction(
    no_recycling: SettingsWrapper, many_accounts: list[tuple[User, int]]
) -> None:
    from django.db import transaction

    no_recycling.DATABASE_RECYCLE_AFTER_SCHEMAS = 1
    with transaction.atomic():
        read_account_tables(many_accounts[0][0])
        assert db_memory.maybe_recycle(connection) is None
        assert connection.connection is not None
    assert db_memory.maybe_recycle(connection) == "schemas"


def test_memory_limit_recycles_a_backend_grown_by_schemas(
    no_recycling: SettingsWrapper, many_accounts: list[tuple[User, int]]
) -> None:
    """The limit is set 100 kB above what a fresh backend holds: reading the tables of a few
    schemas passes it (about 90 kB each), and the next check closes the connection."""
    connection.close()
    fresh = db_memory.backend_memory(connection)
    assert fresh is not None
    no_recycling.DATABASE_RECYCLE_AFTER_BYTES = fresh + 100_000
    assert db_memory.maybe_recycle(connection) is None
    for user, _server in many_accounts:
        read_account_tables(user)
    grown = db_memory.backend_memory(connection)
    assert grown is not None and grown >= fresh + 100_000
    assert db_memory.maybe_recycle(connection) == "memory"
    assert connection.connection is None
    assert db_memory.backend_memory(connection) < fresh + 100_000  # type: ignore[operator]


def test_memory_check_is_skipped_between_intervals(
    no_recycling: SettingsWrapper, clean_schemas: None
) -> None:
    """Below the interval, maybe_recycle asks the server nothing: it is cheap enough for the
    writer to call per account."""
    no_recycling.DATABASE_RECYCLE_AFTER_BYTES = 1  # any backend passes it
    no_recycling.DATABASE_MEMORY_CHECK_SECONDS = 60
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as first:
        assert db_memory.maybe_recycle(connection) == "memory"
    assert db_memory.MEMORY_QUERY in [q["sql"] for q in first.captured_queries]
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as between:
        started = time.perf_counter()
        for _ in range(10_000):
            assert db_memory.maybe_recycle(connection) is None
        per_call = (time.perf_counter() - started) / 10_000
    assert between.captured_queries == []
    assert connection.connection is not None
    # Microseconds, not the query's milliseconds: generous for a loaded machine.
    assert per_call < 100e-6


def test_server_that_cannot_report_memory_falls_back_to_schema_count(
    no_recycling: SettingsWrapper,
    many_accounts: list[tuple[User, int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without pg_read_all_stats the view is refused: the limit by memory gives up (once, with
    a warning that says what to grant) and the limit by schemas still holds."""
    no_recycling.DATABASE_RECYCLE_AFTER_BYTES = 1
    no_recycling.DATABASE_RECYCLE_AFTER_SCHEMAS = 2
    # A Celery worker started earlier in this process leaves the root logger at ERROR.
    caplog.set_level(logging.WARNING, logger="tenancy.db_memory")
    # Roles belong to the server: named after this test database, so that parallel runs differ.
    role = f"{connection.settings_dict['NAME']}_no_stats"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE ROLE {role}")
    try:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(f"SET ROLE {role}")
        assert db_memory.maybe_recycle(connection) is None
        assert "grant pg_read_all_stats" in caplog.text
        with CaptureQueriesContext(connection) as later:
            assert db_memory.maybe_recycle(connection) is None
        assert later.captured_queries == []
        db_memory.note_schemas(connection, ["a", "b"])
        assert db_memory.maybe_recycle(connection) == "schemas"
    finally:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP ROLE {role}")


def test_server_without_the_memory_view(
    no_recycling: SettingsWrapper, clean_schemas: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL 13 has no pg_backend_memory_contexts; it cannot run here, so its version is
    what is faked."""
    no_recycling.DATABASE_RECYCLE_AFTER_BYTES = 1
    connection.ensure_connection()
    wrapper = connections["default"]
    monkeypatch.setattr(wrapper, "pg_version", 130012)
    with CaptureQueriesContext(connection) as asked:
        assert db_memory.maybe_recycle(connection) is None
        assert db_memory.backend_memory(connection) is None
    assert asked.captured_queries == []


@pytest.mark.parametrize("after_schemas", [1, 0])
def test_web_connection_kept_between_requests_is_recycled(
    no_recycling: SettingsWrapper, clean_schemas: None, after_schemas: int
) -> None:
    """request_finished: a connection kept between requests (DATABASE_CONN_MAX_AGE > 0; the
    test client keeps it too) is closed after a request that ran in an account's schema. Off
    (0), it stays open: the control."""
    no_recycling.DATABASE_RECYCLE_AFTER_SCHEMAS = after_schemas
    user: User = UserFactory(email="alice@example.org")
    client = signed_in_client(user)
    connection.close()
    connection.ensure_connection()
    assert client.get("/servers/").status_code == 200
    assert (connection.connection is None) is bool(after_schemas)


@account_task(name="tests.db_memory.backend_pid")
def backend_pid() -> int:
    Server.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@pytest.mark.parametrize("after_schemas", [1, 0])
def test_worker_connection_is_recycled_after_a_task(
    no_recycling: SettingsWrapper,
    many_accounts: list[tuple[User, int]],
    monkeypatch: pytest.MonkeyPatch,
    after_schemas: int,
) -> None:
    """task_postrun, in a real worker whose connections live between tasks: each task runs in
    another account's schema, and with a limit of one schema each task gets a new backend.
    Off (0), they all share one: the control."""
    no_recycling.DATABASE_RECYCLE_AFTER_SCHEMAS = after_schemas
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 600)
    # Celery's Django fixup closes every connection after every task unless told to reuse them;
    # it reads the setting once, when the app's first worker starts (maybe in an earlier test).
    monkeypatch.setitem(app.conf, "CELERY_DB_REUSE_MAX", 1000)
    for fixup in app._fixups:
        if isinstance(fixup, DjangoFixup):
            monkeypatch.setattr(fixup.worker_fixup, "db_reuse_max", 1000)
    pids: list[int] = []
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            for user, _server in many_accounts[:3]:
                with switch(user):
                    pids.append(backend_pid.delay().get(timeout=20))
    finally:
        # The worker's thread is gone, its kept connection is not: the test database must be
        # free to drop.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
    assert len(set(pids)) == (3 if after_schemas else 1)


def test_writer_recycling_every_account_while_lines_arrive_loses_nothing(
    many_accounts: list[tuple[User, int]], no_recycling: SettingsWrapper
) -> None:
    """The harshest setting: a new backend for every account, lines arriving while the writer
    works; all stored once."""
    no_recycling.DATABASE_RECYCLE_AFTER_SCHEMAS = 1
    store = Store(publish=False)
    for user, _server in many_accounts:
        store.add_account(user.account)

    async def main() -> None:
        task = asyncio.create_task(store.run())
        for n in range(30):
            for user, server in many_accounts:
                store.put(line(user, server, f"line {n}", n))
            await asyncio.sleep(0.005)
        while store.stored < 30 * ACCOUNTS:
            await asyncio.sleep(0.02)
        await store.drain()
        task.cancel()

    asyncio.run(main())
    for user, _server in many_accounts:
        with switch(user):
            texts = list(Message.objects.order_by("id").values_list("text", flat=True))
        assert texts == [f"line {n}" for n in range(30)]
    assert db_memory.recycles["schemas"] > 0


def test_lost_connection_is_raised_not_taken_for_a_server_that_cannot_tell(
    no_recycling: SettingsWrapper, clean_schemas: None
) -> None:
    """A backend killed under the connection: the memory check raises (the gateway writer
    retries the batch on it) and keeps checking on the next connection; the request and task
    hook closes the broken connection instead of raising into its sender."""
    import psycopg
    from django.db import DatabaseError

    from config.database import connection_params

    no_recycling.DATABASE_RECYCLE_AFTER_BYTES = 1

    def kill_backend() -> None:
        connection.ensure_connection()
        pid = connection.connection.info.backend_pid
        admin = connection_params(connection.settings_dict, dbname="postgres")
        with psycopg.connect(**admin, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])

    kill_backend()
    with pytest.raises(DatabaseError):
        db_memory.maybe_recycle(connection)
    connection.close()
    assert db_memory.backend_memory(connection) is not None
    assert db_memory.maybe_recycle(connection) == "memory"

    kill_backend()
    db_memory.recycle_connections()
    assert connection.connection is None
