"""The gateway's write-ahead journal: what was read from IRC survives the process.

Every record the Store receives is appended here before it waits for the database, so a
gateway killed while the database is away (SIGKILL, OOM, a crash) loses nothing it had read: at
the next start the records not yet committed are replayed into the Store before any IRC
connection is opened, ahead of anything new, so each channel's lines keep their order.

Files. One directory per gateway shard (`GATEWAY_JOURNAL_DIR/shard-K-of-N`), held with an
exclusive lock, so two processes never append to one journal. Each process run is a
*generation* (a random UUID): it appends to segment files of its own, never to an older
generation's, so a torn tail left by a kill is never followed by good records. A segment is
`MAGIC + generation` then records, each `length, crc32, seq` + a marshal payload; a record whose
length runs past the end of the file or whose checksum fails ends that segment's replay (what
follows it is skipped with a warning), it never stops the start. Files are mode 0600: they hold
what is stored in history anyway (passwords to services were masked before the Store saw them,
gateway/redaction.py), but nobody else on the machine should read a channel's talk.

Cost on the hot path. `append` (the asyncio loop) encodes the record into a buffer; the buffer
is written to the file once per event-loop iteration (`call_soon`), so by the time the loop
moves on the kernel holds the line and only the machine's own crash could lose it. The loop
never fsyncs: a thread of the journal's own does, at most once per flush tick (SYNC_SECONDS)
when something was written out since its last fsync: group commit, off the batches' way.

Trimming. A segment is deleted (by the writer thread) once every record in it was committed,
dropped by the Store's memory bound, or belonged to a deleted account. The segment being
appended to is kept until it is full or the gateway stops cleanly.

Exactly once, not at least once. A kill between a batch's commit and the trim of its segment,
or a connection lost while COMMIT was in flight (the server may have committed), would replay
lines that are already stored; lines without an IRCv3 msgid cannot be told apart afterwards. A
dedupe key per line would need a unique column on every message row (indexed, on the hottest
table). Instead the batch's transaction also records, per (generation, account), the highest
journal sequence number it committed (`gateway_journal_position`, one row per account per
generation, upserted in the same transaction as the lines: it commits exactly when they do).
An account's records are written in sequence order (its queue is FIFO, and its batches are
written one at a time, always by the same writer of the Store), so "seq <= the committed
position" means "stored (or deliberately dropped)".
Replay skips those; so does a batch retried after a lost connection. The rows of a generation
are deleted once its segments are gone.
"""

import asyncio
import bisect
import fcntl
import logging
import marshal
import operator
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError
from django.db import connection as django_connection
from django_tenants.utils import get_public_schema_name

from gateway.storage import Joined, Line, Members, Record, Topic

if TYPE_CHECKING:
    from accounts.models import Account
    from gateway.storage import Store

logger = logging.getLogger(__name__)

MAGIC = b"PLVJRNL1"
SEGMENT_HEADER = len(MAGIC) + 16  # the magic, then the generation's UUID
RECORD_HEADER = struct.Struct("<IIQ")  # payload length, crc32 of the payload seeded by seq, seq
SEGMENT_BYTES = 8 * 1024 * 1024
# A member list of GATEWAY_MAX_MEMBERS_PER_CHANNEL nicks is ~0.5 MB; anything near this is a
# corrupt length field, not a record.
MAX_RECORD_BYTES = 16 * 1024 * 1024
SUFFIX = ".journal"
# A record's journal_seq in memory: the generation's index in this process (older first) in the
# high bits, its sequence number within the generation below. One int per record, ordered like
# the journal, and 0 means "not journaled".
GENERATION_SHIFT = 40
SEQ_MASK = (1 << GENERATION_SHIFT) - 1
# Replay hands the Store at most this many records beyond what it is writing: a journal left
# by a long outage must not be read into memory whole, nor pass the Store's per-account bound.
REPLAY_AHEAD = 50_000
POSITION_TABLE = "gateway_journal_position"
# At most one fsync per this many seconds (the Store's flush tick): an fsync per loop iteration
# would wake the fsync thread, and take the GIL from the loop, hundreds of times a second for
# nothing a killed process needs (the kernel has the data once written out); only the machine's
# own crash could cost these milliseconds.
SYNC_SECONDS = 0.02

_TAGS: dict[type, str] = {Line: "L", Members: "M", Topic: "T", Joined: "J"}
_TYPES = {tag: cls for cls, tag in _TAGS.items()}
# Field values in payload order, journal_seq (kept in the record header) left out. Every record
# starts with account_id; only Line has a time.
_FIELDS = {cls: tuple(f.name for f in fields(cls) if f.name != "journal_seq") for cls in _TAGS}
_GETTERS = {cls: operator.attrgetter(*names) for cls, names in _FIELDS.items()}
_TIME = _FIELDS[Line].index("server_time")


class JournalLocked(RuntimeError):
    """Another process holds this journal: two gateways of one shard are running."""


def encode(record: Record) -> bytes:
    """The record as marshal data: a tuple of plain values (str, int, bool, None, dict, list,
    tuple). marshal, because JSON cost 7 times as much per line (11.6 against 1.6 us here) on
    the asyncio loop, where every line read passes. Loading marshal data never runs code, and
    only this process's user can write the journal; a record that decodes to anything but a
    known record is skipped."""
    cls = type(record)
    values = list(_GETTERS[cls](record))
    values[0] = values[0].bytes  # account_id
    if cls is Line:
        values[_TIME] = values[_TIME].timestamp()  # exact to the microsecond
    return marshal.dumps((_TAGS[cls], *values))


def decode(payload: bytes) -> Record:
    values = marshal.loads(payload)  # noqa: S302 (see encode: our own files, checksummed)
    if not isinstance(values, tuple) or not values or values[0] not in _TYPES:
        raise ValueError("not a journal record")
    cls = _TYPES[values[0]]
    args = list(values[1:])
    args[0] = uuid.UUID(bytes=args[0])
    if cls is Line:
        args[_TIME] = datetime.fromtimestamp(args[_TIME], UTC)
    record: Record = cls(*args)
    return record


@dataclass(slots=True)
class _Segment:
    path: Path
    generation: uuid.UUID
    first: int  # journal_seq of its first record
    pending: int = 0  # records not yet committed, dropped or discarded
    fd: int | None = None  # open only while appended to (or not yet fsynced)


def _segment_name(number: int, generation: uuid.UUID, first_seq: int) -> str:
    # The generation's number orders generations (older first) whatever the clock did.
    return f"{number:010d}-{generation.hex}-{first_seq:012d}{SUFFIX}"


def _parse_name(name: str) -> tuple[int, uuid.UUID, int] | None:
    parts = name.removesuffix(SUFFIX).split("-")
    try:
        return int(parts[0]), uuid.UUID(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None


def _checksum(seq: int, payload: bytes) -> int:
    # The seq (folded to 32 bits) seeds the CRC: one call, and a damaged seq fails it too.
    return zlib.crc32(payload, (seq ^ (seq >> 32)) & 0xFFFFFFFF)


def read_segment(path: Path) -> Iterator[tuple[int, bytes]]:
    """(seq, payload) of every intact record, in order; stops at a torn or corrupt record and
    logs what it skipped."""
    data = path.read_bytes()
    if len(data) < SEGMENT_HEADER or not data.startswith(MAGIC):
        logger.warning("journal: %s has no valid header; skipped (%d bytes)", path.name, len(data))
        return
    at = SEGMENT_HEADER
    while at < len(data):
        if len(data) - at < RECORD_HEADER.size:
            break
        length, crc, seq = RECORD_HEADER.unpack_from(data, at)
        start = at + RECORD_HEADER.size
        if length > MAX_RECORD_BYTES or start + length > len(data):
            break
        payload = data[start : start + length]
        if _checksum(seq, payload) != crc:
            break
        yield seq, payload
        at = start + length
    if at < len(data):
        logger.warning("journal: %s: skipped a torn or corrupt tail of %d bytes at offset %d",
                       path.name, len(data) - at, at)  # fmt: skip


def _positions_table() -> str:
    return f'"{get_public_schema_name()}".{POSITION_TABLE}'


class Journal:
    """One shard's journal. `append`, `write_out` and `done` run on the asyncio loop; `sync` on
    the journal's fsync thread; `before_batch`, `save_positions`, `uncommitted`, `recover` and
    `close` on the Store's writer thread (`close` once the loop appends no more)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalLocked(
                f"another gateway process holds the journal in {self.directory}; each shard "
                "runs in one process (--shard K/N)"
            ) from None
        # Older generations, left by a run that did not stop cleanly: read by recover().
        found: dict[tuple[int, uuid.UUID], list[tuple[int, Path]]] = {}
        for path in self.directory.glob(f"*{SUFFIX}"):
            parsed = _parse_name(path.name)
            if parsed is None:
                logger.warning("journal: ignoring %s (not a segment name)", path.name)
                continue
            number, generation, first_seq = parsed
            found.setdefault((number, generation), []).append((first_seq, path))
        self._old = sorted(found.items())
        self._generations: list[uuid.UUID] = [g for (_, g), _ in self._old]
        self.generation = uuid.uuid4()
        self._generations.append(self.generation)
        self._index = len(self._generations)  # of the current generation (1-based)
        self._number = (self._old[-1][0][0] + 1) if self._old else 1
        self._segments: list[_Segment] = []  # ordered by first
        self._starts: list[int] = []
        self._next = (self._index << GENERATION_SHIFT) | 1
        self._active: _Segment | None = None
        self._active_bytes = 0
        self._buffer = bytearray()
        self._write_scheduled = False
        # Handed from the loop to the fsync thread (files) and to the writer thread (rows).
        self._handover = threading.Lock()
        self._unsynced: list[_Segment] = []  # retired while their data may not be fsynced
        self._trash: list[_Segment] = []
        self._finished: list[uuid.UUID] = []  # old generations whose segments are all gone
        self._dir_dirty = False
        self._closed = False
        self._open_segment()
        # fsync in a thread of its own, as soon as there is something to fsync: the disk's
        # latency then delays neither the asyncio loop nor the batches (a line the database
        # committed needs no fsync), and appends made during one fsync share the next.
        self._wake = threading.Event()
        self._syncer = threading.Thread(target=self._sync_forever, name="gateway-journal",
                                        daemon=True)  # fmt: skip
        self._syncer.start()

    # -- the asyncio loop --------------------------------------------------------------------

    def append(self, record: Record) -> None:
        payload = encode(record)
        seq = self._next
        self._next += 1
        record.journal_seq = seq
        disk_seq = seq & SEQ_MASK
        self._buffer += RECORD_HEADER.pack(len(payload), _checksum(disk_seq, payload), disk_seq)
        self._buffer += payload
        active = self._active
        assert active is not None
        active.pending += 1
        self._active_bytes += RECORD_HEADER.size + len(payload)
        if self._active_bytes >= SEGMENT_BYTES:
            self.write_out()
            self._retire_active()
            self._open_segment()
        elif not self._write_scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.write_out)
                self._write_scheduled = True
            except RuntimeError:  # no loop (a script or test putting records directly)
                self.write_out()

    def write_out(self) -> None:
        """Hand the buffered records to the kernel: from here a killed process loses none."""
        self._write_scheduled = False
        if not self._buffer or self._active is None or self._active.fd is None:
            return
        view = memoryview(self._buffer)
        while view:
            written = os.write(self._active.fd, view)
            view = view[written:]
        view.release()
        self._buffer.clear()
        self._wake.set()

    def done(self, records: Iterable[Record]) -> None:
        """These records are committed (or dropped, or had no account left): their segments
        may go."""
        segment: _Segment | None = None
        end = 0
        for record in records:
            seq = record.journal_seq
            if not seq:
                continue
            if segment is None or not segment.first <= seq < end:
                i = bisect.bisect_right(self._starts, seq) - 1
                if i < 0:
                    continue
                segment = self._segments[i]
                end = self._starts[i + 1] if i + 1 < len(self._starts) else self._next
            segment.pending -= 1
            if segment.pending <= 0 and segment is not self._active:
                self._forget(segment)
                segment = None

    def _forget(self, segment: _Segment) -> None:
        i = self._segments.index(segment)
        del self._segments[i]
        del self._starts[i]
        with self._handover:
            self._trash.append(segment)
            index = segment.first >> GENERATION_SHIFT
            if index != self._index and not any(
                s.first >> GENERATION_SHIFT == index for s in self._segments
            ):
                self._finished.append(self._generations[index - 1])
        self._wake.set()

    def _open_segment(self) -> None:
        first = self._next
        path = self.directory / _segment_name(self._number, self.generation, first & SEQ_MASK)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, MAGIC + self.generation.bytes)
        segment = _Segment(path, self.generation, first, fd=fd)
        self._segments.append(segment)
        self._starts.append(first)
        self._active = segment
        self._active_bytes = SEGMENT_HEADER
        with self._handover:
            self._dir_dirty = True

    def _retire_active(self) -> None:
        segment = self._active
        assert segment is not None
        self._active = None
        with self._handover:
            self._unsynced.append(segment)  # its fd is closed by sync(), after the fsync
        if segment.pending == 0:
            self._forget(segment)

    # -- the fsync thread --------------------------------------------------------------------

    def _sync_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                self.sync()
            except OSError:
                # The disk failed us: say so loudly; the lines still go to the database.
                logger.exception("journal: fsync failed")
            time.sleep(SYNC_SECONDS)

    def sync(self) -> None:
        """fsync what was written out, then delete the segments whose records are all
        committed."""
        with self._handover:
            retired, self._unsynced = self._unsynced, []
            trash, self._trash = self._trash, []
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            active = self._active
            fd = active.fd if active is not None else None
        for segment in retired:
            if segment.fd is not None:
                os.fsync(segment.fd)
                os.close(segment.fd)
                segment.fd = None
        if fd is not None:
            os.fsync(fd)
        for segment in trash:
            segment.path.unlink(missing_ok=True)
        if dir_dirty or trash:
            self._fsync_directory()

    # -- the writer thread -------------------------------------------------------------------

    def before_batch(self) -> None:
        """Delete the committed positions of older generations whose segments are all gone."""
        with self._handover:
            finished, self._finished = self._finished, []
        if finished:
            try:
                self._delete_positions(finished)
            except DatabaseError:
                # Tried before the next batch; the batch's own write will say what is wrong.
                with self._handover:
                    self._finished.extend(finished)

    @staticmethod
    def _delete_positions(generations: list[uuid.UUID]) -> None:
        with django_connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {_positions_table()} WHERE generation = ANY(%s)", [generations]
            )

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def positions(self, records: Iterable[Record]) -> dict[tuple[uuid.UUID, uuid.UUID], int]:
        """(generation, account) -> the highest journal seq among these records."""
        highest: dict[tuple[uuid.UUID, uuid.UUID], int] = {}
        for record in records:
            seq = record.journal_seq
            if seq:
                key = (self._generations[(seq >> GENERATION_SHIFT) - 1], record.account_id)
                if seq & SEQ_MASK > highest.get(key, 0):
                    highest[key] = seq & SEQ_MASK
        return highest

    def save_positions(self, records: Iterable[Record]) -> None:
        """Inside the transaction that stores these records: they count as committed exactly
        when they are."""
        highest = self.positions(records)
        if not highest:
            return
        generations, accounts = zip(*highest, strict=True)
        with django_connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {_positions_table()} (generation, account_id, seq) "
                "SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[]) "
                "ON CONFLICT (generation, account_id) DO UPDATE "
                f"SET seq = GREATEST({POSITION_TABLE}.seq, EXCLUDED.seq)",
                [list(generations), list(accounts), list(highest.values())],
            )

    def committed(self, generations: list[uuid.UUID]) -> dict[tuple[uuid.UUID, uuid.UUID], int]:
        with django_connection.cursor() as cursor:
            cursor.execute(
                f"SELECT generation, account_id, seq FROM {_positions_table()} "
                "WHERE generation = ANY(%s)",
                [generations],
            )
            return {(g, a): seq for g, a, seq in cursor.fetchall()}

    def uncommitted(self, records: list[Record]) -> list[Record]:
        """The records not yet committed: after a failed attempt whose COMMIT may have landed
        (the connection died during it, or one account's transaction of the batch committed
        before another's failed)."""
        highest = self.positions(records)
        if not highest:
            return records
        committed = self.committed(sorted({g for g, _ in highest}))
        kept = []
        for record in records:
            seq = record.journal_seq
            if seq:
                key = (self._generations[(seq >> GENERATION_SHIFT) - 1], record.account_id)
                if seq & SEQ_MASK <= committed.get(key, 0):
                    continue
            kept.append(record)
        return kept

    def recover(self) -> Iterator[list[Record]]:
        """The records older generations left uncommitted, in journal order, in chunks. Their
        segments join the journal's bookkeeping, so they are trimmed once committed."""
        if not self._old:
            return
        committed = self.committed([g for (_, g), _ in self._old])
        # Every old segment is registered before any is read: a generation counts as finished
        # (its positions deleted) only once none of its segments is left.
        segments: list[tuple[_Segment, uuid.UUID]] = []
        for index, ((_, generation), paths) in enumerate(self._old, start=1):
            for first_seq, path in sorted(paths):
                segment = _Segment(path, generation, (index << GENERATION_SHIFT) | first_seq)
                # Before the current generation's segments, which all have higher seqs.
                at = bisect.bisect_left(self._starts, segment.first)
                self._segments.insert(at, segment)
                self._starts.insert(at, segment.first)
                segments.append((segment, generation))
        chunk: list[Record] = []
        skipped = replayed = 0
        for segment, generation in segments:
            index = segment.first >> GENERATION_SHIFT
            for seq, payload in read_segment(segment.path):
                try:
                    record = decode(payload)
                except (ValueError, TypeError, EOFError, IndexError):
                    logger.warning("journal: %s: undecodable record %d skipped",
                                   segment.path.name, seq)  # fmt: skip
                    continue
                if seq <= committed.get((generation, record.account_id), 0):
                    skipped += 1
                    continue
                record.journal_seq = (index << GENERATION_SHIFT) | seq
                segment.pending += 1
                replayed += 1
                chunk.append(record)
                if len(chunk) >= REPLAY_AHEAD:
                    yield chunk
                    chunk = []
            if segment.pending == 0:
                self._forget(segment)
        self._old = []
        logger.info("journal: replaying %d records (%d already stored)", replayed, skipped)
        if chunk:
            yield chunk

    def close(self) -> None:
        """Fsync and close; when every record was committed, delete every segment and this
        journal's positions (a clean stop leaves an empty journal)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._syncer.join()
        self.write_out()
        # Counted here, not from the Store's queues: a batch cut short by the stop is in
        # neither the queues nor the database.
        everything_stored = all(s.pending <= 0 for s in self._segments)
        if everything_stored and self._active is not None:
            self._retire_active()  # deleted by the sync below
        self.sync()
        self.before_batch()
        if self._active is not None and self._active.fd is not None:
            os.close(self._active.fd)
            self._active.fd = None
        if everything_stored and not self._segments:
            try:
                self._delete_positions(self._generations)
            except DatabaseError:
                # Harmless rows: no segment of these generations is left to replay.
                logger.warning("journal: could not delete its positions", exc_info=True)
        os.close(self._lock_fd)


def open_journal(*, shard: int, shards: int) -> Journal | None:
    """The journal of this shard, or None when GATEWAY_JOURNAL is off."""
    if not settings.GATEWAY_JOURNAL:
        return None
    return Journal(Path(settings.GATEWAY_JOURNAL_DIR) / f"shard-{shard}-of-{shards}")


def _load_accounts(account_ids: set[uuid.UUID]) -> list["Account"]:
    from accounts.models import Account

    return list(Account.objects.filter(pk__in=account_ids))


async def replay(store: "Store", journal: Journal) -> int:
    """Put what older generations left uncommitted back into the Store, in order, ahead of any
    new record; returns how many. Runs at start, before any IRC connection opens."""
    chunks = journal.recover()
    count = 0
    known: set[uuid.UUID] = set()
    while True:
        chunk = await store.run_sync(next, chunks, None)
        if chunk is None:
            return count
        new = {r.account_id for r in chunk} - known
        if new:
            for account in await store.run_sync(_load_accounts, new):
                store.add_account(account)
            known |= new
        for record in chunk:
            store.enqueue(record)
        count += len(chunk)
        while store.backlog > REPLAY_AHEAD:
            await asyncio.sleep(0.01)
