"""Writing what the IRC connections see into each account's schema, in batches.

The asyncio side only appends records to an in-memory queue, one per account. GATEWAY_WRITERS
threads do the writes, each with its own database connection and its own share of the accounts
(an account always on the same writer, so its lines commit in the order they came and its
message ids grow in commit order, which the live streams rely on). Every FLUSH_SECONDS (or
sooner when MAX_BATCH records wait) an idle writer takes a batch from its accounts' queues in
turn (up to MAX_PER_ACCOUNT_IN_BATCH each, the accounts taken from moving to the back of the
line), and has channels_app.services.ingest write the whole batch, every account in it, in one
transaction. After the commit the batch's live events go to Redis in one
pipeline, and one message-hook task per account is enqueued (channels_app.hooks): listeners
never run on this thread. If the database is unreachable the batch goes back to the head of
the queues and is retried with backoff, so a PostgreSQL restart costs delay, not lines.

An account whose queue passes GATEWAY_MAX_PENDING_PER_ACCOUNT (a flooding server, a long
outage) loses its own oldest records and is told so in the server buffer; no other account's
record is ever dropped for it. A server cannot create Channel rows past
LIMIT_CHANNELS_PER_SERVER either (a query from every nick of a botnet): those lines are
refused, and the server buffer says so.
"""

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.db import connection as django_connection
from django.utils import timezone

from accounts.models import Account
from channels_app import events, hooks
from channels_app.models import Server
from channels_app.services import ingest
from tenancy import db_memory, switch

if TYPE_CHECKING:
    from gateway.journal import Journal

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.02
MAX_BATCH = 5000
# An account's part of one batch (one transaction). A flood must be written in few, large
# transactions: a thin slice of every account per batch halved the store's throughput
# (docs/benchmarks.md: ratio 0.15 against 0.29 with half a batch). A line of an account that
# joins the line waits behind at most what the accounts before it hold, as it did in arrival
# order.
MAX_PER_ACCOUNT_IN_BATCH = MAX_BATCH // 2
# Records held in all (while the database is away); past this the longest account queue loses
# its oldest, loudly.
MAX_PENDING = 2_000_000
RETRY_MAX_SECONDS = 5.0

SERVER_BUFFER = "*server*"


@dataclass(slots=True)
class Line:
    """Something said or done in a buffer (a channel, a query, or the server buffer)."""

    account_id: uuid.UUID
    server_id: int
    buffer: str
    buffer_kind: str  # Channel.Kind value
    kind: str  # Message.Kind value
    sender: str
    text: str
    server_time: datetime
    msgid: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    highlight: bool = False
    private: bool = False
    journal_seq: int = 0  # its place in the write-ahead journal (gateway/journal.py); 0: none


@dataclass(slots=True)
class Members:
    """A buffer's member list, replaced whole (end of NAMES) or changed one nick at a time."""

    account_id: uuid.UUID
    server_id: int
    buffer: str
    op: str  # "replace", "add", "remove", "rename", "update", "clear"
    members: list[tuple[str, str, bool]] = field(default_factory=list)  # (prefixes, nick, away)
    nick: str = ""
    new_nick: str = ""
    prefixes: str | None = None
    away: bool | None = None
    journal_seq: int = 0


@dataclass(slots=True)
class Topic:
    account_id: uuid.UUID
    server_id: int
    buffer: str
    topic: str
    journal_seq: int = 0


@dataclass(slots=True)
class Joined:
    """We joined or left a channel: it is rejoined after a restart exactly when we are in it."""

    account_id: uuid.UUID
    server_id: int
    buffer: str
    joined: bool
    journal_seq: int = 0


Record = Line | Members | Topic | Joined

_WORD_CACHE: dict[tuple[str, ...], re.Pattern[str] | None] = {}


def highlight_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of the words as a whole word, case-insensitively."""
    key = tuple(sorted({w.strip() for w in words if w and w.strip()}))
    if key not in _WORD_CACHE:
        _WORD_CACHE[key] = (
            re.compile(
                r"(?<![\w])(?:" + "|".join(re.escape(w) for w in key) + r")(?![\w])",
                re.IGNORECASE,
            )
            if key
            else None
        )
    return _WORD_CACHE[key]


class BatchInterrupted(OperationalError):
    """The database went away while a failed batch was being retried piecemeal: `unwritten`
    are its records not committed before it did."""

    def __init__(self, unwritten: list[Record], written: int) -> None:
        super().__init__(f"database lost with {len(unwritten)} records of the batch unwritten")
        self.unwritten = unwritten
        self.written = written  # lines of the batch that did commit


class StoreObserver(Protocol):
    """Told when a record enters the store and when its batch has committed: how
    benchmarks/irc_latency.py splits a line's latency into stages without patching the store."""

    def read(self, record: Record) -> None: ...

    def committed(self, batch: list[Record]) -> None: ...


# (account id, the account's live events of a batch) -> whether the message hook's task is worth
# enqueuing for its new lines.
HookFilter = Callable[[uuid.UUID, "list[events.LiveEvent]"], bool]


class Store:
    # None in production: the store then pays one attribute check per record and per batch.
    observer: StoreObserver | None = None
    # Set by the gateway (gateway.manager.Gateway.hook_wanted): without it, every batch of
    # every account enqueues the hook's task.
    hook_filter: HookFilter | None = None

    def __init__(self, *, publish: bool = True, journal: "Journal | None" = None) -> None:
        # Every record is appended to it when put, so a killed process loses none.
        self.journal = journal
        self._writers: int = max(1, settings.GATEWAY_WRITERS)
        # Per writer: a failed attempt may have committed part of its batch (see
        # Journal.uncommitted).
        self._recheck = [False] * self._writers
        self._closed = False
        # Per account, so that one account's flood can only ever push out its own records.
        self._pending: dict[uuid.UUID, deque[Record]] = {}
        self._pending_count = 0
        self._max_per_account: int = settings.GATEWAY_MAX_PENDING_PER_ACCOUNT
        # A batch is one transaction and a connection can only be recycled between
        # transactions (tenancy/db_memory.py), so a batch enters at most as many account schemas
        # as the recycling limit: the writer's backend then never holds more than twice that
        # many schemas' catalog caches.
        self._max_accounts_in_batch: int = settings.DATABASE_RECYCLE_AFTER_SCHEMAS or MAX_BATCH
        self._notice_seconds: float = settings.GATEWAY_REFUSAL_NOTICE_SECONDS
        # (account, server) -> records dropped / lines refused not yet reported, and when the
        # last report was made.
        self._dropped_by: dict[tuple[uuid.UUID, int], int] = defaultdict(int)
        self._refused_by: dict[tuple[uuid.UUID, int], int] = defaultdict(int)
        self._reported_at: dict[tuple[str, uuid.UUID, int], float] = {}
        self._wakeup = asyncio.Event()
        # One thread per writer: its Django connection is its own (connections are per thread).
        self._db = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gateway-db{lane}")
            for lane in range(self._writers)
        ]
        # What follows a commit (live events, hook tasks), in commit order.
        self._announcer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-announce")
        self._accounts: dict[uuid.UUID, Account] = {}
        # Per writer (only its thread touches them once running): channel ids, and each
        # channel's latest stored server_time (lines later than it skip the replay probe).
        self._channels: list[ingest.ChannelIds] = [{} for _ in range(self._writers)]
        self._newest: list[ingest.NewestTimes] = [{} for _ in range(self._writers)]
        self._publish = publish
        self._redis: Any = None
        self._lock = threading.Lock()
        self.stored = 0
        self.dropped = 0
        self.database_ok = True
        self._stopping = False
        # Records in the batch each writer is writing (0: idle).
        self._inflight = [0] * self._writers
        self._busy: dict[int, asyncio.Task[None]] = {}
        self._delay = [0.2] * self._writers

    # -- asyncio side ------------------------------------------------------------------------

    def add_account(self, account: Account) -> None:
        self._accounts[account.pk] = account

    def put(self, record: Record) -> None:
        if self.observer is not None:
            self.observer.read(record)
        if self.journal is not None:
            self.journal.append(record)
        self.enqueue(record)

    def enqueue(self, record: Record) -> None:
        """Queue a record for the writer (already journaled, or no journal)."""
        queue = self._pending.get(record.account_id)
        if queue is None:
            queue = self._pending[record.account_id] = deque()
        queue.append(record)
        self._pending_count += 1
        if len(queue) > self._max_per_account:
            self._drop_oldest(queue)
        elif self._pending_count > MAX_PENDING:
            # The account putting is usually the flooding one: its own queue when it holds at
            # least a fair share, so a long outage does not scan every account per record.
            fair = MAX_PENDING // len(self._pending)
            self._drop_oldest(queue if len(queue) >= fair else max(self._pending.values(), key=len))
        # Write at once when the account's writer is idle (latency); while a batch is being
        # written, lines gather into the next one (throughput).
        if self._pending_count >= MAX_BATCH or not self._inflight[self._lane(record.account_id)]:
            self._wakeup.set()

    def _lane(self, account_id: uuid.UUID) -> int:
        """The writer of an account: always the same one."""
        return account_id.int % self._writers

    def _drop_oldest(self, queue: deque[Record]) -> None:
        dropped = queue.popleft()
        self._pending_count -= 1
        self.dropped += 1
        if self.journal is not None:
            self.journal.done([dropped])
        key = (dropped.account_id, dropped.server_id)
        if not self._dropped_by[key]:
            logger.error("account %s: too many records waiting; dropping its oldest", key[0])
        self._dropped_by[key] += 1

    def _take_batch(self, lane: int | None = None) -> list[Record]:
        """Up to MAX_BATCH records of the writer `lane`'s accounts (any account's if None),
        round robin over the accounts: each account in line gives its oldest (up to
        MAX_PER_ACCOUNT_IN_BATCH) and, if it has more, goes to the back of the line (dicts keep
        insertion order), so an account with a long queue delays no other by more than a batch
        or two. At most `_max_accounts_in_batch` accounts per batch, so that each writer's
        connection stays within the recycling bound."""
        batch: list[Record] = []
        accounts = 0
        for account_id in list(self._pending):
            if len(batch) >= MAX_BATCH or accounts >= self._max_accounts_in_batch:
                break
            if lane is not None and self._lane(account_id) != lane:
                continue
            accounts += 1
            queue = self._pending.pop(account_id)
            for _ in range(min(MAX_PER_ACCOUNT_IN_BATCH, len(queue), MAX_BATCH - len(batch))):
                batch.append(queue.popleft())
            if queue:
                self._pending[account_id] = queue
        self._pending_count -= len(batch)
        return batch

    def _put_back(self, batch: list[Record]) -> None:
        """A batch the database refused goes back to the head of its accounts' queues."""
        for record in reversed(batch):
            queue = self._pending.get(record.account_id)
            if queue is None:
                queue = self._pending[record.account_id] = deque()
            queue.appendleft(record)
        self._pending_count += len(batch)

    def _report_losses(self) -> None:
        """Tell each server buffer what its account lost (dropped or refused), at most once per
        notice interval; counts add up until then."""
        now = time.monotonic()
        for what, counts in (("dropped", self._dropped_by), ("refused", self._refused_by)):
            with self._lock:
                due = []
                for key in [k for k, n in counts.items() if n]:
                    # Not while the account's writer is busy: its queue is still overflowing,
                    # and the notice would be the next record dropped.
                    if what == "dropped" and self._lane(key[0]) in self._busy:
                        continue
                    last = self._reported_at.get((what, *key))
                    if last is None or now - last >= self._notice_seconds:
                        self._reported_at[(what, *key)] = now
                        due.append((key, counts.pop(key)))
            for key, count in due:
                if what == "dropped":
                    text = (
                        f"{count} lines of this account were dropped: too many were waiting "
                        "to be stored."
                    )
                else:
                    text = (
                        f"{count} lines were refused: they would open a new channel or "
                        f"conversation past the limit of {settings.LIMIT_CHANNELS_PER_SERVER} "
                        "per server."
                    )
                account_id, server_id = key
                at = timezone.now()
                self.put(
                    Line(account_id, server_id, SERVER_BUFFER, "server", "system", "", text, at)
                )

    @property
    def backlog(self) -> int:
        """Records not yet written: waiting, or in the batch being written."""
        return self._pending_count + sum(self._inflight)

    async def run(self) -> None:
        self._stopping = False
        self._wakeup = asyncio.Event()  # bound to this loop
        self._busy = {}
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=FLUSH_SECONDS)
            self._wakeup.clear()
            self._report_losses()
            if not self._pending:
                if self._stopping and not self._busy:
                    return
                continue
            if self.journal is not None:
                self.journal.write_out()
            for lane in range(self._writers):
                if lane in self._busy:
                    continue
                batch = self._take_batch(lane)
                if batch:
                    self._inflight[lane] = len(batch)
                    self._busy[lane] = asyncio.create_task(self._write_on(lane, batch))

    async def _write_on(self, lane: int, batch: list[Record]) -> None:
        """One batch on one writer; a batch the database could not take goes back to the
        queues, and that writer waits (with backoff) before its next."""
        try:
            written = await asyncio.get_running_loop().run_in_executor(
                self._db[lane], self._write_journaled, lane, batch
            )
        except (OperationalError, InterfaceError) as exc:
            if isinstance(exc, BatchInterrupted):
                self.stored += exc.written
                self._put_back(exc.unwritten)
                if self.journal is not None:
                    unwritten = set(map(id, exc.unwritten))
                    self.journal.done([r for r in batch if id(r) not in unwritten])
            else:
                self._put_back(batch)
            # The COMMIT may have landed as the connection died: this writer's retry asks the
            # journal's positions what did.
            self._recheck[lane] = self.journal is not None
            self._inflight[lane] = 0
            if self.database_ok:
                logger.warning("database unreachable, holding %d lines: %s", self.backlog, exc)
            self.database_ok = False
            await asyncio.sleep(self._delay[lane])
            self._delay[lane] = min(self._delay[lane] * 2, RETRY_MAX_SECONDS)
            return
        finally:
            self._inflight[lane] = 0
            del self._busy[lane]
            # This writer is free: the loop gives it the next batch of its accounts.
            self._wakeup.set()
        if not self.database_ok:
            logger.warning("database back; writing held lines")
        self.database_ok = True
        self._delay[lane] = 0.2
        self.stored += written
        if self.journal is not None:
            self.journal.done(batch)

    async def drain(self, timeout: float = 10.0) -> None:
        """Write everything pending, then stop the writer loop."""
        self._stopping = True
        self._wakeup.set()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.backlog and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        # The written batches' live events and hook tasks are out before this returns.
        await asyncio.wrap_future(self._announcer.submit(lambda: None))

    async def close(self) -> None:
        """Close the journal (emptied when everything in it was stored), then release the
        writer threads and their database connections."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self.journal is not None:
            await loop.run_in_executor(self._db[0], self.journal.close)
        for executor in self._db:
            # A function, not the bound method: the proxy must resolve in the writer's thread.
            await loop.run_in_executor(executor, _close_connection)
            executor.shutdown(wait=True)
        self._announcer.shutdown(wait=True)

    def run_sync(
        self, fn: Any, *args: Any, account_id: uuid.UUID | None = None
    ) -> "asyncio.Future[Any]":
        """Run a database function on a writer thread, ordered with the writes: with
        `account_id`, on that account's writer, after its batches already taken; without, on
        the first writer while every other one waits for it (after all batches taken)."""
        if account_id is not None:
            return asyncio.get_running_loop().run_in_executor(
                self._db[self._lane(account_id)], fn, *args
            )
        future = self._db[0].submit(fn, *args)
        for executor in self._db[1:]:
            executor.submit(wait_for_futures, [future])
        return asyncio.wrap_future(future)

    # -- database thread ---------------------------------------------------------------------

    def _write_journaled(self, lane: int, batch: list[Record]) -> int:
        if self.journal is not None:
            self.journal.before_batch()
            if self._recheck[lane]:
                kept = self.journal.uncommitted(batch)
                self._recheck[lane] = False
                # Committed by the failed attempt: stored, though not by this one.
                landed = sum(isinstance(r, Line) for r in batch) - sum(
                    isinstance(r, Line) for r in kept
                )
                return landed + self._write_batch(lane, kept)
        return self._write_batch(lane, batch)

    def _journal_positions(self, records: list[Record]) -> Callable[[], None] | None:
        """What the ingest runs inside the transaction storing `records`: their journal
        positions, so they count as committed exactly when they are (gateway/journal.py)."""
        journal = self.journal
        if journal is None:
            return None
        return lambda: journal.save_positions(records)

    def _write_batch(self, lane: int, batch: list[Record]) -> int:
        """Write one batch (all its accounts, one transaction, channels_app.services.ingest), then
        publish its live events and enqueue its message hooks. Returns the lines stored."""
        # The writer keeps its connection between batches (reconnecting per batch cost ~7 ms);
        # a broken one is closed on the error below and reopened by the retry.
        groups = self._group(batch)
        # Between transactions: a connection that has entered too many account schemas (or
        # grown too big) is closed before it grows further; the next query reopens it.
        db_memory.maybe_recycle(django_connection)
        db_memory.note_schemas(django_connection, [g.schema_name for g in groups.values()])
        try:
            stored = ingest.store_records(
                batch=list(groups.values()),
                channel_ids=self._channels[lane],
                newest=self._newest[lane],
                in_transaction=self._journal_positions(batch),
            )
        except (OperationalError, InterfaceError):
            self._reset_connection(lane)
            raise
        except DatabaseError:
            # A bad record must not block every line behind it: each account on its own, and
            # one record at a time in an account that still fails.
            logger.exception("batch failed; retrying it account by account")
            committed: set[int] = set()
            stored = ingest.Stored()
            try:
                self._write_each_account(lane, groups, stored, committed)
            except (OperationalError, InterfaceError) as exc:
                # Only what did not commit goes back to the queue: no line twice.
                written = stored.lines
                self._after_commit(stored)
                unwritten = [r for r in batch if id(r) not in committed]
                raise BatchInterrupted(unwritten, written) from exc
        written = stored.lines
        if self.observer is not None:
            self.observer.committed(batch)
        self._after_commit(stored)
        return written

    def _group(self, batch: Iterable[Record]) -> dict[uuid.UUID, ingest.AccountRecords]:
        """The batch's records by account, each kind in arrival order; records of accounts
        deleted while they waited are left out."""
        groups: dict[uuid.UUID, ingest.AccountRecords] = {}
        for record in batch:
            group = groups.get(record.account_id)
            if group is None:
                account = self._accounts.get(record.account_id)
                if account is None:
                    continue
                group = groups[record.account_id] = ingest.AccountRecords(
                    record.account_id, account.schema_name
                )
            _add_record(group, record)
        return groups

    def _write_each_account(
        self,
        lane: int,
        groups: dict[uuid.UUID, ingest.AccountRecords],
        stored: ingest.Stored,
        committed: set[int],
    ) -> None:
        for account_id, group in groups.items():
            try:
                stored.add(
                    ingest.store_records(
                        batch=[group],
                        channel_ids=self._channels[lane],
                        newest=self._newest[lane],
                        in_transaction=self._journal_positions(_records_of(group)),
                    )
                )
                committed.update(map(id, _records_of(group)))
            except (OperationalError, InterfaceError):
                self._reset_connection(lane)
                raise
            except DatabaseError:
                # The usual cause is a channel deleted in the web since we cached its id.
                self.forget_channels(account_id)
                self._write_one_by_one(lane, group, stored, committed)

    def _write_one_by_one(
        self, lane: int, group: ingest.AccountRecords, stored: ingest.Stored, committed: set[int]
    ) -> None:
        account = self._accounts.get(group.account_id)
        if account is None:
            return
        # Servers deleted in the web while their lines waited: the rest of their records are
        # dropped without a try. Two failing transactions each, with a traceback, kept this
        # thread busy for seconds.
        gone: set[int] = set()
        for record in _records_of(group):
            committed.add(id(record))  # written or given up: never put back
            if record.server_id in gone:
                continue
            one = ingest.AccountRecords(group.account_id, group.schema_name)
            _add_record(one, record)
            for attempt in (1, 2):
                try:
                    stored.add(
                        ingest.store_records(
                            batch=[one],
                            channel_ids=self._channels[lane],
                            newest=self._newest[lane],
                            in_transaction=self._journal_positions([record]),
                        )
                    )
                    break
                except (OperationalError, InterfaceError):
                    committed.discard(id(record))
                    self._reset_connection(lane)
                    raise
                except DatabaseError:
                    # A channel deleted in the web since we cached its id: forget the cache
                    # and try once more before giving the record up.
                    self.forget_channels(group.account_id)
                    if attempt == 2:
                        if not self._server_exists(account, record.server_id):
                            logger.info("server %s deleted: dropping its waiting records",
                                        record.server_id)  # fmt: skip
                            gone.add(record.server_id)
                        else:
                            logger.exception("dropping a record the database refuses: %r", record)

    @staticmethod
    def _server_exists(account: Account, server_id: int) -> bool:
        with switch(account):
            return Server.objects.filter(pk=server_id).exists()

    def _reset_connection(self, lane: int) -> None:
        self._channels[lane].clear()
        self._newest[lane].clear()
        try:
            django_connection.close()
        except Exception:
            django_connection.connection = None

    def forget_channels(self, account_id: uuid.UUID) -> None:
        channels = self._channels[self._lane(account_id)]
        for key in [k for k in channels if k[0] == account_id]:
            del channels[key]

    def _after_commit(self, stored: ingest.Stored) -> None:
        if stored.refused:
            with self._lock:  # read by the asyncio side
                for key, count in stored.refused.items():
                    self._refused_by[key] += count
        if stored.events or stored.message_ids:
            # On a thread of its own, in commit order: the writer starts the next batch while
            # Redis and the broker are talked to (a sixth of the writer's time per line).
            self._announcer.submit(self._announce, stored.events, stored.message_ids)
        stored.refused, stored.events, stored.message_ids = {}, {}, {}

    def _announce(
        self,
        stored_events: dict[uuid.UUID, list[events.LiveEvent]],
        message_ids: dict[uuid.UUID, list[int]],
    ) -> None:
        """Publish a committed batch's live events in one pipeline, then enqueue one message-
        hook task per account."""
        if self._publish and stored_events:
            try:
                if self._redis is None:
                    self._redis = events.redis_client()
                pipe = self._redis.pipeline(transaction=False)
                for account_id, account_events in stored_events.items():
                    channel = events.events_channel(account_id)
                    for event in account_events:
                        pipe.publish(channel, events.encode_event(event))
                pipe.execute()
            except Exception:
                # Browsers resume from the database with Last-Event-ID; a lost event costs
                # only liveness.
                logger.warning("could not publish live events", exc_info=True)
                self._redis = None
        hook_filter = self.hook_filter
        for account_id, ids in message_ids.items():
            account = self._accounts.get(account_id)
            if not ids or account is None:
                continue
            if hook_filter is not None and not hook_filter(
                account_id, stored_events.get(account_id, [])
            ):
                continue
            hooks.message_stored_on_commit(
                account_id=account_id, schema_name=account.schema_name, message_ids=ids
            )


def _add_record(group: ingest.AccountRecords, record: Record) -> None:
    if isinstance(record, Line):
        group.lines.append(record)
    elif isinstance(record, Members):
        group.members.append(record)
    elif isinstance(record, Topic):
        group.topics.append(record)
    else:
        group.joins.append(record)


def _records_of(group: ingest.AccountRecords) -> "list[Any]":
    return [*group.lines, *group.members, *group.topics, *group.joins]


def _close_connection() -> None:
    django_connection.close()


def now() -> datetime:
    return timezone.now()
