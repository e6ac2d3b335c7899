"""The gateway's write-ahead journal: what was read from IRC survives the process.

In this process, on the test database: a torn or corrupt tail is skipped; a replay after a kill
between commit and trim stores nothing twice, nor does a batch retried after its connection was
lost halfway; one journal per shard, held by one process. Against real processes (`manage.py
irc_gateway` as a subprocess, InspIRCd): SIGKILL during a database outage, the PostgreSQL server
stopped and started under a flood, SIGTERM, and SIGTERM during an outage. Those that stop the
database run on a PostgreSQL server of this module's own (pgserver, as config/embedded.py
starts one), so stopping it touches nothing else.
"""

import asyncio
import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from django.db import connection

from accounts.models import User
from channels_app.models import Message, Server
from config.database import database_url
from gateway.journal import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    SUFFIX,
    Journal,
    JournalLocked,
    open_journal,
    read_segment,
    replay,
)
from gateway.storage import Line, Store, _close_connection
from tenancy import switch
from tests.factories import UserFactory
from tests.gateway_support import wait_until
from tests.ircd import IrcBot, IrcServer, unique_channel

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


# --- in this process ------------------------------------------------------------------------


@pytest.fixture
def alice(clean_schemas: None) -> tuple[User, int]:
    user = UserFactory(email="alice@example.org")
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice").pk
    return user, server


def line(user: User, server_id: int, n: int, buffer: str = "#palaver") -> Line:
    # No msgid: the (channel, msgid) replay check cannot save these from being stored twice.
    return Line(user.account.pk, server_id, buffer, "channel", "message", "carol", f"line {n}",
                T0 + timedelta(seconds=n))  # fmt: skip


def killed(store: Store, journal: Journal) -> None:
    """What SIGKILL leaves: the files as written, the lock and the database connection
    released, nothing closed cleanly."""
    journal.write_out()
    journal._closed = True  # its fsync thread ends, as the process would
    journal._wake.set()
    journal._syncer.join()
    os.close(journal._lock_fd)
    for executor in store._db:
        executor.submit(_close_connection).result()
        executor.shutdown()


def run_until(store: Store, until: Callable[[], bool], before: Any = None) -> None:
    async def main() -> None:
        writer = asyncio.create_task(store.run())
        if before is not None:
            await before()
        deadline = time.monotonic() + 20
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await store.drain()
        writer.cancel()
        await store.close()

    asyncio.run(main())


def texts(user: User, **filters: Any) -> list[str]:
    with switch(user):
        return list(Message.objects.filter(**filters).order_by("id").values_list("text", flat=True))


def test_a_torn_tail_is_skipped_and_the_rest_replayed_in_order(
    alice: tuple[User, int], tmp_path: Path
) -> None:
    user, server_id = alice
    journal = Journal(tmp_path)
    store = Store(publish=False, journal=journal)
    store.add_account(user.account)
    for n in range(300):
        store.put(line(user, server_id, n, "#a" if n % 2 else "#b"))
    killed(store, journal)
    (segment,) = tmp_path.glob(f"*{SUFFIX}")
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    # Killed in the middle of a write: the last record is cut short. A byte flipped before it
    # (a bad sector) ends the intact part there, checksum and all.
    data = bytearray(segment.read_bytes())
    records = list(read_segment(segment))
    assert len(records) == 300
    segment.write_bytes(bytes(data[:-7]))
    assert len(list(read_segment(segment))) == 299
    at = SEGMENT_HEADER + sum(RECORD_HEADER.size + len(payload) for _, payload in records[:295])
    data[at + 12] ^= 0x01  # in record 295's seq (seq 296)
    data[at + RECORD_HEADER.size + 2] ^= 0x01  # and in its payload
    segment.write_bytes(bytes(data[:-7]))
    intact = len(list(read_segment(segment)))
    assert intact == 295
    data[at + RECORD_HEADER.size + 2] ^= 0x01  # the seq alone damaged: still caught
    segment.write_bytes(bytes(data[:-7]))
    assert len(list(read_segment(segment))) == 295

    again = Journal(tmp_path)
    store = Store(publish=False, journal=again)

    async def replayed() -> None:
        assert await replay(store, again) == intact

    run_until(store, lambda: store.stored >= intact, replayed)
    assert texts(user, channel__name="#b") == [f"line {n}" for n in range(0, intact, 2)]
    assert texts(user, channel__name="#a") == [f"line {n}" for n in range(1, intact, 2)]
    # Stored, so trimmed: a clean stop leaves no segment and no position behind.
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM gateway_journal_position")
        assert cursor.fetchone() == (0,)


def test_a_kill_between_commit_and_trim_stores_nothing_twice(
    alice: tuple[User, int], tmp_path: Path
) -> None:
    """The segment being appended to outlives the commit of its records: a kill then leaves
    stored lines in the journal. The position committed with them keeps the replay from
    storing them again; what was not committed yet is replayed."""
    user, server_id = alice
    journal = Journal(tmp_path)
    store = Store(publish=False, journal=journal)
    store.add_account(user.account)

    async def main() -> None:
        writer = asyncio.create_task(store.run())
        for n in range(200):
            store.put(line(user, server_id, n))
        while store.stored < 200:
            await asyncio.sleep(0.02)
        writer.cancel()
        # Read and journaled, never written (killed before the writer took them). Into the
        # journal only: a cancelled writer may still take one more batch (asyncio.wait_for can
        # swallow a cancellation that races its wake-up on Python 3.11).
        for n in range(200, 250):
            journal.append(line(user, server_id, n))

    asyncio.run(main())
    killed(store, journal)
    assert texts(user) == [f"line {n}" for n in range(200)]
    assert sum(len(list(read_segment(p))) for p in tmp_path.glob(f"*{SUFFIX}")) == 250

    again = Journal(tmp_path)
    store = Store(publish=False, journal=again)

    async def replayed() -> None:
        assert await replay(store, again) == 50

    run_until(store, lambda: store.stored >= 50, replayed)
    assert texts(user) == [f"line {n}" for n in range(250)]
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []


def test_a_batch_retried_after_a_lost_connection_stores_nothing_twice(
    alice: tuple[User, int], tmp_path: Path
) -> None:
    """One batch, two accounts, a transaction each: alice's commits, then the server ends the
    connection in bob's (a trigger has the backend terminate itself, once). The whole batch
    is retried; alice's lines, already committed, must not be stored again."""
    user, server_id = alice
    bob = UserFactory(email="bob@example.org")
    with switch(bob):
        bob_server = Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob").pk
    schema = bob.account.schema_name
    with connection.cursor() as cursor:
        cursor.execute(f"""
            CREATE SEQUENCE "{schema}".once;
            CREATE FUNCTION "{schema}".drop_connection() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('"{schema}".once') = 1 THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER drop_connection BEFORE INSERT ON "{schema}".channels_app_message
                FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".drop_connection();
        """)  # fmt: skip
    store = Store(publish=False, journal=Journal(tmp_path))
    store.add_account(user.account)
    store.add_account(bob.account)
    for n in range(50):
        store.put(line(user, server_id, n))
    for n in range(50):
        store.put(line(bob, bob_server, n))
    run_until(store, lambda: store.stored >= 100)
    assert store.stored == 100  # counted once each, the first attempt's commit included
    assert texts(user) == [f"line {n}" for n in range(50)]
    assert texts(bob) == [f"line {n}" for n in range(50)]
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT last_value FROM "{schema}".once')
        # The connection was lost once (1), then bob's lines were written: by one COPY (2) or,
        # a batch this small, one INSERT a line (51).
        assert cursor.fetchone() in ((2,), (51,))


def test_each_shard_has_a_journal_and_one_process_holds_it(
    db: None, tmp_path: Path, settings: Any
) -> None:
    settings.GATEWAY_JOURNAL_DIR = str(tmp_path)
    first, second = open_journal(shard=0, shards=2), open_journal(shard=1, shards=2)
    assert first is not None and second is not None
    assert first.directory != second.directory
    with pytest.raises(JournalLocked, match="another gateway process holds the journal"):
        open_journal(shard=0, shards=2)
    assert stat.S_IMODE(first.directory.stat().st_mode) == 0o700
    first.close()
    again = open_journal(shard=0, shards=2)  # free once its holder closed it
    assert again is not None
    again.close()
    second.close()
    settings.GATEWAY_JOURNAL = False
    assert open_journal(shard=0, shards=1) is None


# --- against real processes -----------------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL server of this test module's own (pgserver, as config/embedded.py starts
    one), migrated like a fresh install, which a test may stop and start."""

    def __init__(self, pgdata: Path) -> None:
        import pgserver

        self.server = pgserver.get_server(pgdata, cleanup_mode="delete")
        self.server.psql("CREATE DATABASE palaver")
        self.url = self.server.get_uri("palaver")

    def stop(self, mode: str = "fast") -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.server.pgdata), "-w"]
        result = subprocess.run(
            [*command, "-m", mode, "stop"], user=self.server.system_user, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    # Not under pytest's temporary directory: that is private to root, and as root pgserver
    # runs the server as a user of its own, which must reach the data directory.
    parent = Path(tempfile.mkdtemp(prefix="palaver-own-postgres-"))
    parent.chmod(0o755)
    server = OwnPostgres(parent / "pgdata")
    try:
        manage("migrate_accounts", database=server.url)
        yield server
    finally:
        server.server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_env(database: str, **extra: str) -> dict[str, str]:
    """The test's settings (its Redis database, loopback allowed) on the given database."""
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test",
            "DATABASE_URL": database, **extra}  # fmt: skip


def manage(*args: str, database: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env(database),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


PROVISION = """
import json
from django.db import transaction
from channels_app.models import Channel, Server
from channels_app.services.servers import save_server
from tenancy import switch
from tests.factories import UserFactory
user = UserFactory(email="{email}", account_name="{email}")
with switch(user), transaction.atomic():
    server = Server(name="Test net", host="127.0.0.1", port={port}, tls=False, nick="alice_p")
    server = save_server(account_id=user.account_id, server=server, alt_nicks=[], secrets={{}})
    for name in {channels!r}:
        Channel.objects.create(server=server, name=name, autojoin=True)
print(json.dumps({{"schema": user.account.schema_name}}))
"""


def provision(database: str, ircd: IrcServer, channels: list[str]) -> str:
    """An account with one server and its channels in that database; returns its schema."""
    code = PROVISION.format(email=f"{uuid.uuid4().hex[:8]}@example.org", port=ircd.port,
                            channels=channels)  # fmt: skip
    out = manage("shell", "-c", code, database=database)
    schema: str = json.loads(out.strip().splitlines()[-1])["schema"]
    return schema


class GatewayProcess:
    """`manage.py irc_gateway` as a child process, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "irc_gateway"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        return self.process.wait(60)

    def end(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def gateways() -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(env: dict[str, str], log_path: Path) -> GatewayProcess:
        started.append(GatewayProcess(env, log_path))
        return started[-1]

    yield start
    for gateway in started:
        gateway.end()


def stored(postgres: OwnPostgres, schema: str, channel: str) -> list[str]:
    rows = postgres.query(
        f'SELECT m.text FROM "{schema}".channels_app_message m '
        f'JOIN "{schema}".channels_app_channel c ON c.id = m.channel_id '
        "WHERE c.name = %s AND m.kind = 'message' ORDER BY m.id",
        channel,
    )
    return [text for (text,) in rows]


def journaled(directory: Path) -> list[str]:
    """The texts of the lines in a journal directory (what the gateway has read)."""
    from gateway.journal import decode

    found = []
    for path in sorted(directory.glob(f"*/*{SUFFIX}")):
        for _seq, payload in read_segment(path):
            record = decode(payload)
            if isinstance(record, Line):
                found.append(record.text)
    return found


def joined(bot: IrcBot, channel: str, gateway: GatewayProcess) -> None:
    try:
        bot.wait_for(rf":alice_p!\S+ JOIN :?{channel}", timeout=60, since=0)
    except AssertionError:
        raise AssertionError(f"the gateway did not join:\n{gateway.log()}") from None


class JoinedGateway(NamedTuple):
    channel: str
    schema: str
    journal_dir: Path
    env: dict[str, str]
    carol: IrcBot
    gateway: GatewayProcess


def joined_gateway(
    own_postgres: OwnPostgres, inspircd: IrcServer, irc_bot: Any, gateways: Any, tmp_path: Path
) -> JoinedGateway:
    """An account on its own PostgreSQL with one channel, carol in it, and a gateway child
    (journal under tmp_path) that has joined it."""
    channel = unique_channel()
    schema = provision(own_postgres.url, inspircd, [channel])
    journal_dir = tmp_path / "journal"
    env = child_env(own_postgres.url, GATEWAY_JOURNAL_DIR=str(journal_dir))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = gateways(env, tmp_path / "gateway.log")
    joined(carol, channel, gateway)
    return JoinedGateway(channel, schema, journal_dir, env, carol, gateway)


def test_sigkill_during_a_database_outage_loses_no_line(
    own_postgres: OwnPostgres, inspircd: IrcServer, irc_bot: Any, gateways: Any, tmp_path: Path
) -> None:
    channel, schema, journal_dir, env, carol, first = joined_gateway(
        own_postgres, inspircd, irc_bot, gateways, tmp_path
    )
    expected = [f"line {n:04d}" for n in range(300)]
    for text in expected[:100]:
        carol.say(channel, text)
    wait_until(lambda: stored(own_postgres, schema, channel) == expected[:100], 30, "stored")

    own_postgres.stop()
    try:
        for text in expected[100:]:
            carol.say(channel, text)
        # Read by the gateway (so in its journal), never stored; then the kill.
        wait_until(lambda: expected[-1] in journaled(journal_dir), 30, "the lines read")
        assert first.alive(), first.log()
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(10) == -signal.SIGKILL
    finally:
        own_postgres.start()
    assert stored(own_postgres, schema, channel) == expected[:100]

    second = gateways(env, tmp_path / "gateway.log")
    wait_until(lambda: len(stored(own_postgres, schema, channel)) >= 300, 60, "the replay")
    joined(carol, channel, second)
    time.sleep(0.5)  # anything stored twice would show by now
    # Once each, in order: the first 100, stored before the kill and still in the journal's
    # segment, are not stored again.
    assert stored(own_postgres, schema, channel) == expected, second.log()
    assert "replayed 200 records from the journal" in second.log()
    assert second.signal(signal.SIGTERM) == 0, second.log()
    assert list(journal_dir.glob(f"*/*{SUFFIX}")) == []  # all stored: trimmed


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stopped_and_started_mid_flood_stores_every_line_once_in_order(
    mode: str,
    own_postgres: OwnPostgres,
    inspircd: IrcServer,
    irc_bot: Any,
    gateways: Any,
    tmp_path: Path,
) -> None:
    """`fast` is a restart by an operator (sessions ended, in-flight transactions rolled back);
    `immediate` is a crash of the server (no checkpoint, recovery at start)."""
    channels = [unique_channel(), unique_channel()]
    schema = provision(own_postgres.url, inspircd, channels)
    env = child_env(own_postgres.url, GATEWAY_JOURNAL_DIR=str(tmp_path / "journal"))
    bots = irc_bot.many(inspircd, ["carol", "dave"])
    for bot, channel in zip(bots, channels, strict=True):
        bot.join(channel)
    gateway = gateways(env, tmp_path / "gateway.log")
    for bot, channel in zip(bots, channels, strict=True):
        joined(bot, channel, gateway)
    per_channel = 1500
    expected = {c: [f"{c} {n:05d}" for n in range(per_channel)] for c in channels}

    def flood(bot: IrcBot, channel: str) -> None:
        # Paced (~300 lines/s each, a busy channel), so that the outage falls inside it.
        for text in expected[channel]:
            bot.say(channel, text)
            time.sleep(0.003)

    pairs = zip(bots, channels, strict=True)
    floods = [threading.Thread(target=flood, args=pair) for pair in pairs]
    for thread in floods:
        thread.start()
    try:
        wait_until(lambda: len(stored(own_postgres, schema, channels[0])) >= 200, 30, "a start")
        own_postgres.stop(mode)
        # The server relays a flood at a few hundred lines a second: most is still to come.
        read = journaled(tmp_path / "journal")
        assert len(read) < 2 * per_channel, "the flood was over before the outage"
        time.sleep(2)
        assert len(journaled(tmp_path / "journal")) > len(read)  # read on, database away
        own_postgres.start()
    finally:
        for thread in floods:
            thread.join(60)
        own_postgres.start()

    def everything() -> bool:
        return all(len(stored(own_postgres, schema, c)) >= per_channel for c in channels)

    wait_until(everything, 60, "every line")
    time.sleep(0.5)
    for channel in channels:
        assert stored(own_postgres, schema, channel) == expected[channel], gateway.log()
    assert "database unreachable" in gateway.log()
    assert gateway.signal(signal.SIGTERM) == 0, gateway.log()


def test_sigterm_stores_what_was_read_quits_and_exits_0(
    clean_schemas: None, inspircd: IrcServer, irc_bot: Any, gateways: Any, tmp_path: Path
) -> None:
    """The lines are held by the database (their table locked) when the signal comes: the
    gateway must wait for them, not exit with them in memory."""
    from tests.test_gateway import add_server

    user = UserFactory(email="alice@example.org")
    channel = unique_channel()
    add_server(user, inspircd, channels=(channel,))
    journal_dir = tmp_path / "journal"
    env = child_env(database_url(connection.settings_dict),
                    GATEWAY_JOURNAL_DIR=str(journal_dir))  # fmt: skip
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = gateways(env, tmp_path / "gateway.log")
    joined(carol, channel, gateway)
    expected = [f"line {n:04d}" for n in range(200)]
    schema = user.account.schema_name
    with psycopg.connect(database_url(connection.settings_dict)) as blocker:
        blocker.execute(f'LOCK TABLE "{schema}".channels_app_message IN EXCLUSIVE MODE')
        for text in expected:
            carol.say(channel, text)
        wait_until(lambda: expected[-1] in journaled(journal_dir), 30, "the lines read")
        gateway.process.send_signal(signal.SIGTERM)
        carol.wait_for(r":alice_p!\S+ QUIT", timeout=10)
        time.sleep(1)
        assert gateway.alive(), gateway.log()  # still writing what it read
        blocker.rollback()  # the database takes them now
    assert gateway.process.wait(30) == 0, gateway.log()
    with switch(user):
        assert list(Message.objects.filter(channel__name=channel, kind="message")
                     .order_by("id").values_list("text", flat=True)) == expected  # fmt: skip
    assert list(journal_dir.glob(f"*/*{SUFFIX}")) == []
    assert "Traceback" not in gateway.log()


def test_sigterm_during_a_database_outage_exits_0_and_the_next_start_stores_the_rest(
    own_postgres: OwnPostgres, inspircd: IrcServer, irc_bot: Any, gateways: Any, tmp_path: Path
) -> None:
    """What the database could not take before the stop stays in the journal, fsynced."""
    channel, schema, journal_dir, env, carol, first = joined_gateway(
        own_postgres, inspircd, irc_bot, gateways, tmp_path
    )
    expected = [f"line {n:04d}" for n in range(100)]
    own_postgres.stop()
    try:
        for text in expected:
            carol.say(channel, text)
        wait_until(lambda: expected[-1] in journaled(journal_dir), 30, "the lines read")
        assert first.signal(signal.SIGTERM) == 0, first.log()
    finally:
        own_postgres.start()
    carol.wait_for(r":alice_p!\S+ QUIT", timeout=5)
    assert stored(own_postgres, schema, channel) == []
    second = gateways(env, tmp_path / "gateway.log")
    wait_until(lambda: len(stored(own_postgres, schema, channel)) >= 100, 60, "the replay")
    time.sleep(0.5)
    assert stored(own_postgres, schema, channel) == expected, second.log()
    assert second.signal(signal.SIGTERM) == 0, second.log()
