"""The gateway's bulk writes: what the IRC connections saw, stored in the accounts' schemas.

`store_records` takes a batch of records of any number of accounts and writes them in ONE
transaction on the Django connection's underlying psycopg 3 connection, with schema-qualified
table names ("account_<hex>"."channels_app_message"), so no search_path is switched per account.
Messages and notifications go in with COPY (binary) under ids reserved beforehand from each
schema's sequences in one statement (`nextval` over `generate_series`): the ids are known
without reading rows back, for the live events and the message hook.

A line whose msgid is already stored in its channel (a bouncer's or a server's replay) is
dropped; the check is one statement per batch over the (channel_id, msgid) partial index of
every schema involved. Only lines that could be replays are probed: a replay carries the
server-time of the line it repeats, so a line whose server-time tag is later than every stored
line of its channel cannot be one. The caller keeps those times (`NewestTimes`) between
batches, like the channel ids; a channel not in it is read once (its newest row, through the
(channel, server_time) index) before its lines are judged. That is what live traffic is: each
line newer than the last. Chathistory backfill, bouncer playback and lines re-read after a
reconnect carry older times and are probed.

Channel ids are looked up (and channels created, up to LIMIT_CHANNELS_PER_SERVER) through a
cache the caller keeps between batches; ids of channels created in a batch enter it only after
the batch commits, so a rolled-back batch never leaves an id behind that points nowhere.

Errors come out as Django's database exceptions (OperationalError for a lost server, others as
DatabaseError), so the caller's retry logic need not know psycopg.

The caller (gateway/storage.py) keeps the queueing, the writer thread and the retries; it
publishes `Stored.events` and hands `Stored.message_ids` to the message hook after the commit.
"""

import contextlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from django.conf import settings
from django.db import connection as django_connection
from psycopg import sql
from psycopg.types.json import Jsonb

from channels_app.events import ChannelEvent, LiveEvent, MessageEvent, NotificationEvent
from channels_app.models import Channel, Notification

# (account, server, channel name lower-cased) -> Channel.id
ChannelKey = tuple[uuid.UUID, int, str]
ChannelIds = dict[ChannelKey, int]
# (schema, channel id) -> the latest server_time of any row stored in that channel (EPOCH if
# none). Only ever moved on by the writer that keeps it, after its batch commits.
NewestTimes = dict[tuple[str, int], datetime]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MESSAGE_TABLE = "channels_app_message"
NOTIFICATION_TABLE = "channels_app_notification"
CHANNEL_TABLE = "channels_app_channel"
MEMBER_TABLE = "channels_app_channeluser"
# Django names the sequence behind a bigint identity column "<table>_id_seq".
MESSAGE_SEQUENCE = f"{MESSAGE_TABLE}_id_seq"
NOTIFICATION_SEQUENCE = f"{NOTIFICATION_TABLE}_id_seq"

_MESSAGE_COLUMNS = (
    "id", "channel_id", "kind", "sender", "text", "server_time", "msgid", "tags", "created_at",
)  # fmt: skip
_MESSAGE_TYPES = (
    "int8", "int8", "varchar", "varchar", "text", "timestamptz", "varchar", "jsonb", "timestamptz",
)  # fmt: skip
_NOTIFICATION_COLUMNS = ("id", "message_id", "kind", "created_at")
# Binary COPY: measured against text in docs/benchmarks.md ("Storing IRC lines").
COPY_OPTIONS = sql.SQL("(FORMAT BINARY)")
_NOTIFICATION_TYPES = ("int8", "int8", "varchar", "timestamptz")
# Up to this many lines in a batch are written with pipelined INSERTs (one round trip for
# every account in the batch), more with one binary COPY per account (the fastest per line,
# but two round trips per account).
PIPELINED_MAX_LINES = 100


class LineRecord(Protocol):
    """Something said or done in a buffer (gateway.storage.Line)."""

    server_id: int
    buffer: str
    buffer_kind: str
    kind: str
    sender: str
    text: str
    server_time: datetime
    msgid: str
    tags: dict[str, str]
    highlight: bool
    private: bool


class MembersRecord(Protocol):
    """A change to a buffer's member list (gateway.storage.Members)."""

    server_id: int
    buffer: str
    op: str
    members: list[tuple[str, str, bool]]
    nick: str
    new_nick: str
    prefixes: str | None
    away: bool | None


class TopicRecord(Protocol):
    server_id: int
    buffer: str
    topic: str


class JoinedRecord(Protocol):
    server_id: int
    buffer: str
    joined: bool


@dataclass(slots=True)
class AccountRecords:
    """One account's part of a batch, each kind in the order it arrived."""

    account_id: uuid.UUID
    schema_name: str
    lines: list[LineRecord] = field(default_factory=list)
    members: list[MembersRecord] = field(default_factory=list)
    topics: list[TopicRecord] = field(default_factory=list)
    joins: list[JoinedRecord] = field(default_factory=list)


@dataclass(slots=True)
class Stored:
    """What a committed batch wrote, for what follows the commit."""

    # Per account, its live events in the order its browsers should see them.
    events: dict[uuid.UUID, list[LiveEvent]] = field(default_factory=dict)
    # The new Message ids of each account, ascending (the message hook's input).
    message_ids: dict[uuid.UUID, list[int]] = field(default_factory=dict)
    # Lines refused because they would open a buffer past LIMIT_CHANNELS_PER_SERVER.
    refused: dict[tuple[uuid.UUID, int], int] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        return sum(len(ids) for ids in self.message_ids.values())

    def add(self, other: "Stored") -> None:
        for account_id, payloads in other.events.items():
            self.events.setdefault(account_id, []).extend(payloads)
        for account_id, ids in other.message_ids.items():
            self.message_ids.setdefault(account_id, []).extend(ids)
        for key, count in other.refused.items():
            self.refused[key] = self.refused.get(key, 0) + count


class _ChannelRefused(Exception):
    pass


@dataclass(slots=True)
class _Account:
    """An account's records on their way in: channel ids resolved, replays dropped."""

    records: AccountRecords
    schema: str
    # (line, channel id) of the lines to store
    lines: list[tuple[LineRecord, int]] = field(default_factory=list)
    members: list[tuple[MembersRecord, int]] = field(default_factory=list)
    topics: list[tuple[TopicRecord, int]] = field(default_factory=list)
    joins: list[tuple[JoinedRecord, int]] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    notification_ids: list[int] = field(default_factory=list)


def store_records(
    *,
    batch: Sequence[AccountRecords],
    channel_ids: ChannelIds,
    newest: NewestTimes | None = None,
    in_transaction: Callable[[], None] | None = None,
) -> Stored:
    """Write the batch in one transaction; return what to publish and hook after it.
    `in_transaction` runs inside that transaction, after the writes (the gateway records its
    journal position there). `newest` is the caller's cache of each channel's latest stored
    server_time (module docstring); without one every line with a msgid is probed. Raises
    Django's OperationalError/InterfaceError when the server is unreachable (nothing written)
    and another DatabaseError when a record is refused (nothing written either)."""
    with django_connection.wrap_database_errors:
        django_connection.ensure_connection()
        pg: psycopg.Connection[Any] = django_connection.connection
        created: ChannelIds = {}
        known: NewestTimes = dict(newest) if newest is not None else {}
        with pg.transaction(), psycopg.Cursor(pg) as cursor:
            stored = _write(cursor, batch, channel_ids, created, known)
            if in_transaction is not None:
                in_transaction()
    channel_ids.update(created)
    if newest is not None:
        # Only now: a batch rolled back must leave no time behind that no row reached.
        newest.update(known)
    return stored


def _write(
    cursor: psycopg.Cursor[Any],
    batch: Sequence[AccountRecords],
    channel_ids: ChannelIds,
    created: ChannelIds,
    newest: NewestTimes,
) -> Stored:
    stored = Stored()
    accounts: list[_Account] = []
    for records in batch:
        account = _Account(records, records.schema_name)
        _resolve_channels(cursor, account, channel_ids, created, stored.refused)
        accounts.append(account)
    _drop_replays(cursor, accounts, newest)
    _reserve_ids(cursor, accounts)
    now = datetime.now(UTC)
    if sum(len(account.lines) for account in accounts) <= PIPELINED_MAX_LINES:
        # A few lines over many accounts (a steady 1,000 lines/s gives batches of ~10 lines
        # over ~10 accounts): one COPY per account was two round trips each, most of a small
        # batch's time and so most of a line's latency (docs/benchmarks.md, "IRC-to-browser
        # latency"). Pipelined INSERTs of every account cost one round trip in all.
        with cursor.connection.pipeline():
            for account in accounts:
                _copy_lines(cursor, account, now, pipelined=True)
    else:
        for account in accounts:
            _copy_lines(cursor, account, now)
    for account in accounts:
        _advance_newest(account, newest)
        _apply_changes(cursor, account)
        stored.message_ids[account.records.account_id] = account.message_ids
        payloads = live_events(
            lines=account.lines,
            message_ids=account.message_ids,
            notification_ids=account.notification_ids,
            changed_channels=_changed_channels(account),
        )
        if payloads:
            stored.events[account.records.account_id] = payloads
    return stored


# -- channels ---------------------------------------------------------------------------------


def _resolve_channels(
    cursor: psycopg.Cursor[Any],
    account: _Account,
    channel_ids: ChannelIds,
    created: ChannelIds,
    refused: dict[tuple[uuid.UUID, int], int],
) -> None:
    records = account.records
    account_id = records.account_id

    def channel_id(server_id: int, name: str, kind: str) -> int:
        key = (account_id, server_id, name.lower())
        found = channel_ids.get(key) or created.get(key)
        if found is None:
            found = created[key] = _find_or_create_channel(
                cursor, account.schema, server_id, name, kind
            )
        return found

    # By the buffer's name as received, so a flood into one channel costs one dict look-up a
    # line.
    seen: dict[tuple[int, str], int] = {}
    for line in records.lines:
        found = seen.get((line.server_id, line.buffer))
        if found is None:
            try:
                found = channel_id(line.server_id, line.buffer, line.buffer_kind)
            except _ChannelRefused:
                key = (account_id, line.server_id)
                refused[key] = refused.get(key, 0) + 1
                continue
            seen[(line.server_id, line.buffer)] = found
        account.lines.append((line, found))
    # Member lists, topics and joins of a buffer past the limit are refused silently: the
    # lines refused with them are what the server buffer reports.
    for change in records.members:
        with contextlib.suppress(_ChannelRefused):
            account.members.append((change, channel_id(change.server_id, change.buffer, "channel")))
    for topic in records.topics:
        with contextlib.suppress(_ChannelRefused):
            account.topics.append((topic, channel_id(topic.server_id, topic.buffer, "channel")))
    for joined in records.joins:
        with contextlib.suppress(_ChannelRefused):
            account.joins.append((joined, channel_id(joined.server_id, joined.buffer, "channel")))


def _find_or_create_channel(
    cursor: psycopg.Cursor[Any], schema: str, server_id: int, name: str, kind: str
) -> int:
    table = sql.Identifier(schema, CHANNEL_TABLE)
    # lower(name): the unique index (server_id, lower(name)) answers.
    row = cursor.execute(
        sql.SQL("SELECT id FROM {} WHERE server_id = %s AND lower(name) = %s").format(table),
        (server_id, name.lower()),
    ).fetchone()
    if row is not None:
        return int(row[0])
    if kind != Channel.Kind.SERVER:
        count = cursor.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE server_id = %s AND kind <> %s").format(table),
            (server_id, Channel.Kind.SERVER),
        ).fetchone()
        if count is not None and count[0] >= settings.LIMIT_CHANNELS_PER_SERVER:
            raise _ChannelRefused(name)
    row = cursor.execute(
        sql.SQL(
            "INSERT INTO {} (server_id, kind, name, key, autojoin, topic, created_at)"
            " VALUES (%s, %s, %s, '', false, '', now()) RETURNING id"
        ).format(table),
        (server_id, kind, name[:50]),
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- lines ------------------------------------------------------------------------------------


def _drop_replays(
    cursor: psycopg.Cursor[Any], accounts: list[_Account], newest: NewestTimes
) -> None:
    """Drop the lines whose (channel, msgid) is already stored, or came earlier in the batch.
    Lines newer than anything stored in their channel are not looked up (module docstring);
    the others are, in one statement for every account, each part answered by the
    (channel_id, msgid) partial index (the `msgid <> ''` makes the index's predicate provable
    whatever the list's size)."""
    _read_newest(cursor, accounts, newest)
    parts: list[sql.Composable] = []
    params: list[Any] = []
    # Lines with a msgid, per account; a batch with no duplicate key in it and none stored
    # (the usual case) keeps its lines without a second pass.
    distinct: list[bool] = []
    for index, account in enumerate(accounts):
        schema = account.schema
        keys: set[tuple[int, str]] = set()
        probe: set[tuple[int, str]] = set()
        with_msgid = 0
        for line, channel_id in account.lines:
            if not line.msgid:
                continue
            with_msgid += 1
            key = (channel_id, line.msgid[:128])
            keys.add(key)
            # Without a time tag the time is ours, not the server's: nothing to compare.
            if "time" not in line.tags or line.server_time <= newest[(schema, channel_id)]:
                probe.add(key)
        distinct.append(len(keys) == with_msgid)
        if not probe:
            continue
        channels, msgids = zip(*probe, strict=True)
        # LATERAL ... LIMIT 1: one probe of the index per key. As a plain join, a list of
        # thousands of keys got a parallel scan of the whole table and a merge join (84 ms
        # against 4 ms at 126,000 rows, docs/benchmarks.md), growing with the history.
        parts.append(
            sql.SQL(
                "SELECT {}::int, k.channel_id, k.msgid"
                " FROM unnest(%b::bigint[], %b::text[]) AS k(channel_id, msgid),"
                " LATERAL (SELECT FROM {} m WHERE m.channel_id = k.channel_id"
                " AND m.msgid = k.msgid AND m.msgid <> '' LIMIT 1) AS stored"
            ).format(sql.Literal(index), sql.Identifier(schema, MESSAGE_TABLE))
        )
        params += [list(channels), list(msgids)]
    seen: list[set[tuple[int, str]]] = [set() for _ in accounts]
    if parts:
        for index, channel_id, msgid in cursor.execute(sql.SQL(" UNION ALL ").join(parts), params):
            seen[index].add((channel_id, msgid))
    for account, stored, unique in zip(accounts, seen, distinct, strict=True):
        if unique and not stored:
            continue
        kept = []
        for line, channel_id in account.lines:
            if line.msgid:
                key = (channel_id, line.msgid[:128])
                if key in stored:
                    continue
                stored.add(key)
            kept.append((line, channel_id))
        account.lines = kept


def _read_newest(
    cursor: psycopg.Cursor[Any], accounts: list[_Account], newest: NewestTimes
) -> None:
    """Put in `newest` the latest stored server_time of each channel with a msgid line in the
    batch that it does not know yet: one statement, an index probe per channel."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for account in accounts:
        schema = account.schema
        unknown = {
            channel_id
            for line, channel_id in account.lines
            if line.msgid and (schema, channel_id) not in newest
        }
        if not unknown:
            continue
        parts.append(
            sql.SQL(
                "SELECT {}, k.id, (SELECT max(m.server_time) FROM {} m WHERE m.channel_id = k.id)"
                " FROM unnest(%b::bigint[]) AS k(id)"
            ).format(sql.Literal(schema), sql.Identifier(schema, MESSAGE_TABLE))
        )
        params.append(list(unknown))
    if parts:
        for schema, channel_id, at in cursor.execute(sql.SQL(" UNION ALL ").join(parts), params):
            newest[(schema, channel_id)] = at or EPOCH


def _advance_newest(account: _Account, newest: NewestTimes) -> None:
    """The batch's rows count as stored in `newest` (the caller keeps it only on commit)."""
    schema = account.schema
    for line, channel_id in account.lines:
        key = (schema, channel_id)
        known = newest.get(key)
        # A channel unknown here has no msgid line in the batch and was never read: it stays
        # unknown, to be read when one comes.
        if known is not None and line.server_time > known:
            newest[key] = line.server_time


def _reserve_ids(cursor: psycopg.Cursor[Any], accounts: list[_Account]) -> None:
    """Take the ids of the batch's messages and notifications from their schemas' sequences,
    in one statement."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for index, account in enumerate(accounts):
        notifications = sum(1 for line, _ in account.lines if line.highlight or line.private)
        schema = account.schema
        for slot, sequence, count in (
            (2 * index, MESSAGE_SEQUENCE, len(account.lines)),
            (2 * index + 1, NOTIFICATION_SEQUENCE, notifications),
        ):
            if count:
                parts.append(
                    sql.SQL("SELECT {}::int, nextval(%s::regclass) FROM generate_series(1, %s)")
                    .format(sql.Literal(slot))
                )  # fmt: skip
                params += [sql.Identifier(schema, sequence).as_string(cursor), count]
    if not parts:
        return
    reserved: dict[int, list[int]] = defaultdict(list)
    for slot, value in cursor.execute(sql.SQL(" UNION ALL ").join(parts), params):
        reserved[slot].append(value)
    for index, account in enumerate(accounts):
        # Ascending in arrival order: browsers resume from the last id they saw.
        account.message_ids = sorted(reserved.get(2 * index, ()))
        account.notification_ids = sorted(reserved.get(2 * index + 1, ()))


def _copy_lines(
    cursor: psycopg.Cursor[Any], account: _Account, now: datetime, *, pipelined: bool = False
) -> None:
    """The account's messages and notifications, by one binary COPY each, or as INSERTs to be
    pipelined (see _copy)."""
    if not account.lines:
        return
    _copy(
        cursor,
        sql.Identifier(account.schema, MESSAGE_TABLE),
        _MESSAGE_COLUMNS,
        _MESSAGE_TYPES,
        (
            (
                message_id,
                channel_id,
                line.kind,
                line.sender[:100],
                line.text,
                line.server_time,
                line.msgid[:128],
                line.tags,
                now,
            )
            for (line, channel_id), message_id in zip(
                account.lines, account.message_ids, strict=True
            )
        ),
        pipelined=pipelined,
    )
    if account.notification_ids:
        _copy(
            cursor,
            sql.Identifier(account.schema, NOTIFICATION_TABLE),
            _NOTIFICATION_COLUMNS,
            _NOTIFICATION_TYPES,
            (
                (notification_id, message_id, kind, now)
                for (message_id, kind), notification_id in zip(
                    _notified(account.lines, account.message_ids),
                    account.notification_ids,
                    strict=True,
                )
            ),
            pipelined=pipelined,
        )


def _insert_statement(table: sql.Identifier, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        table,
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )


def _copy(
    cursor: psycopg.Cursor[Any],
    table: sql.Identifier,
    columns: Sequence[str],
    types: Sequence[str],
    rows: Iterable[tuple[Any, ...]],
    *,
    pipelined: bool = False,
) -> None:
    if pipelined:
        # INSERTs, which a pipeline sends without waiting for their answers. A binary COPY
        # takes a dict for a jsonb column by its declared type; a parameter needs the wrapper.
        jsonb = [i for i, kind in enumerate(types) if kind == "jsonb"]
        params: list[list[Any]] = []
        for row in rows:
            values = list(row)
            for i in jsonb:
                values[i] = Jsonb(values[i])
            params.append(values)
        cursor.executemany(_insert_statement(table, columns), params)
        return
    statement = sql.SQL("COPY {} ({}) FROM STDIN {}").format(
        table, sql.SQL(", ").join(map(sql.Identifier, columns)), COPY_OPTIONS
    )
    with cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _notified(
    lines: Sequence[tuple[LineRecord, int]], message_ids: Sequence[int]
) -> Iterable[tuple[int, str]]:
    """(message id, notification kind) of each line that raises a notification, in order."""
    for (line, _), message_id in zip(lines, message_ids, strict=True):
        if line.private:
            yield message_id, Notification.Kind.PRIVATE
        elif line.highlight:
            yield message_id, Notification.Kind.HIGHLIGHT


# -- channel state ----------------------------------------------------------------------------


def _apply_changes(cursor: psycopg.Cursor[Any], account: _Account) -> None:
    schema = account.schema
    channels = sql.Identifier(schema, CHANNEL_TABLE)
    for joined, channel_id in account.joins:
        cursor.execute(
            sql.SQL("UPDATE {} SET autojoin = %s WHERE id = %s").format(channels),
            (joined.joined, channel_id),
        )
    for topic, channel_id in account.topics:
        cursor.execute(
            sql.SQL("UPDATE {} SET topic = %s WHERE id = %s").format(channels),
            (topic.topic, channel_id),
        )
    members = sql.Identifier(schema, MEMBER_TABLE)
    for change, channel_id in account.members:
        _apply_members(cursor, members, channel_id, change)


def _apply_members(
    cursor: psycopg.Cursor[Any], table: sql.Identifier, channel_id: int, change: MembersRecord
) -> None:
    # Nicks compare case-insensitively, as the unique index (channel_id, lower(nick)) does.
    where_nick = sql.SQL("channel_id = %s AND lower(nick) = lower(%s)")
    if change.op in ("replace", "clear"):
        cursor.execute(sql.SQL("DELETE FROM {} WHERE channel_id = %s").format(table), (channel_id,))
    if change.op == "replace":
        unique = {nick.lower(): (p, nick, away) for p, nick, away in change.members}
        if unique:
            prefixes, nicks, aways = zip(*unique.values(), strict=True)
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {} (channel_id, nick, prefixes, away)"
                    " SELECT %s, left(n, 30), left(p, 10), a"
                    " FROM unnest(%s::text[], %s::text[], %s::bool[]) AS u(n, p, a)"
                ).format(table),
                (channel_id, list(nicks), list(prefixes), list(aways)),
            )
    elif change.op == "add":
        cursor.execute(
            sql.SQL(
                "INSERT INTO {} (channel_id, nick, prefixes, away) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING"
            ).format(table),
            (channel_id, change.nick[:30], (change.prefixes or "")[:10], bool(change.away)),
        )
    elif change.op == "remove":
        cursor.execute(
            sql.SQL("DELETE FROM {} WHERE ").format(table) + where_nick, (channel_id, change.nick)
        )
    elif change.op == "rename":
        # Someone already listed under the new nick (in another case) makes way.
        cursor.execute(
            sql.SQL("DELETE FROM {} WHERE ").format(table)
            + where_nick
            + sql.SQL(" AND upper(nick) <> upper(%s)"),
            (channel_id, change.new_nick, change.nick),
        )
        cursor.execute(
            sql.SQL("UPDATE {} SET nick = %s WHERE ").format(table) + where_nick,
            (change.new_nick[:30], channel_id, change.nick),
        )
    elif change.op == "update":
        assignments: list[sql.Composable] = []
        values: list[Any] = []
        if change.prefixes is not None:
            assignments.append(sql.SQL("prefixes = %s"))
            values.append(change.prefixes[:10])
        if change.away is not None:
            assignments.append(sql.SQL("away = %s"))
            values.append(change.away)
        if assignments:
            cursor.execute(
                sql.SQL("UPDATE {} SET {} WHERE ").format(table, sql.SQL(", ").join(assignments))
                + where_nick,
                (*values, channel_id, change.nick),
            )


def _changed_channels(account: _Account) -> dict[int, int]:
    """Channel id -> server id of the buffers whose members or topic changed."""
    changed: dict[int, int] = {}
    for change, channel_id in account.members:
        changed[channel_id] = change.server_id
    for topic, channel_id in account.topics:
        changed[channel_id] = topic.server_id
    return changed


# -- live events ------------------------------------------------------------------------------


def live_events(
    *,
    lines: Sequence[tuple[LineRecord, int]],
    message_ids: Sequence[int],
    notification_ids: Sequence[int],
    changed_channels: dict[int, int],
) -> list[LiveEvent]:
    """The live events of one account's part of a batch: its messages, then its notifications,
    then the buffers whose members or topic changed."""
    built: list[LiveEvent] = [
        MessageEvent(
            id=message_id,
            channel_id=channel_id,
            server_id=line.server_id,
            kind=line.kind,
            sender=line.sender[:100],
            text=line.text,
            server_time=line.server_time,
            msgid=line.msgid[:128],
            highlight=line.highlight or line.private,
        )
        for (line, channel_id), message_id in zip(lines, message_ids, strict=True)
    ]
    built += [
        NotificationEvent(id=notification_id, message_id=message_id, kind=kind)
        for (message_id, kind), notification_id in zip(
            _notified(lines, message_ids), notification_ids, strict=True
        )
    ]
    built += [
        ChannelEvent(channel_id=channel_id, server_id=server_id)
        for channel_id, server_id in changed_channels.items()
    ]
    return built
