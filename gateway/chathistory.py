"""Asking a server for what was said while we were away: IRCv3 `draft/chathistory`.

On a server that offers it (with batch, server-time and message-tags, without which replies can
be neither told from live lines nor deduplicated), every session starts by reading, for each of
the server's buffers, the newest message, notice or action stored (`resume_points`, on the
account's writer thread of the Store: it is submitted before the session's first JOIN, and that
thread runs reads and the account's batch writes in order, so no line of the new session can
be taken for the last one of the old). Once a channel is joined (and for the most recently
active queries), the gateway sends `CHATHISTORY AFTER <target> msgid=<that line's msgid>`
(`timestamp=<its time>` when it has none, or when the server no longer holds that msgid), then
pages on from the last line of each reply until a reply holds fewer lines than asked for, or
GATEWAY_CHATHISTORY_MAX_LINES lines were fetched for the buffer (then the server buffer says so:
the newest of the missed lines are the ones not fetched). One request is in flight per connection.

The lines of a `chathistory` batch are stored like live ones, with the server's msgid and
time, and go through the Store's replay check, so a line already stored (before the outage, or
relayed live since the JOIN) is stored once. They are history, not news, in two ways: CTCP
requests in them are not answered, and only PRIVMSG and NOTICE are taken from them
(`draft/event-playback` is not requested: a JOIN or MODE replayed must never change the live
member list). A missed highlight or private message still raises its notification: the outage
was ours, and the person should not lose a mention because of it. The stored line carries the
tag HISTORY_TAG, so listeners of the message hook (agents) can tell a backfilled line from one
said now and need not answer a question asked an hour ago.

The lines of a batch we asked for do not count against GATEWAY_MAX_LINES_PER_SECOND (up to
the number asked for): that limit holds back what a server pushes, and these we requested.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db.models import OuterRef, Subquery

from accounts.models import Account
from channels_app.models import Channel, Message
from gateway.protocol import IrcLine
from tenancy import switch

logger = logging.getLogger(__name__)

CAP = "draft/chathistory"
# Without these a reply cannot be told from live lines (batch), placed (server-time) or
# deduplicated (message-tags: msgid).
NEEDED_CAPS = frozenset({CAP, "batch", "server-time", "message-tags"})
# What a server plays back without draft/event-playback, and so what a resume point may be.
HISTORY_KINDS = (Message.Kind.MESSAGE, Message.Kind.NOTICE, Message.Kind.ACTION)
# Set on every line stored from a chathistory batch.
HISTORY_TAG = "palaver/backfill"
# Queries asked for at each reconnection: the most recently active ones.
MAX_QUERIES = 20
# How long a server may take to answer one request before we stop asking it this session.
REPLY_SECONDS = 30.0
# How long to wait for the end of the MOTD (ISUPPORT comes before it) before asking for queries.
WELCOME_SECONDS = 10.0
# Batches a server may hold open at once; past it new ones are not tracked (their lines are
# handled as live ones).
MAX_OPEN_BATCHES = 50
# The page size when the server sets no maximum (CHATHISTORY=0).
UNBOUNDED_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """The newest line of a buffer stored before this session: where its history resumes."""

    buffer: str
    kind: str  # Channel.Kind
    msgid: str
    server_time: datetime


def resume_points(account_id: uuid.UUID, server_id: int) -> list[ResumePoint]:
    """Each channel's, and the MAX_QUERIES most recent queries', newest message, notice or
    action. Runs on the account's writer thread (Store.run_sync)."""
    account = Account.objects.filter(pk=account_id).first()
    if account is None:
        return []
    with switch(account):
        # Through message_channel_latest (channel, -server_time, -id): a short walk per buffer.
        newest = Message.objects.filter(channel=OuterRef("pk"), kind__in=HISTORY_KINDS).order_by(
            "-server_time", "-id"
        )
        rows = (
            Channel.objects.filter(
                server_id=server_id, kind__in=(Channel.Kind.CHANNEL, Channel.Kind.QUERY)
            )
            .annotate(
                last_msgid=Subquery(newest.values("msgid")[:1]),
                last_time=Subquery(newest.values("server_time")[:1]),
            )
            .filter(last_time__isnull=False)
            .order_by("-last_time")
            .values_list("name", "kind", "last_msgid", "last_time")
        )
        points = [ResumePoint(name, kind, msgid or "", at) for name, kind, msgid, at in rows]
    queries = [p for p in points if p.kind == Channel.Kind.QUERY][:MAX_QUERIES]
    return [p for p in points if p.kind == Channel.Kind.CHANNEL] + queries


def format_timestamp(at: datetime) -> str:
    """The selector's format (server-time's): UTC, milliseconds, Z."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


@dataclass(slots=True)
class OpenBatch:
    kind: str
    target: str
    lines: int = 0
    last_msgid: str = ""
    last_time: str = ""
    budget: int = 0  # lines we asked for: read without taking read-rate credit


@dataclass(slots=True)
class Request:
    target: str
    limit: int
    done: "asyncio.Future[OpenBatch | str]"
    batch: OpenBatch | None = None


@dataclass(slots=True)
class Take:
    """What a line is to the backfill: history to store, and whether we asked for it."""

    history: bool
    requested: bool = False


NOT_HISTORY = Take(False)


@dataclass
class Backfill:
    """One session's chathistory: the batches the server has open, and the requests, one at a
    time. The connection feeds it lines; `run` asks."""

    send: Callable[..., None]
    fold: Callable[[str], str]
    server_limit: Callable[[], int]
    say: Callable[[str], None]  # a line in the server buffer
    max_lines: int
    batches: dict[str, OpenBatch] = field(default_factory=dict)
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    _joined: "asyncio.Queue[str]" = field(default_factory=asyncio.Queue)
    _waiting: Request | None = None

    # -- what the connection tells it ----------------------------------------------------------

    def joined(self, channel: str) -> None:
        self._joined.put_nowait(channel)

    def on_batch(self, line: IrcLine) -> None:
        if not line.params or len(line.params[0]) < 2:
            return
        sign, ref = line.params[0][0], line.params[0][1:]
        if sign == "-":
            batch = self.batches.pop(ref, None)
            waiting = self._waiting
            if batch is not None and waiting is not None and waiting.batch is batch:
                self._resolve(batch)
            return
        if sign != "+" or len(self.batches) >= MAX_OPEN_BATCHES:
            return
        kind = line.params[1] if len(line.params) > 1 else ""
        target = line.params[2] if len(line.params) > 2 else ""
        batch = OpenBatch(kind, target)
        waiting = self._waiting
        if (
            kind == "chathistory"
            and waiting is not None
            and waiting.batch is None
            and self.fold(target) == self.fold(waiting.target)
        ):
            waiting.batch = batch
            batch.budget = waiting.limit
        self.batches[ref] = batch

    def take(self, line: IrcLine) -> Take:
        """A line with a batch tag: history when its batch is a chathistory one."""
        batch = self.batches.get(line.tags.get("batch", ""))
        if batch is None or batch.kind != "chathistory":
            return NOT_HISTORY
        if line.command not in ("PRIVMSG", "NOTICE"):
            return Take(True)  # event-playback we did not ask for: not applied, not stored
        batch.lines += 1
        batch.last_msgid = line.tags.get("msgid", "")
        batch.last_time = line.tags.get("time", "")
        return Take(True, requested=batch.lines <= batch.budget)

    def on_fail(self, line: IrcLine) -> None:
        """FAIL CHATHISTORY <code> <subcommand> ...: the request in flight failed."""
        if line.params[:1] == ["CHATHISTORY"] and self._waiting is not None:
            self._resolve(line.params[1] if len(line.params) > 1 else "FAIL")

    def on_refused(self, code: str) -> None:
        """421 / 461 for CHATHISTORY: the server does not take the command after all."""
        if self._waiting is not None:
            self._resolve(code)

    def _resolve(self, result: OpenBatch | str) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done.done():
            waiting.done.set_result(result)

    # -- asking ----------------------------------------------------------------------------------

    async def run(self, points: Awaitable[list[ResumePoint]]) -> None:
        try:
            found = await points
        except Exception:
            # The database is away: the lines read live are held by the Store meanwhile, and
            # nothing can say where each buffer's history would resume.
            logger.warning("no chathistory this session: the resume points could not be read",
                           exc_info=True)  # fmt: skip
            return
        by_name = {self.fold(p.buffer): p for p in found}
        queries = [p.buffer for p in by_name.values() if p.kind == Channel.Kind.QUERY]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.welcomed.wait(), WELCOME_SECONDS)
        for name in queries:
            self._joined.put_nowait(name)
        while True:
            point = by_name.pop(self.fold(await self._joined.get()), None)
            if point is not None and not await self._fill(point):
                return  # the server stopped answering: not again this session

    async def _fill(self, point: ResumePoint) -> bool:
        """Ask for a buffer's missed lines, page after page. False when the server did not
        answer in time."""
        fetched = 0
        anchor = f"msgid={point.msgid}" if point.msgid else None
        anchor = anchor or f"timestamp={format_timestamp(point.server_time)}"
        while fetched < self.max_lines:
            limit = self.max_lines - fetched
            limit = min(limit, self.server_limit() or UNBOUNDED_PAGE)
            result = await self._ask(point.buffer, anchor, limit)
            if result is None:
                self.say(f"No history of {point.buffer} from the server: it did not answer.")
                return False
            if isinstance(result, str):
                if anchor.startswith("msgid=") and fetched == 0 and result != "INVALID_TARGET":
                    # The server may have expired that msgid: resume from its time instead.
                    anchor = f"timestamp={format_timestamp(point.server_time)}"
                    continue
                logger.info("chathistory of %s refused: %s", point.buffer, result)
                return True
            fetched += result.lines
            if result.lines < limit:
                return True
            following = (
                f"msgid={result.last_msgid}" if result.last_msgid
                else f"timestamp={result.last_time}" if result.last_time else ""
            )  # fmt: skip
            if not following or following == anchor:
                return True  # nothing to page on from
            anchor = following
        self.say(
            f"Fetched {fetched} missed lines of {point.buffer} (GATEWAY_CHATHISTORY_MAX_LINES); "
            "the later ones said while disconnected were not fetched."
        )
        return True

    async def _ask(self, target: str, anchor: str, limit: int) -> OpenBatch | str | None:
        done: asyncio.Future[OpenBatch | str] = asyncio.get_running_loop().create_future()
        self._waiting = Request(target, limit, done)
        self.send("CHATHISTORY", "AFTER", target, anchor, str(limit))
        try:
            return await asyncio.wait_for(done, REPLY_SECONDS)
        except TimeoutError:
            self._waiting = None
            logger.warning("no chathistory reply for %s in %.0f s", target, REPLY_SECONDS)
            return None
