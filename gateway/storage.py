"""Writing what the IRC connections see into each account's schema, in batches.

The asyncio side only appends records to an in-memory queue, one per account. One thread does
every database touch: every FLUSH_SECONDS (or sooner when MAX_BATCH records wait) it takes a
batch from the accounts' queues in turn (up to MAX_PER_ACCOUNT_IN_BATCH each, the accounts
taken from moving to the back of the line), and writes each account's share in one
transaction inside `tenancy.switch(account)`. Live events go to Redis and the message-stored
hooks run after the commit. If the database is unreachable the batch goes back to the head of
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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    transaction,
)
from django.db import connection as django_connection
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.models import Account
from channels_app import events
from channels_app.hooks import notify_message_stored
from channels_app.models import Channel, ChannelUser, Message, Notification, Server
from tenancy import switch

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


class ChannelRefused(Exception):
    """A new buffer past LIMIT_CHANNELS_PER_SERVER."""


class Store:
    def __init__(self, *, publish: bool = True, journal: "Journal | None" = None) -> None:
        # Every record is appended to it when put, so a killed process loses none.
        self.journal = journal
        # A failed attempt may have committed part of its batch (see Journal.uncommitted).
        self._recheck = False
        self._closed = False
        # Per account, so that one account's flood can only ever push out its own records.
        self._pending: dict[uuid.UUID, deque[Record]] = {}
        self._pending_count = 0
        self._max_per_account: int = settings.GATEWAY_MAX_PENDING_PER_ACCOUNT
        self._notice_seconds: float = settings.GATEWAY_REFUSAL_NOTICE_SECONDS
        # (account, server) -> records dropped / lines refused not yet reported, and when the
        # last report was made.
        self._dropped_by: dict[tuple[uuid.UUID, int], int] = defaultdict(int)
        self._refused_by: dict[tuple[uuid.UUID, int], int] = defaultdict(int)
        self._reported_at: dict[tuple[str, uuid.UUID, int], float] = {}
        self._wakeup = asyncio.Event()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._accounts: dict[uuid.UUID, Account] = {}
        self._channels: dict[tuple[uuid.UUID, int, str], int] = {}
        self._publish = publish
        self._redis: Any = None
        self._lock = threading.Lock()
        self.stored = 0
        self.dropped = 0
        self.database_ok = True
        self._stopping = False
        self._inflight = 0

    # -- asyncio side ------------------------------------------------------------------------

    def add_account(self, account: Account) -> None:
        self._accounts[account.pk] = account

    def put(self, record: Record) -> None:
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
        # Write at once when the writer is idle (latency); while a batch is being written,
        # lines gather into the next one (throughput).
        if self._pending_count >= MAX_BATCH or not self._inflight:
            self._wakeup.set()

    def _drop_oldest(self, queue: deque[Record]) -> None:
        dropped = queue.popleft()
        self._pending_count -= 1
        if self.journal is not None:
            self.journal.done([dropped])
        self.dropped += 1
        key = (dropped.account_id, dropped.server_id)
        if not self._dropped_by[key]:
            logger.error("account %s: too many records waiting; dropping its oldest", key[0])
        self._dropped_by[key] += 1

    def _take_batch(self) -> list[Record]:
        """Up to MAX_BATCH records, round robin over the accounts: each account in line gives
        its oldest (up to MAX_PER_ACCOUNT_IN_BATCH) and, if it has more, goes to the back of the
        line (dicts keep insertion order), so an account with a long queue delays no other by
        more than a batch or two."""
        batch: list[Record] = []
        while self._pending and len(batch) < MAX_BATCH:
            account_id = next(iter(self._pending))
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
        return self._pending_count + self._inflight

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        self._stopping = False
        self._wakeup = asyncio.Event()  # bound to this loop
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=FLUSH_SECONDS)
            self._wakeup.clear()
            self._report_losses()
            if not self._pending:
                if self._stopping:
                    return
                continue
            batch = self._take_batch()
            self._inflight = len(batch)
            if self.journal is not None:
                self.journal.write_out()
            try:
                written = await loop.run_in_executor(self._db, self._write_journaled, batch)
            except (OperationalError, InterfaceError) as exc:
                self._put_back(batch)
                self._recheck = self.journal is not None
                self._inflight = 0
                if self.database_ok:
                    logger.warning("database unreachable, holding %d lines: %s", self.backlog, exc)
                self.database_ok = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            finally:
                self._inflight = 0
            if not self.database_ok:
                logger.warning("database back; writing held lines")
            self.database_ok = True
            delay = 0.2
            self.stored += written
            if self.journal is not None:
                self.journal.done(batch)
            if self._pending:
                self._wakeup.set()

    async def drain(self, timeout: float = 10.0) -> None:
        """Write everything pending, then stop the writer loop."""
        self._stopping = True
        self._wakeup.set()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.backlog and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Close the journal (emptied when everything in it was stored), then release the
        writer thread and its database connection."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self.journal is not None:
            await loop.run_in_executor(self._db, self.journal.close)
        # A function, not the bound method: the proxy must resolve in the writer's thread.
        await loop.run_in_executor(self._db, _close_connection)
        self._db.shutdown(wait=True)

    def run_sync(self, fn: Any, *args: Any) -> "asyncio.Future[Any]":
        """Run a database function on the writer thread (so it is ordered with the writes)."""
        return asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    # -- database thread ---------------------------------------------------------------------

    def _write_journaled(self, batch: list[Record]) -> int:
        if self.journal is not None:
            self.journal.before_batch()
            if self._recheck:
                kept = self.journal.uncommitted(batch)
                self._recheck = False
                # Committed by the failed attempt: stored, though not by this one.
                landed = sum(isinstance(r, Line) for r in batch) - sum(
                    isinstance(r, Line) for r in kept
                )
                return landed + self._write_batch(kept)
        return self._write_batch(batch)

    def _save_journal_positions(self, records: list[Record]) -> None:
        """Inside the transaction that stores `records` (see gateway/journal.py)."""
        if self.journal is not None:
            self.journal.save_positions(records)

    def _write_batch(self, batch: list[Record]) -> int:
        # The writer keeps its connection between batches (reconnecting per batch cost ~7 ms);
        # a broken one is closed on the error below and reopened by the retry.
        try:
            by_account: dict[uuid.UUID, list[Record]] = defaultdict(list)
            for record in batch:
                by_account[record.account_id].append(record)
            written = 0
            published: list[tuple[uuid.UUID, list[dict[str, Any]], list[int]]] = []
            for account_id, records in by_account.items():
                account = self._accounts.get(account_id)
                if account is None:
                    continue  # the account was deleted while its lines waited
                with switch(account), transaction.atomic():
                    payloads, message_ids = self._write_account(account_id, records)
                    self._save_journal_positions(records)
                written += len(message_ids)
                published.append((account_id, payloads, message_ids))
        except (OperationalError, InterfaceError):
            self._reset_connection()
            raise
        except DatabaseError:
            # A bad record must not block every line behind it: write one at a time, skip it.
            logger.exception("batch failed; retrying its records one by one")
            self._reset_connection()
            return self._write_one_by_one(batch)
        for account_id, payloads, message_ids in published:
            self._after_commit(account_id, payloads, message_ids)
        return written

    def _write_one_by_one(self, batch: list[Record]) -> int:
        written = 0
        # Servers deleted in the web while their lines waited: the rest of their records are
        # dropped without a try. Two failing transactions each, with a traceback, kept this
        # thread (and so every config change the gateway reads through it) busy for seconds.
        gone: set[tuple[uuid.UUID, int]] = set()
        for record in batch:
            account = self._accounts.get(record.account_id)
            if account is None or (record.account_id, record.server_id) in gone:
                continue
            payloads: list[dict[str, Any]] = []
            ids: list[int] = []
            for attempt in (1, 2):
                try:
                    with switch(account), transaction.atomic():
                        payloads, ids = self._write_account(record.account_id, [record])
                        self._save_journal_positions([record])
                    break
                except (OperationalError, InterfaceError):
                    raise
                except DatabaseError:
                    # The usual cause is a channel deleted in the web since we cached its id:
                    # forget the cache and try once more before giving the record up.
                    self._channels.clear()
                    if attempt == 2:
                        if not self._server_exists(account, record.server_id):
                            logger.info("server %s deleted: dropping its waiting records",
                                        record.server_id)  # fmt: skip
                            gone.add((record.account_id, record.server_id))
                        else:
                            logger.exception("dropping a record the database refuses: %r", record)
            written += len(ids)
            self._after_commit(record.account_id, payloads, ids)
        return written

    @staticmethod
    def _server_exists(account: Account, server_id: int) -> bool:
        with switch(account):
            return Server.objects.filter(pk=server_id).exists()

    def _reset_connection(self) -> None:
        self._channels.clear()
        try:
            django_connection.close()
        except Exception:
            django_connection.connection = None

    def _channel_id(self, account_id: uuid.UUID, server_id: int, name: str, kind: str) -> int:
        key = (account_id, server_id, name.lower())
        channel_id = self._channels.get(key)
        if channel_id is None:
            found = (
                Channel.objects.annotate(lname=Lower("name"))
                .filter(server_id=server_id, lname=name.lower())
                .values_list("id", flat=True)
                .first()
            )
            if found is None:
                if kind != Channel.Kind.SERVER and (
                    Channel.objects.filter(server_id=server_id)
                    .exclude(kind=Channel.Kind.SERVER)
                    .count()
                    >= settings.LIMIT_CHANNELS_PER_SERVER
                ):
                    raise ChannelRefused(name)
                found = Channel.objects.create(
                    server_id=server_id, name=name[:50], kind=kind, autojoin=False
                ).pk
            channel_id = found
            self._channels[key] = channel_id
        return channel_id

    def forget_channels(self, account_id: uuid.UUID) -> None:
        for key in [k for k in self._channels if k[0] == account_id]:
            del self._channels[key]

    def _write_account(
        self, account_id: uuid.UUID, records: list[Record]
    ) -> tuple[list[dict[str, Any]], list[int]]:
        payloads: list[dict[str, Any]] = []
        lines: list[tuple[Line, Message]] = []
        changed_channels: dict[int, int] = {}  # channel id -> server id
        for record in records:
            buffer_kind = record.buffer_kind if isinstance(record, Line) else "channel"
            try:
                channel_id = self._channel_id(
                    account_id, record.server_id, record.buffer, buffer_kind
                )
            except ChannelRefused:
                if isinstance(record, Line):
                    with self._lock:  # read by the asyncio side
                        self._refused_by[(account_id, record.server_id)] += 1
                continue
            if isinstance(record, Line):
                lines.append(
                    (
                        record,
                        Message(
                            channel_id=channel_id,
                            kind=record.kind,
                            sender=record.sender[:100],
                            text=record.text,
                            server_time=record.server_time,
                            msgid=record.msgid[:128],
                            tags=record.tags,
                        ),
                    )
                )
            elif isinstance(record, Members):
                self._apply_members(channel_id, record)
                changed_channels[channel_id] = record.server_id
            elif isinstance(record, Joined):
                Channel.objects.filter(pk=channel_id).update(autojoin=record.joined)
            else:
                Channel.objects.filter(pk=channel_id).update(topic=record.topic)
                changed_channels[channel_id] = record.server_id
        lines = self._without_replays(lines)
        if lines:
            Message.objects.bulk_create([message for _, message in lines])
        notifications = [
            Notification(
                message=message,
                kind=Notification.Kind.PRIVATE if line.private else Notification.Kind.HIGHLIGHT,
            )
            for line, message in lines
            if line.highlight or line.private
        ]
        if notifications:
            Notification.objects.bulk_create(notifications)
        for line, message in lines:
            payloads.append(
                {
                    "type": "message",
                    "id": message.pk,
                    "channel_id": message.channel_id,
                    "server_id": line.server_id,
                    "kind": message.kind,
                    "sender": message.sender,
                    "text": message.text,
                    "server_time": message.server_time.isoformat(),
                    "msgid": message.msgid,
                    "highlight": line.highlight or line.private,
                }
            )
        for notification in notifications:
            payloads.append(
                {
                    "type": "notification",
                    "id": notification.pk,
                    "message_id": notification.message_id,
                    "kind": notification.kind,
                }
            )
        for channel_id, server_id in changed_channels.items():
            payloads.append({"type": "channel", "channel_id": channel_id, "server_id": server_id})
        return payloads, [message.pk for _, message in lines]

    def _without_replays(self, lines: list[tuple[Line, Message]]) -> list[tuple[Line, Message]]:
        """Drop lines whose msgid is already stored in that channel (a bouncer's replay)."""
        msgids = {m.msgid for _, m in lines if m.msgid}
        if not msgids:
            return lines
        channel_ids = {m.channel_id for _, m in lines if m.msgid}
        # Both columns, so the partial (channel, msgid) index answers, not a table scan.
        seen = set(
            Message.objects.filter(channel_id__in=channel_ids, msgid__in=msgids).values_list(
                "channel_id", "msgid"
            )
        )
        kept = []
        for line, message in lines:
            key = (message.channel_id, message.msgid)
            if message.msgid and key in seen:
                continue
            seen.add(key)
            kept.append((line, message))
        return kept

    def _apply_members(self, channel_id: int, change: Members) -> None:
        members = ChannelUser.objects.filter(channel_id=channel_id)
        if change.op == "replace":
            members.delete()
            unique = {nick.lower(): (p, nick, away) for p, nick, away in change.members}
            ChannelUser.objects.bulk_create(
                [
                    ChannelUser(channel_id=channel_id, nick=nick[:30], prefixes=p[:10], away=away)
                    for p, nick, away in unique.values()
                ]
            )
        elif change.op == "clear":
            members.delete()
        elif change.op == "add":
            ChannelUser.objects.bulk_create(
                [
                    ChannelUser(
                        channel_id=channel_id,
                        nick=change.nick[:30],
                        prefixes=(change.prefixes or "")[:10],
                        away=bool(change.away),
                    )
                ],
                ignore_conflicts=True,
            )
        elif change.op == "remove":
            members.annotate(lnick=Lower("nick")).filter(lnick=change.nick.lower()).delete()
        elif change.op == "rename":
            target = members.annotate(lnick=Lower("nick"))
            target.filter(lnick=change.new_nick.lower()).exclude(nick__iexact=change.nick).delete()
            target.filter(lnick=change.nick.lower()).update(nick=change.new_nick[:30])
        elif change.op == "update":
            fields: dict[str, Any] = {}
            if change.prefixes is not None:
                fields["prefixes"] = change.prefixes[:10]
            if change.away is not None:
                fields["away"] = change.away
            if fields:
                members.annotate(lnick=Lower("nick")).filter(lnick=change.nick.lower()).update(
                    **fields
                )

    def _after_commit(
        self, account_id: uuid.UUID, payloads: list[dict[str, Any]], message_ids: list[int]
    ) -> None:
        if self._publish and payloads:
            try:
                if self._redis is None:
                    self._redis = events.redis_client()
                pipe = self._redis.pipeline(transaction=False)
                channel = events.events_channel(account_id)
                for payload in payloads:
                    pipe.publish(channel, events.encode(payload))
                pipe.execute()
            except Exception:
                # Browsers resume from the database with Last-Event-ID; a lost event costs
                # only liveness.
                logger.warning("could not publish live events", exc_info=True)
                self._redis = None
        if message_ids:
            notify_message_stored(account_id, message_ids)


def _close_connection() -> None:
    django_connection.close()


def now() -> datetime:
    return timezone.now()
