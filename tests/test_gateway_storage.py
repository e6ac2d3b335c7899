"""The gateway's writer: batches land in the right account's schema, live events and the message
hook's tasks follow the commit, replays are dropped, and a database outage costs delay, not
lines."""

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from accounts.models import User
from channels_app import events, hooks
from channels_app.models import Channel, ChannelUser, Message, Notification, Server
from config.database import connection_params
from gateway.storage import MAX_BATCH, Line, Members, Record, Store, Topic
from tenancy import switch
from tenancy.context import connection as tenant_connection
from tests.factories import UserFactory

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def accounts(clean_schemas: None) -> tuple[User, User, int, int]:
    alice = UserFactory(email="alice@example.org")
    bob = UserFactory(email="bob@example.org")
    with switch(alice):
        a_server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice").pk
    with switch(bob):
        b_server = Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob").pk
    return alice, bob, a_server, b_server


def line(user: User, server_id: int, text: str, n: int = 0, **kw: object) -> Line:
    fields: dict[str, object] = {
        "account_id": user.account.pk, "server_id": server_id, "buffer": "#palaver",
        "buffer_kind": "channel", "kind": "message", "sender": "carol", "text": text,
        "server_time": T0 + timedelta(seconds=n),
    }  # fmt: skip
    fields.update(kw)
    return Line(**fields)  # type: ignore[arg-type]


def store_with_lines(
    accounts: tuple[User, User, int, int], count: int, *, publish: bool = False
) -> Store:
    """A Store holding `count` lines of alice and as many of bob, taken in turn."""
    alice, bob, a_server, b_server = accounts
    store = Store(publish=publish)
    store.add_account(alice.account)
    store.add_account(bob.account)
    for n in range(count):
        store.put(line(alice, a_server, f"alice line {n}", n))
        store.put(line(bob, b_server, f"bob line {n}", n))
    return store


def run_store(store: Store, until: Callable[[], bool], timeout: float = 20) -> None:
    async def main() -> None:
        task = asyncio.create_task(store.run())
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await store.drain()
        task.cancel()

    asyncio.run(main())


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every Store a test makes gives back its database connection at the end."""
    made: list[Store] = []
    original = Store.__init__

    def init(self: Store, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(Store, "__init__", init)
    yield
    for store in made:
        asyncio.run(store.close())


@pytest.fixture
def subscriber() -> Iterator[redis.client.PubSub]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    pubsub = client.pubsub()
    yield pubsub
    pubsub.close()


def received(pubsub: redis.client.PubSub, count: int, timeout: float = 5) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            got.append(json.loads(message["data"]))
    return got


def test_batch_goes_to_each_accounts_schema_then_events(
    accounts: tuple[User, User, int, int], subscriber: redis.client.PubSub
) -> None:
    alice, bob, _, _ = accounts
    subscriber.subscribe(events.events_channel(alice.account.pk))
    store = store_with_lines(accounts, 50, publish=True)
    run_store(store, lambda: store.stored >= 100)

    with switch(alice):
        stored = list(Message.objects.order_by("id").values_list("id", "text"))
        assert [text for _, text in stored] == [f"alice line {n}" for n in range(50)]
        assert Channel.objects.get().name == "#palaver"
    with switch(bob):
        assert Message.objects.count() == 50
        assert not Message.objects.filter(text__startswith="alice").exists()
    events_seen = received(subscriber, 50)
    assert [e["text"] for e in events_seen] == [f"alice line {n}" for n in range(50)]
    assert [e["id"] for e in events_seen] == [pk for pk, _ in stored]
    assert all(e["type"] == "message" for e in events_seen)


@pytest.fixture
def celery_worker(clean_schemas: None) -> Iterator[None]:
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


def test_message_listeners_run_in_a_celery_task_per_account_never_on_the_writer(
    accounts: tuple[User, User, int, int], celery_worker: None
) -> None:
    """After the commit the gateway enqueues one task per account of the batch with that
    account's new message ids; a worker calls the listeners in the account's schema."""
    alice, bob, _, _ = accounts
    called: list[tuple[uuid.UUID, list[int], str, str, bool]] = []

    def listener(account_id: uuid.UUID, message_ids: list[int]) -> None:
        called.append(
            (
                account_id,
                message_ids,
                threading.current_thread().name,
                tenant_connection.schema_name,
                connection.in_atomic_block,
            )
        )

    hooks.on_message_stored(listener)
    store = store_with_lines(accounts, 30)
    # Lines held back until the Store runs: all 60 go in one batch.
    try:
        run_store(store, lambda: store.stored >= 60)
        deadline = time.monotonic() + 20
        while len(called) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # no third call follows
    finally:
        hooks._listeners.remove(listener)

    with switch(alice):
        alice_ids = list(Message.objects.order_by("id").values_list("id", flat=True))
    with switch(bob):
        bob_ids = list(Message.objects.order_by("id").values_list("id", flat=True))
    assert len(alice_ids) == len(bob_ids) == 30
    by_account = {call[0]: call[1:] for call in called}
    assert len(called) == 2 and set(by_account) == {alice.account.pk, bob.account.pk}
    assert by_account[alice.account.pk][0] == alice_ids
    assert by_account[bob.account.pk][0] == bob_ids
    for account_id, (_, thread, schema, in_atomic) in by_account.items():
        assert not thread.startswith("gateway-db")  # the writer thread's name
        assert schema == (alice if account_id == alice.account.pk else bob).account.schema_name
        assert not in_atomic


def test_no_message_task_is_enqueued_while_nothing_listens(
    accounts: tuple[User, User, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels_app.tasks import message_stored

    enqueued: list[object] = []
    monkeypatch.setattr(message_stored, "apply_async", lambda *a, **k: enqueued.append(k))
    # The agents app listens from startup (agents.apps): this is a process where nothing does.
    monkeypatch.setattr(hooks, "_listeners", [])
    alice, _bob, a_server, _ = accounts
    store = Store(publish=False)
    store.add_account(alice.account)
    store.put(line(alice, a_server, "nobody listens"))
    run_store(store, lambda: store.stored >= 1)
    assert store.stored == 1 and enqueued == []


def test_only_batches_naming_an_enabled_agent_go_to_the_hook(
    accounts: tuple[User, User, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's filter (Gateway.hook_wanted): the hook's one listener, agents' triggers,
    acts only on lines that name an enabled agent; other batches enqueue nothing."""
    from agents.models import Agent
    from channels_app.tasks import message_stored
    from gateway.manager import Gateway, load_account_config
    from tests.helpers import make_provider

    enqueued: list[list[int]] = []
    monkeypatch.setattr(
        message_stored, "apply_async", lambda *a, **k: enqueued.append(k["args"][1])
    )
    alice, bob, a_server, b_server = accounts
    provider = make_provider(alice)
    with switch(alice):
        Agent.objects.create(name="Helper", nick="Helper", account_llm=provider, model="gpt-4o")
        Agent.objects.create(
            name="Off", nick="sleepy", account_llm=provider, model="gpt-4o", enabled=False
        )
    store = Store(publish=False)
    gateway = Gateway(store=store)
    for user in (alice, bob):
        store.add_account(user.account)
        config = load_account_config(user.account)
        if config.trigger_nicks:
            gateway._trigger_nicks[user.account.pk] = config.trigger_nicks
    store.put(line(alice, a_server, "nobody is named here"))
    store.put(line(bob, b_server, "helper: bob has no agents"))
    run_store(store, lambda: store.stored >= 2)
    store.put(line(alice, a_server, "sleepy: a disabled agent", 1))
    run_store(store, lambda: store.stored >= 3)
    assert enqueued == []
    store.put(line(alice, a_server, "and now HELPER, a question", 2))
    run_store(store, lambda: store.stored >= 4)
    with switch(alice):
        named = Message.objects.get(text__startswith="and now").pk
    assert enqueued == [[named]]


def test_replayed_msgid_is_stored_once(accounts: tuple[User, User, int, int]) -> None:
    alice, _bob, a_server, _ = accounts
    store = Store(publish=False)
    store.add_account(alice.account)
    store.put(line(alice, a_server, "hello", msgid="abc123"))
    run_store(store, lambda: store.stored >= 1)
    store.put(line(alice, a_server, "hello", msgid="abc123"))
    store.put(line(alice, a_server, "new", 1, msgid="def456"))
    store.put(line(alice, a_server, "new", 1, msgid="def456"))  # twice in one batch
    store.put(line(alice, a_server, "no msgid", 2))
    store.put(line(alice, a_server, "no msgid", 2))  # lines without a msgid are all kept
    run_store(store, lambda: store.backlog == 0)
    with switch(alice):
        assert sorted(Message.objects.values_list("msgid", flat=True)) == [
            "",
            "",
            "abc123",
            "def456",
        ]


def _msgid_index_scans(user: User) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT idx_scan FROM pg_stat_user_indexes"
            " WHERE schemaname = %s AND indexrelname = 'message_msgid'",
            [user.account.schema_name],
        )
        return int(cursor.fetchone()[0])


def test_only_lines_that_can_be_replays_are_looked_up(
    accounts: tuple[User, User, int, int],
) -> None:
    """A replay carries the server-time of the line it repeats: a line later than everything
    stored in its channel is not looked up; an older one is, by a restarted gateway too."""
    alice, _bob, a_server, _ = accounts

    def tagged(text: str, n: int, msgid: str) -> Line:
        at = T0 + timedelta(seconds=n)
        tags = {"time": at.isoformat(), "msgid": msgid}
        return line(alice, a_server, text, n, msgid=msgid, tags=tags)

    before = _msgid_index_scans(alice)
    store = Store(publish=False)
    store.add_account(alice.account)
    store.put(tagged("one", 1, "m1"))
    store.put(tagged("two", 2, "m2"))
    run_store(store, lambda: store.stored >= 2)
    store.put(tagged("three", 3, "m3"))
    store.put(tagged("one", 1, "m1"))  # a bouncer's playback
    run_store(store, lambda: store.backlog == 0)

    # The writer's backend hands its statistics over when it ends; a lambda, so that the
    # connection is the writer thread's.
    async def end_writer_connection() -> None:
        await store.run_sync(lambda: connection.close(), account_id=alice.account.pk)

    asyncio.run(end_writer_connection())
    # Only the playback of m1 was looked up in the (channel, msgid) index.
    assert _msgid_index_scans(alice) - before == 1

    restarted = Store(publish=False)
    restarted.add_account(alice.account)
    restarted.put(tagged("two", 2, "m2"))  # replayed after a restart: older than m3
    restarted.put(tagged("four", 4, "m4"))
    run_store(restarted, lambda: restarted.backlog == 0)
    with switch(alice):
        assert list(Message.objects.order_by("id").values_list("msgid", flat=True)) == [
            "m1", "m2", "m3", "m4",
        ]  # fmt: skip


def test_accounts_on_different_writers_do_not_wait_for_each_other(
    accounts: tuple[User, User, int, int], settings: Any
) -> None:
    """Each writer has its own accounts and connection: alice's writer held up (a slow batch,
    a read ordered with her writes) holds none of bob's lines, and hers follow in order."""
    alice, bob, a_server, b_server = accounts
    a, b = alice.account.pk.int, bob.account.pk.int
    settings.GATEWAY_WRITERS = next(n for n in range(2, 64) if a % n != b % n)
    store = Store(publish=False)
    store.add_account(alice.account)
    store.add_account(bob.account)
    release = threading.Event()

    async def main() -> None:
        task = asyncio.create_task(store.run())
        held = store.run_sync(release.wait, account_id=alice.account.pk)
        store.put(line(alice, a_server, "alice 0"))
        store.put(line(alice, a_server, "alice 1", 1))
        store.put(line(bob, b_server, "bob 0"))
        deadline = time.monotonic() + 10
        while store.stored < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert store.stored == 1 and store.backlog == 2
        release.set()
        await held
        await store.drain()
        task.cancel()

    try:
        asyncio.run(main())
    finally:
        release.set()
    with switch(bob):
        assert list(Message.objects.values_list("text", flat=True)) == ["bob 0"]
    with switch(alice):
        assert list(Message.objects.order_by("id").values_list("text", flat=True)) == [
            "alice 0", "alice 1",
        ]  # fmt: skip


def test_members_topic_and_notifications(accounts: tuple[User, User, int, int]) -> None:
    alice, _bob, a_server, _ = accounts
    acc = alice.account.pk
    store = Store(publish=False)
    store.add_account(alice.account)
    everyone = [("@", "Op", False), ("", "dave", False), ("+", "eve", False)]
    store.put(Members(acc, a_server, "#palaver", "replace", members=everyone))
    store.put(Members(acc, a_server, "#palaver", "rename", nick="dave", new_nick="David"))
    store.put(Members(acc, a_server, "#palaver", "remove", nick="EVE"))
    store.put(Members(acc, a_server, "#palaver", "update", nick="david", prefixes="+", away=True))
    store.put(Topic(acc, a_server, "#palaver", "Welcome"))
    store.put(line(alice, a_server, "alice: look", 1, highlight=True))
    store.put(line(alice, a_server, "psst", 2, buffer="carol", buffer_kind="query", private=True))
    run_store(store, lambda: store.backlog == 0 and store.stored >= 2)
    with switch(alice):
        channel = Channel.objects.get(name="#palaver")
        assert channel.topic == "Welcome"
        members = {
            (m.prefixes, m.nick, m.away) for m in ChannelUser.objects.filter(channel=channel)
        }
        assert members == {("@", "Op", False), ("+", "David", True)}
        assert Channel.objects.get(name="carol").kind == "query"
        kinds = sorted(Notification.objects.values_list("kind", "message__text"))
        assert kinds == [("highlight", "alice: look"), ("private", "psst")]


def test_database_outage_loses_no_line(accounts: tuple[User, User, int, int]) -> None:
    """The account's database refuses every connection for a few seconds (its connections are
    killed and new ones refused) while lines keep arriving; all are written once it is back."""
    alice, _bob, a_server, _ = accounts
    store = Store(publish=False)
    store.add_account(alice.account)
    db_name = connection.settings_dict["NAME"]
    import psycopg

    def admin_sql(sql: str) -> None:
        # The server the tests use, whether it is named by HOST or by OPTIONS (a socket).
        admin = connection_params(connection.settings_dict, dbname="postgres")
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(sql)

    total = 600

    async def main() -> None:
        writer = asyncio.create_task(store.run())
        for n in range(200):
            store.put(line(alice, a_server, f"before {n}", n))
        while store.stored < 200:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(
            admin_sql, f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS false'
        )
        await asyncio.to_thread(
            admin_sql,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{db_name}' AND pid <> pg_backend_pid()",
        )
        for n in range(200, 400):
            store.put(line(alice, a_server, f"during {n}", n))
            await asyncio.sleep(0.01)
        await asyncio.sleep(2)
        assert store.stored == 200 and not store.database_ok
        await asyncio.to_thread(
            admin_sql, f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS true'
        )
        for n in range(400, total):
            store.put(line(alice, a_server, f"after {n}", n))
        deadline = time.monotonic() + 30
        while store.stored < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await store.drain()
        writer.cancel()

    try:
        asyncio.run(main())
    finally:
        admin_sql(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS true')
        connection.close()
    with switch(alice):
        times = list(Message.objects.order_by("id").values_list("server_time", flat=True))
    assert len(times) == total
    assert times == sorted(times)  # in order, no duplicates
    assert len(set(times)) == total
    assert store.database_ok


def test_highlight_pattern_matches_whole_words() -> None:
    from gateway.storage import highlight_pattern

    pattern = highlight_pattern(["alice", "deploy now"])
    assert pattern is not None
    assert pattern.search("hey Alice, look")
    assert pattern.search("time to DEPLOY NOW!")
    assert not pattern.search("malice aforethought")
    assert highlight_pattern([" ", ""]) is None


def test_a_channel_deleted_in_the_web_is_recreated_not_lost(
    accounts: tuple[User, User, int, int],
) -> None:
    """The writer caches channel ids; a conversation closed in the web must not cost the next
    private message from that person."""
    alice, _bob, a_server, _ = accounts
    store = Store(publish=False)
    store.add_account(alice.account)

    async def main() -> None:
        writer = asyncio.create_task(store.run())
        store.put(line(alice, a_server, "first", 0, buffer="carol", buffer_kind="query"))
        while store.stored < 1:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(_delete_query, alice)
        store.put(line(alice, a_server, "second", 1, buffer="carol", buffer_kind="query"))
        while store.stored < 2:
            await asyncio.sleep(0.05)
        await store.drain()
        writer.cancel()

    asyncio.run(main())
    with switch(alice):
        assert list(Message.objects.values_list("text", "channel__name")) == [("second", "carol")]


def _delete_query(user: User) -> None:
    from django.db import connection as conn

    with switch(user):
        Channel.objects.filter(name="carol").delete()
    conn.close()


def test_a_flooding_account_loses_its_own_records_never_anothers(
    accounts: tuple[User, User, int, int], monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    alice, bob, a_server, b_server = accounts
    monkeypatch.setattr("gateway.storage.MAX_PENDING", 300)  # all accounts together
    settings.GATEWAY_MAX_PENDING_PER_ACCOUNT = 10_000  # so the shared bound is what bites
    store = Store(publish=False)
    store.add_account(alice.account)
    store.add_account(bob.account)
    for n in range(50):  # bob's lines wait first, the oldest in the queue
        store.put(line(bob, b_server, f"bob {n}", n))
    for n in range(1000):
        store.put(line(alice, a_server, f"flood {n}", n))
    assert store.dropped == 750 and store.backlog == 300
    run_store(store, lambda: store.backlog == 0 and store.stored >= 300)
    with switch(bob):
        assert list(Message.objects.order_by("id").values_list("text", flat=True)) == [
            f"bob {n}" for n in range(50)
        ]
    with switch(alice):
        flood = list(Message.objects.filter(channel__kind="channel").values_list("text", flat=True))
        said = list(Message.objects.filter(channel__kind="server").values_list("text", flat=True))
    # The newest kept; the notice itself pushed out one more (counted in the next notice).
    assert flood == [f"flood {n}" for n in range(751, 1000)]
    assert said == ["750 lines of this account were dropped: too many were waiting to be stored."]


def test_lines_of_a_deleted_server_are_dropped_at_once_not_each_tried(
    accounts: tuple[User, User, int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Two failing transactions per record kept the writer (and every configuration read the
    gateway makes through it) busy for seconds after a server was deleted."""
    # At INFO whatever an earlier test left the root logger at (a Celery worker started in this
    # process sets it to WARNING).
    caplog.set_level(logging.INFO, logger="gateway.storage")
    alice, bob, a_server, b_server = accounts
    store = Store(publish=False)
    store.add_account(alice.account)
    store.add_account(bob.account)
    for n in range(100):
        store.put(line(alice, a_server, f"late {n}", n))
    for n in range(5):
        store.put(line(bob, b_server, f"bob {n}", n))
    with switch(alice):
        Server.objects.filter(pk=a_server).delete()
    run_store(store, lambda: store.backlog == 0 and store.stored >= 5)
    with switch(bob):
        assert Message.objects.count() == 5
    refused = [r for r in caplog.records if "dropping a record" in r.getMessage()]
    assert refused == []
    # Tried once (twice, for a cached channel id), found gone, the other 99 never tried.
    gone = [r for r in caplog.records if f"server {a_server} deleted" in r.getMessage()]
    assert len(gone) == 1


def test_a_flood_is_taken_in_large_account_shares_and_round_robin() -> None:
    """Batches take each account's lines in large shares (one transaction each: thin slices of
    every account halved the store's throughput), and accounts take turns, so an account that
    starts waiting behind a flood is written within the next batches, never after it."""
    store = Store(publish=False)
    flooders = [uuid.uuid4() for _ in range(4)]
    for n in range(3000):
        for account_id in flooders:
            store.put(Line(account_id, 1, "#flood", "channel", "message", "x", f"{n}", T0))
    quiet = uuid.uuid4()
    store.put(Line(quiet, 1, "#quiet", "channel", "message", "bob", "hello", T0))

    def shares(batch: list[Record]) -> list[tuple[uuid.UUID, int]]:
        runs: list[tuple[uuid.UUID, int]] = []
        for record in batch:
            if runs and runs[-1][0] == record.account_id:
                runs[-1] = (record.account_id, runs[-1][1] + 1)
            else:
                runs.append((record.account_id, 1))
        return runs

    first = store._take_batch()
    assert len(first) == MAX_BATCH
    assert shares(first) == [(flooders[0], MAX_BATCH // 2), (flooders[1], MAX_BATCH // 2)]
    batches = [first]
    while store._pending:
        batches.append(store._take_batch())
    assert sum(len(b) for b in batches) == 4 * 3000 + 1
    # Every account's lines keep their order, and the quiet account's line is written before
    # what the flooders still hold when its turn comes, not after all of it.
    taken = [r.account_id for b in batches for r in b]
    assert taken.index(quiet) < len(taken) - 1000
    for account_id in flooders:
        texts = [
            r.text for b in batches for r in b if isinstance(r, Line) and r.account_id == account_id
        ]
        assert texts == [str(n) for n in range(3000)]


def test_database_lost_during_a_piecemeal_retry_writes_no_line_twice(
    accounts: tuple[User, User, int, int],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """A batch refused whole is retried account by account; if the server goes away in the
    middle, only what did not commit goes back to the queue. The failures are injected around
    the real writes (the database cannot be made to fail between two given statements)."""
    from django.db import IntegrityError, OperationalError

    from channels_app.services import ingest

    alice, bob, _, _ = accounts
    real = ingest.store_records
    calls: list[int] = []

    def flaky(
        *, batch: list[ingest.AccountRecords], channel_ids: ingest.ChannelIds, **options: Any
    ) -> Any:
        calls.append(len(batch))
        if len(calls) == 1:
            raise IntegrityError("a record refused: the batch is retried account by account")
        if len(calls) == 3:
            raise OperationalError("the server went away after the first account committed")
        return real(batch=batch, channel_ids=channel_ids, **options)

    monkeypatch.setattr(ingest, "store_records", flaky)
    # One writer, so that alice and bob share a batch.
    settings.GATEWAY_WRITERS = 1
    store = store_with_lines(accounts, 20)
    run_store(store, lambda: store.backlog == 0 and store.stored >= 40)
    assert calls[:3] == [2, 1, 1]  # whole batch, then alice alone, then bob alone
    with switch(alice):
        assert list(Message.objects.order_by("id").values_list("text", flat=True)) == [
            f"alice line {n}" for n in range(20)
        ]
    with switch(bob):
        assert list(Message.objects.order_by("id").values_list("text", flat=True)) == [
            f"bob line {n}" for n in range(20)
        ]
    assert store.stored == 40


def stored_rows(user: User) -> list[tuple[Any, ...]]:
    with switch(user):
        return list(
            Message.objects.order_by("id").values_list(
                "channel__name", "kind", "sender", "text", "server_time", "msgid", "tags",
                "notifications__kind",
            )
        )  # fmt: skip


@pytest.mark.parametrize("count", [3, 150], ids=["pipelined", "copy"])
def test_small_and_large_batches_store_the_same_rows(
    accounts: tuple[User, User, int, int],
    count: int,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """Up to ingest.PIPELINED_MAX_LINES a batch is written with pipelined INSERTs (one round
    trip for all its accounts, for latency), beyond with one COPY per account: both must store
    every column, the notifications and the ids in arrival order alike."""
    from channels_app.services import ingest

    settings.GATEWAY_WRITERS = 1  # both accounts in one batch

    assert (count <= ingest.PIPELINED_MAX_LINES) == (count == 3)
    alice, bob, a_server, b_server = accounts
    store = Store(publish=False)
    store.add_account(alice.account)
    store.add_account(bob.account)
    expected: dict[str, list[tuple[Any, ...]]] = {"alice": [], "bob": []}
    for n in range(count):
        for user, server, name in ((alice, a_server, "alice"), (bob, b_server, "bob")):
            at = T0 + timedelta(seconds=n)
            highlight = n % 2 == 0
            tags = {"msgid": f"{name}-{n}", "+draft/reply": "x y"}
            store.put(
                line(user, server, f"{name}: line {n}", n, msgid=f"{name}-{n}", tags=tags,
                     highlight=highlight, sender="Carol|away")
            )  # fmt: skip
            expected[name].append(
                ("#palaver", "message", "Carol|away", f"{name}: line {n}", at, f"{name}-{n}",
                 tags, "highlight" if highlight else None)
            )  # fmt: skip
    batches: list[int] = []
    real = ingest.store_records

    def counting(*, batch: list[ingest.AccountRecords], **kwargs: Any) -> Any:
        batches.append(sum(len(group.lines) for group in batch))
        return real(batch=batch, **kwargs)

    monkeypatch.setattr(ingest, "store_records", counting)
    run_store(store, lambda: store.backlog == 0 and store.stored >= 2 * count)
    assert batches == [2 * count]  # one batch, so one path
    assert stored_rows(alice) == expected["alice"]
    assert stored_rows(bob) == expected["bob"]


class Recorder:
    """A Store observer that checks, when told of a commit, that the batch's rows are visible
    to another connection: "committed" is what benchmarks/irc_latency.py times."""

    def __init__(self, user: User) -> None:
        self.schema = user.account.schema_name
        self.reads: list[str] = []
        self.commits: list[tuple[list[str], int]] = []

    def read(self, record: Record) -> None:
        assert isinstance(record, Line)
        self.reads.append(record.text)

    def committed(self, batch: list[Record]) -> None:
        with psycopg.connect(**connection_params(connection.settings_dict)) as other:
            row = other.execute(
                f'SELECT count(*) FROM "{self.schema}".channels_app_message'
            ).fetchone()
        assert row is not None
        self.commits.append(([r.text for r in batch if isinstance(r, Line)], row[0]))


def test_the_observer_sees_each_line_read_and_each_batch_after_its_commit(
    accounts: tuple[User, User, int, int],
) -> None:
    alice, _bob, a_server, _ = accounts
    store = Store(publish=False)
    store.add_account(alice.account)
    recorder = Recorder(alice)
    store.observer = recorder
    texts = [f"line {n}" for n in range(5)]
    for n, text in enumerate(texts):
        store.put(line(alice, a_server, text, n))
    assert recorder.reads == texts  # at put, before any write
    run_store(store, lambda: store.backlog == 0 and store.stored >= 5)
    assert [text for batch, _ in recorder.commits for text in batch] == texts
    # Each batch's rows are visible elsewhere when the observer hears of it.
    seen = 0
    for batch, visible in recorder.commits:
        seen += len(batch)
        assert visible == seen
    assert Store.observer is None  # production pays one attribute check, nothing more
