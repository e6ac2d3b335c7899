"""The live-event contract between the IRC gateway, the web (SSE) and the chat's send path.

Redis pub/sub, JSON payloads:

- `events_channel(account_id)`: what happened in one account, for its open browsers. One
  frozen dataclass per event type below (MessageEvent, ChannelEvent, ServerStateEvent,
  NotificationEvent, ReadEvent), each built by its constructor from the model or the facts at
  hand, serialised by `encode_event` alone; on the wire, JSON with "type" first:
  {"type": "message", "id": <Message.id>, "channel_id": ..., "server_id": ..., "kind": ...,
   "sender": ..., "text": ..., "server_time": ISO-8601, "msgid": ..., "highlight": bool}
  {"type": "channel", "channel_id": ..., "server_id": ...}   topic or members changed
  {"type": "server_state", "server_id": ..., "state": "connecting" | "connected" |
   "disconnected", "error": str, "next_retry": ISO-8601 | null, "nick": str}
  {"type": "notification", "id": <Notification.id>, "message_id": ..., "kind": ...}
  {"type": "preview", "message_id": ..., "channel_id": ...}   a link of that line has a preview
    now (media.services.previews): the chat fetches it
  {"type": "read", "channel_id": ..., "up_to": <Message.id>}   the web: a browser of the account
    marked the channel read up to that line (POST /chat/<id>/read/), so its other open tabs
    update their unread counts
  {"type": "send_error", "server_id": ..., "cid": str, "reason": str}   the gateway: what a
    browser sent (its `cid`, carried by SendCommand/RawCommand) was not sent, or the server
    refused it (an error numeric naming its target or command soon after); the page shows the
    reason next to the line, with a Retry
  Message events carry the Message.id as their SSE event id: ids only grow within an account
  (one gateway writes an account's lines), so a browser resumes with Last-Event-ID.
  EVENT_TYPES (what the SSE stream forwards) is derived from these classes.

- `GATEWAY_COMMANDS`: what the web asks the gateway to do; one dataclass per op
  (SendCommand, RawCommand, ServersChanged, SettingsChanged), `parse_command` the way back.
  {"op": "servers_changed", "account_id": ...}             added / edited / deleted a server
  {"op": "send", "account_id", "server_id", "target", "text", "kind": "message"|"action"|"notice",
   "cid": the browser's id for the line, or ""}
  {"op": "raw", "account_id", "server_id", "line", "cid"}   /quote and the other commands
  {"op": "settings_changed", "account_id": ...}            highlight words changed

  Commands travel sealed (publish_command / open_command): Fernet with the deployment's
  SECRET_ENCRYPTION_KEYS, i.e. encrypted and HMAC-signed, valid for COMMAND_TTL_SECONDS. Someone
  who can PUBLISH to Redis cannot forge one, and one who can SUBSCRIBE cannot read the lines
  people type (NickServ passwords, channel keys). The gateway still checks every account and
  server a command names against the database before acting on it.

- `server_state_key(account_id, server_id)`: the last server_state payload, kept in a Redis
  string so a page rendered now can show it without waiting for the next event.
"""

import dataclasses
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.db import transaction

from core import crypto

if TYPE_CHECKING:
    from channels_app.models import Message, Notification

logger = logging.getLogger(__name__)

# Redis pub/sub channels are shared by every database number of a server, so the names carry
# the deployment's prefix: two deployments (or two test runs) on one Redis never hear each other.
_PREFIX: str = settings.REDIS_CHANNEL_PREFIX
GATEWAY_COMMANDS = f"{_PREFIX}:gateway:commands"
# Long enough for a queued command and clock skew between web and gateway hosts; short enough
# that a captured command cannot be replayed later.
COMMAND_TTL_SECONDS = 120


def events_channel(account_id: uuid.UUID | str) -> str:
    return f"{_PREFIX}:events:{account_id}"


def server_state_key(account_id: uuid.UUID | str, server_id: int) -> str:
    return f"{_PREFIX}:server-state:{account_id}:{server_id}"


def server_error_key(account_id: uuid.UUID | str, server_id: int) -> str:
    """The last error of a connection ({"error": str, "at": ISO-8601}), kept after the next
    state (which clears `error`) so the server pages can still say what went wrong."""
    return f"{_PREFIX}:server-error:{account_id}:{server_id}"


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def redis_client() -> Any:
    """One Redis client per process and URL, shared by every thread: its connection pool is
    thread-safe and starts afresh in a forked child. A client per call opened a connection per
    page (a tenth of the chat sidebar's time)."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        import redis

        with _clients_lock:
            client = _clients.setdefault(url, redis.Redis.from_url(url))
    return client


# One encoder, not one per call: json.dumps with options builds a new one each time, which was
# a tenth of the gateway writer's publishing under a flood.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def encode(payload: Mapping[str, Any]) -> str:
    return _ENCODER.encode(payload)


# --- live events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A line stored in a channel (the gateway) or replayed after Last-Event-ID (the stream)."""

    type: ClassVar[Literal["message"]] = "message"
    id: int
    channel_id: int
    server_id: int
    kind: str
    sender: str
    text: str
    server_time: datetime
    msgid: str
    # A highlight or a private message: the line raised a notification.
    highlight: bool

    @classmethod
    def of(cls, message: "Message", *, server_id: int, highlight: bool) -> "MessageEvent":
        return cls(
            id=message.pk,
            channel_id=message.channel_id,
            server_id=server_id,
            kind=message.kind,
            sender=message.sender,
            text=message.text,
            server_time=message.server_time,
            msgid=message.msgid,
            highlight=highlight,
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "MessageEvent":
        """From a `values()` row with the fields' names (the stream's replay)."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """A channel's topic or members changed: pages showing it re-read them."""

    type: ClassVar[Literal["channel"]] = "channel"
    channel_id: int
    server_id: int


@dataclass(frozen=True, slots=True)
class ServerStateEvent:
    """The gateway's connection to one server changed state (also kept at server_state_key)."""

    type: ClassVar[Literal["server_state"]] = "server_state"
    server_id: int
    state: Literal["connecting", "connected", "disconnected"]
    error: str
    next_retry: datetime | None
    nick: str


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    type: ClassVar[Literal["notification"]] = "notification"
    id: int
    message_id: int
    kind: str

    @classmethod
    def of(cls, notification: "Notification") -> "NotificationEvent":
        return cls(id=notification.pk, message_id=notification.message_id, kind=notification.kind)


@dataclass(frozen=True, slots=True)
class ReadEvent:
    type: ClassVar[Literal["read"]] = "read"
    channel_id: int
    up_to: int


@dataclass(frozen=True, slots=True)
class PreviewEvent:
    """A link in the line `message_id` has a preview (fetched by a worker, or already cached)."""

    type: ClassVar[Literal["preview"]] = "preview"
    message_id: int
    channel_id: int


@dataclass(frozen=True, slots=True)
class SendErrorEvent:
    """What a browser sent (`cid`) was not sent, or the server refused it: `reason` says why."""

    type: ClassVar[Literal["send_error"]] = "send_error"
    server_id: int
    cid: str
    reason: str


LiveEvent = (
    MessageEvent
    | ChannelEvent
    | ServerStateEvent
    | NotificationEvent
    | ReadEvent
    | PreviewEvent
    | SendErrorEvent
)
LIVE_EVENT_CLASSES: tuple[type[LiveEvent], ...] = (
    MessageEvent,
    ChannelEvent,
    ServerStateEvent,
    NotificationEvent,
    ReadEvent,
    PreviewEvent,
    SendErrorEvent,
)
# What the SSE stream forwards to browsers (channels_app.sse).
EVENT_TYPES: frozenset[str] = frozenset(cls.type for cls in LIVE_EVENT_CLASSES)


# dataclasses.fields() per event was measurable under a flood (the gateway builds one per line).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in LIVE_EVENT_CLASSES
}


def _wire_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def event_payload(event: LiveEvent) -> dict[str, Any]:
    """The event as the browsers read it: "type" first, then the fields in declared order,
    times as ISO-8601."""
    payload: dict[str, Any] = {"type": event.type}
    for name in _FIELD_NAMES[type(event)]:
        payload[name] = _wire_value(getattr(event, name))
    return payload


def encode_event(event: LiveEvent) -> str:
    """The one serialisation of a live event, for Redis (pub/sub and server_state_key)."""
    return encode(event_payload(event))


# --- gateway commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Say `text` to `target` (a PRIVMSG, or a CTCP ACTION, or a NOTICE)."""

    op: ClassVar[Literal["send"]] = "send"
    account_id: str
    server_id: int
    target: str
    text: str
    kind: Literal["message", "action", "notice"] = "message"
    cid: str = ""  # the browser's id for what it sent (send_error events name it)


@dataclass(frozen=True, slots=True)
class AgentSay:
    """An agent says `text` to `target` on a server: through its own connection, or through
    the user's when the agent speaks through it (agents.Agent.presence)."""

    op: ClassVar[Literal["agent_say"]] = "agent_say"
    account_id: str
    server_id: int
    agent_id: int
    target: str
    text: str
    kind: Literal["message", "action", "notice"] = "message"


@dataclass(frozen=True, slots=True)
class RawCommand:
    """Send one IRC line as it is (/quote and the commands the input turns into lines)."""

    op: ClassVar[Literal["raw"]] = "raw"
    account_id: str
    server_id: int
    line: str
    cid: str = ""  # as SendCommand.cid


@dataclass(frozen=True, slots=True)
class ServersChanged:
    """The account's servers or channels changed: the gateway re-reads them."""

    op: ClassVar[Literal["servers_changed"]] = "servers_changed"
    account_id: str


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The account's chat settings (highlight words) changed."""

    op: ClassVar[Literal["settings_changed"]] = "settings_changed"
    account_id: str


GatewayCommand = SendCommand | AgentSay | RawCommand | ServersChanged | SettingsChanged
_SEND_KINDS = ("message", "action", "notice")
_CID = re.compile(r"[A-Za-z0-9_-]{1,40}")


def clean_cid(value: object) -> str:
    """A browser's line id as it may travel: short, letters, digits, - and _; else ""."""
    text = str(value or "")
    return text if _CID.fullmatch(text) else ""


def command_payload(command: GatewayCommand) -> dict[str, Any]:
    payload = {"op": command.op, **dataclasses.asdict(command)}
    if payload.get("cid") == "":
        del payload["cid"]  # only an input from a page carries one
    return payload


def parse_command(payload: Mapping[str, Any]) -> GatewayCommand | None:
    """The typed command in an opened payload; None when it is not a well-formed one (an unknown
    op, an account id that is not a UUID, a missing field)."""
    op = payload.get("op")
    try:
        account_id = str(uuid.UUID(str(payload.get("account_id"))))
        if op == ServersChanged.op:
            return ServersChanged(account_id=account_id)
        if op == SettingsChanged.op:
            return SettingsChanged(account_id=account_id)
        server_id = int(payload.get("server_id") or 0)
        if op in (SendCommand.op, AgentSay.op):
            kind = str(payload.get("kind") or "message")
            if kind not in _SEND_KINDS:
                return None
            if op == AgentSay.op:
                return AgentSay(
                    account_id=account_id,
                    server_id=server_id,
                    agent_id=int(payload["agent_id"]),
                    target=str(payload["target"]),
                    text=str(payload["text"]),
                    kind=kind,  # type: ignore[arg-type]  # checked against _SEND_KINDS above
                )
            return SendCommand(
                account_id=account_id,
                server_id=server_id,
                target=str(payload["target"]),
                text=str(payload["text"]),
                kind=kind,  # type: ignore[arg-type]  # checked against _SEND_KINDS above
                cid=clean_cid(payload.get("cid")),
            )
        if op == RawCommand.op:
            return RawCommand(
                account_id=account_id,
                server_id=server_id,
                line=str(payload["line"]),
                cid=clean_cid(payload.get("cid")),
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None


def seal_command(command: GatewayCommand) -> str:
    return crypto.encrypt(encode(command_payload(command)))


def open_command(data: bytes | str) -> dict[str, Any] | None:
    """The command payload sealed in `data`, or None when it was not sealed with our keys, is
    older than COMMAND_TTL_SECONDS (a replay) or is not a command (parse_command types it)."""
    token = data if isinstance(data, bytes) else data.encode()
    try:
        payload = json.loads(crypto.box().decrypt(token, ttl=COMMAND_TTL_SECONDS))
    except (InvalidToken, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def publish_command(command: GatewayCommand, *, client: Any = None) -> None:
    (client or redis_client()).publish(GATEWAY_COMMANDS, seal_command(command))


def _publish_on_commit(channel: str, data: Callable[[], str], what: str) -> None:
    """Publish `data()` after the current transaction commits. A Redis failure is logged, not
    raised: what the web saved stands."""

    def publish() -> None:
        try:
            redis_client().publish(channel, data())
        except Exception:
            logger.warning("could not publish %s", what, exc_info=True)

    transaction.on_commit(publish)


def tell_gateway_on_commit(command: ServersChanged | SettingsChanged) -> None:
    """After the current transaction commits, tell the gateway what happened to the account
    (on a Redis failure the gateway still re-reads every account periodically,
    gateway.manager.RESYNC_SECONDS). Sealed when sent, so its time-to-live starts then."""
    _publish_on_commit(GATEWAY_COMMANDS, lambda: seal_command(command), command.op)


def publish_event_on_commit(account_id: uuid.UUID | str, event: LiveEvent) -> None:
    """After the current transaction commits, tell the account's open browsers (the SSE
    stream forwards it)."""
    _publish_on_commit(
        events_channel(account_id), lambda: encode_event(event), f"a {event.type} event"
    )
