"""Reads the chat pages share: scrollback pages, the sidebar with unread counts and connection
state, member lists, and the message payloads the live stream replays.

Everything here runs inside an account's schema (a signed-in request or `tenancy.switch`)."""

import json
import logging
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import (
    Count,
    Exists,
    F,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agents.selectors import enabled_agent_nicks
from channels_app import events
from channels_app.models import Channel, ChannelUser, Message, Notification, Server

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
# Lines that count as unread: what people said, not who came and went.
UNREAD_KINDS = (Message.Kind.MESSAGE, Message.Kind.ACTION, Message.Kind.NOTICE)
NICK_COLOURS = 16
# Channel mode prefixes, highest rank first (owner, admin, op, half-op, voice).
PREFIX_RANK = "~&@%+"
# The IRCv3 client tag Palaver stores on a line an agent said through the user's connection.
AGENT_TAG = "palaver/agent"


# --- scrollback ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryPage:
    messages: list[Message]  # oldest first, as displayed
    has_older: bool


def history_page(
    channel: Channel, before_id: int | None = None, limit: int = PAGE_SIZE
) -> HistoryPage:
    """The `limit` lines before the line `before_id` (or the latest ones), oldest first.

    Keyset pagination on (server_time, id), walking the message_channel_latest index
    backwards: the cost of a page does not grow with how far back it is. `before_id` must be a
    line of this channel; anything else gives an empty page.
    """
    qs = _with_highlight(Message.objects.filter(channel=channel))
    if before_id is not None:
        anchor = (
            Message.objects.filter(channel=channel, pk=before_id)
            .values_list("server_time", flat=True)
            .first()
        )
        if anchor is None:
            return HistoryPage(messages=[], has_older=False)
        # (server_time, id) < (anchor, before_id), written so that the index range starts at
        # the anchor's time and only the lines sharing that instant are filtered by id.
        qs = qs.filter(server_time__lte=anchor).exclude(server_time=anchor, pk__gte=before_id)
    rows = list(qs.order_by("-server_time", "-id")[: limit + 1])
    has_older = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return HistoryPage(messages=rows, has_older=has_older)


def _with_highlight(qs: QuerySet[Message]) -> QuerySet[Message]:
    """`highlighted`: the line raised a notification (a highlight or a private message)."""
    return qs.annotate(highlighted=Exists(Notification.objects.filter(message=OuterRef("pk"))))


@dataclass(frozen=True)
class AroundPage:
    messages: list[Message]  # oldest first
    has_older: bool
    has_newer: bool


def around_page(channel: Channel, message_id: int, context: int = PAGE_SIZE // 2) -> AroundPage:
    """The line `message_id` with `context` lines either side: a search result or a highlight
    opened in the chat."""
    anchor = (
        Message.objects.filter(channel=channel, pk=message_id)
        .values_list("server_time", flat=True)
        .first()
    )
    if anchor is None:
        return AroundPage(messages=[], has_older=False, has_newer=False)
    before = history_page(channel, before_id=message_id, limit=context)
    newer = list(
        _with_highlight(Message.objects.filter(channel=channel, server_time__gte=anchor))
        .exclude(server_time=anchor, pk__lt=message_id)
        .order_by("server_time", "id")[: context + 2]
    )
    has_newer = len(newer) > context + 1
    return AroundPage(
        messages=before.messages + newer[: context + 1],
        has_older=before.has_older,
        has_newer=has_newer,
    )


def lines_after(channel: Channel, after_id: int, limit: int = 200) -> list[Message]:
    """Lines stored after `after_id`, in the order they were stored: what a live page appends."""
    qs = Message.objects.filter(channel=channel, pk__gt=after_id).order_by("id")
    return list(_with_highlight(qs)[:limit])


def newest_message_id(channel: Channel | None = None) -> int:
    """The newest line of a channel, or of the whole account: where a live stream starts."""
    qs = Message.objects.all() if channel is None else Message.objects.filter(channel=channel)
    newest = qs.order_by("-id").values_list("id", flat=True).first()
    return newest or 0


# --- rendering helpers shared by pages and fragments ---------------------------------------------


def nick_colour(nick: str) -> int:
    """One of NICK_COLOURS, the same for a nick on every page and after every reload."""
    return zlib.crc32(nick.lower().encode()) % NICK_COLOURS


@dataclass(frozen=True)
class Line:
    """A message as the message list shows it."""

    message: Message
    day: date
    new_day: bool  # the first line of its day in this run of lines: a separator goes above
    nick_class: str
    is_self: bool
    # The agent that said the line: the sender, when it is an agent's nick, or the agent named
    # by the line's AGENT_TAG (said through the user's own connection). Empty otherwise.
    agent_nick: str = ""

    @property
    def agent_is_sender(self) -> bool:
        """The agent speaks under its own nick (not through the user's connection)."""
        return self.agent_nick.lower() == self.message.sender.lower()

    @property
    def day_label(self) -> str:
        today = timezone.localdate()
        if self.day == today:
            return "Today"
        if (today - self.day).days == 1:
            return "Yesterday"
        return self.day.strftime("%A %-d %B %Y")

    @property
    def kick_victim(self) -> str:
        return self.message.text.split(" ", 1)[0]

    @property
    def kick_reason(self) -> str:
        parts = self.message.text.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def victim_class(self) -> str:
        return f"nick-c{nick_colour(self.kick_victim)}"

    @property
    def text_nick_class(self) -> str:
        """A nick change's new nick keeps the colour it will have from now on."""
        return f"nick-c{nick_colour(self.message.text)}"


def local_day(moment: datetime) -> date:
    return timezone.localtime(moment).date()


def lines(
    messages: Iterable[Message],
    *,
    previous_day: date | None = None,
    own_nick: str = "",
    agent_nicks: frozenset[str] | None = None,
) -> list[Line]:
    """Messages with their day separators; `previous_day` is the day of the line above them.
    `agent_nicks`: enabled_agent_nicks(), when the caller has it already."""
    out: list[Line] = []
    day_before = previous_day
    own = own_nick.lower()
    agents = enabled_agent_nicks() if agent_nicks is None else agent_nicks
    for message in messages:
        day = local_day(message.server_time)
        out.append(
            Line(
                message=message,
                day=day,
                new_day=day != day_before,
                nick_class=f"nick-c{nick_colour(message.sender)}",
                is_self=bool(own) and message.sender.lower() == own,
                agent_nick=line_agent(message, agents),
            )
        )
        day_before = day
    return out


def line_agent(message: Message, agent_nicks: frozenset[str]) -> str:
    """Which agent said `message`, if one did (see Line.agent_nick)."""
    tags = message.tags if isinstance(message.tags, dict) else {}
    tagged = tags.get(AGENT_TAG)
    if isinstance(tagged, str) and tagged:
        return tagged
    if message.kind in UNREAD_KINDS and message.sender.lower() in agent_nicks:
        return message.sender
    return ""


def day_of(channel: Channel, message_id: int) -> date | None:
    moment = (
        Message.objects.filter(channel=channel, pk=message_id)
        .values_list("server_time", flat=True)
        .first()
    )
    return local_day(moment) if moment else None


# --- members ----------------------------------------------------------------------------------


def prefix_rank(prefixes: str) -> int:
    ranks = [PREFIX_RANK.index(p) for p in prefixes if p in PREFIX_RANK]
    return min(ranks) if ranks else len(PREFIX_RANK)


@dataclass(frozen=True)
class Member:
    nick: str
    prefix: str  # the highest one, as clients show it
    away: bool
    nick_class: str
    is_agent: bool = False  # the nick is one of the account's enabled agents


def members(channel: Channel, *, agent_nicks: frozenset[str] | None = None) -> list[Member]:
    """Who is in the channel, ops first, then voiced, then everyone else; by name within.
    `agent_nicks`: enabled_agent_nicks(), when the caller has it already."""
    rows: Sequence[ChannelUser] = list(ChannelUser.objects.filter(channel=channel))
    ordered = sorted(rows, key=lambda m: (prefix_rank(m.prefixes), m.nick.lower(), m.nick))
    agents = enabled_agent_nicks() if agent_nicks is None else agent_nicks
    out = []
    for row in ordered:
        rank = prefix_rank(row.prefixes)
        out.append(
            Member(
                nick=row.nick,
                prefix=PREFIX_RANK[rank] if rank < len(PREFIX_RANK) else "",
                away=row.away,
                nick_class=f"nick-c{nick_colour(row.nick)}",
                is_agent=row.nick.lower() in agents,
            )
        )
    return out


# --- sidebar ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerState:
    """The gateway's last word about a connection (events.server_state_key)."""

    state: str  # "connecting", "connected", "disconnected", "not connected", "unknown"
    error: str = ""
    next_retry: datetime | None = None
    nick: str = ""


NOT_CONNECTED = ServerState(state="not connected")


def parse_server_state(raw: bytes | str | None) -> ServerState:
    if not raw:
        return NOT_CONNECTED
    try:
        payload: dict[str, Any] = json.loads(raw)
        state = str(payload.get("state") or "")
    except (ValueError, TypeError, AttributeError):
        return ServerState(state="unknown")
    if state not in ("connecting", "connected", "disconnected"):
        return ServerState(state="unknown")
    retry = payload.get("next_retry")
    return ServerState(
        state=state,
        error=str(payload.get("error") or ""),
        next_retry=parse_datetime(retry) if isinstance(retry, str) else None,
        nick=str(payload.get("nick") or ""),
    )


def server_states(account_id: uuid.UUID, server_ids: list[int]) -> dict[int, ServerState]:
    """Every server's connection state in one Redis round trip."""
    if not server_ids:
        return {}
    keys = [events.server_state_key(account_id, pk) for pk in server_ids]
    try:
        raw = events.redis_client().mget(keys)
    except Exception:
        logger.warning("could not read server states from Redis", exc_info=True)
        return {pk: ServerState(state="unknown") for pk in server_ids}
    return {pk: parse_server_state(value) for pk, value in zip(server_ids, raw, strict=True)}


@dataclass(frozen=True, slots=True)
class BufferChannel:
    """What the sidebar shows of a channel: no model instance (500 of them cost more than
    the query)."""

    pk: int
    name: str
    kind: str
    server_id: int


@dataclass
class Buffer:
    channel: BufferChannel
    unread: int
    highlights: int

    @property
    def label(self) -> str:
        if self.channel.kind in (Channel.Kind.CHANNEL, Channel.Kind.QUERY):
            return self.channel.name
        return "Server messages"

    @property
    def unread_label(self) -> str:
        """The count as shown: counting stops at UNREAD_CAP lines."""
        return f"{UNREAD_CAP - 1}+" if self.unread >= UNREAD_CAP else str(self.unread)


@dataclass
class ServerEntry:
    server: Server
    state: ServerState
    server_buffers: list[Buffer] = field(default_factory=list)
    channels: list[Buffer] = field(default_factory=list)
    queries: list[Buffer] = field(default_factory=list)


# Unread lines are counted up to here (the sidebar shows "999+"): a buffer never read holds
# all of its lines after the marker, and counting a million of them would cost every page.
UNREAD_CAP = 1000


def _unread_counts() -> Func:
    """Lines said after the channel's read marker, up to UNREAD_CAP: one index range scan
    (message_channel_latest) per channel that stops at the cap."""
    capped = (
        Message.objects.filter(
            channel=OuterRef("pk"),
            kind__in=UNREAD_KINDS,
            pk__gt=Coalesce(OuterRef("last_read_message_id"), Value(0)),
        )
        .order_by()
        .values("pk")[:UNREAD_CAP]
    )
    return Func(ArraySubquery(capped), function="cardinality", output_field=IntegerField())


def highlight_counts() -> dict[int, int]:
    """Unread notifications per channel, counted once from the partial index of unread ones
    (not once per channel: a channel's highlights would join all of its lines)."""
    rows = (
        Notification.objects.filter(read_at__isnull=True)
        .order_by()
        .values_list("message__channel_id")
        .annotate(n=Count("pk"))
    )
    return dict(rows)


def listed_buffers() -> QuerySet[Channel]:
    """The buffers the sidebar lists: every conversation and server buffer, and the channels
    we sit in. A channel left with /part or /close (autojoin off: the gateway stores that when
    the server confirms the PART, the web when it is asked) stays on the server's page and in
    the search, not here."""
    return Channel.objects.exclude(kind=Channel.Kind.CHANNEL, autojoin=False)


def sidebar(account_id: uuid.UUID, *, open_channel_id: int | None = None) -> list[ServerEntry]:
    """Servers with their listed buffers (and the open one, even when left: it is on screen),
    each with its unread lines and highlights."""
    servers = list(Server.objects.order_by("name"))
    states = server_states(account_id, [s.pk for s in servers])
    entries = {s.pk: ServerEntry(server=s, state=states.get(s.pk, NOT_CONNECTED)) for s in servers}
    shown = Q(kind=Channel.Kind.CHANNEL, autojoin=False)
    rows = (
        Channel.objects.exclude(shown & ~Q(pk=open_channel_id) if open_channel_id else shown)
        .annotate(unread=_unread_counts())
        .order_by("name")
        .values_list("pk", "name", "kind", "server_id", "unread")
    )
    highlights = highlight_counts() if rows else {}
    for pk, name, kind, server_id, unread in rows:
        entry = entries.get(server_id)
        if entry is None:
            continue
        buffer = Buffer(
            channel=BufferChannel(pk=pk, name=name, kind=kind, server_id=server_id),
            unread=unread,
            highlights=highlights.get(pk, 0),
        )
        if kind == Channel.Kind.CHANNEL:
            entry.channels.append(buffer)
        elif kind == Channel.Kind.QUERY:
            entry.queries.append(buffer)
        else:
            entry.server_buffers.append(buffer)
    return list(entries.values())


# --- the live stream's replay -------------------------------------------------------------------


def message_payloads_after(after_id: int, limit: int) -> list[dict[str, Any]]:
    """The account's lines after `after_id` in storage order, shaped like the gateway's
    "message" events (channels_app.events)."""
    rows = (
        Message.objects.filter(pk__gt=after_id)
        .annotate(
            server_id=F("channel__server_id"),
            # As the gateway sets it: a highlight or a private message raised a notification.
            highlight=Exists(Notification.objects.filter(message=OuterRef("pk"))),
        )
        .order_by("id")
        .values(
            "id",
            "channel_id",
            "server_id",
            "kind",
            "sender",
            "text",
            "server_time",
            "msgid",
            "highlight",
        )[:limit]
    )
    return [events.event_payload(events.MessageEvent.from_row(row)) for row in rows]
