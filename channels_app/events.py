"""The live-event contract between the IRC gateway, the web (SSE) and the chat's send path.

Redis pub/sub, JSON payloads:

- `events_channel(account_id)`: what happened in one account, for its open browsers.
  {"type": "message", "id": <Message.id>, "channel_id": ..., "server_id": ..., "kind": ...,
   "sender": ..., "text": ..., "server_time": ISO-8601, "msgid": ..., "highlight": bool}
  {"type": "channel", "channel_id": ..., "server_id": ..., "topic": ..., "members_changed": bool}
  {"type": "server_state", "server_id": ..., "state": "connecting" | "connected" |
   "disconnected", "error": str, "next_retry": ISO-8601 | null, "nick": str}
  {"type": "notification", "id": <Notification.id>, "message_id": ..., "kind": ...}
  {"type": "read", "channel_id": ..., "up_to": <Message.id>}   the web: a browser of the account
    marked the channel read up to that line (POST /chat/<id>/read/), so its other open tabs
    update their unread counts
  Message events carry the Message.id as their SSE event id: ids only grow within an account
  (one gateway writes an account's lines), so a browser resumes with Last-Event-ID.

- `GATEWAY_COMMANDS`: what the web asks the gateway to do.
  {"op": "servers_changed", "account_id": ...}             added / edited / deleted a server
  {"op": "send", "account_id", "server_id", "target", "text", "kind": "message"|"action"|"notice"}
  {"op": "raw", "account_id", "server_id", "line"}          /quote and the other commands
  {"op": "settings_changed", "account_id": ...}            highlight words changed

  Commands travel sealed (publish_command / open_command): Fernet with the deployment's
  SECRET_ENCRYPTION_KEYS, i.e. encrypted and HMAC-signed, valid for COMMAND_TTL_SECONDS. Someone
  who can PUBLISH to Redis cannot forge one, and one who can SUBSCRIBE cannot read the lines
  people type (NickServ passwords, channel keys). The gateway still checks every account and
  server a command names against the database before acting on it.

- `server_state_key(account_id, server_id)`: the last server_state payload, kept in a Redis
  string so a page rendered now can show it without waiting for the next event.
"""

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.db import transaction

from core import crypto

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


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


# One encoder, not one per call: json.dumps with options builds a new one each time, which was
# a tenth of the gateway writer's publishing under a flood.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def encode(payload: dict[str, Any]) -> str:
    return _ENCODER.encode(payload)


def seal_command(payload: dict[str, Any]) -> str:
    return crypto.encrypt(encode(payload))


def open_command(data: bytes | str) -> dict[str, Any] | None:
    """The command sealed in `data`, or None when it was not sealed with our keys, is older than
    COMMAND_TTL_SECONDS (a replay) or is not a command."""
    token = data if isinstance(data, bytes) else data.encode()
    try:
        payload = json.loads(crypto.box().decrypt(token, ttl=COMMAND_TTL_SECONDS))
    except (InvalidToken, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def publish_command(payload: dict[str, Any], *, client: Any = None) -> None:
    (client or redis_client()).publish(GATEWAY_COMMANDS, seal_command(payload))


def _publish_on_commit(channel: str, data: Callable[[], str], what: str) -> None:
    """Publish `data()` after the current transaction commits. A Redis failure is logged, not
    raised: what the web saved stands."""

    def publish() -> None:
        try:
            redis_client().publish(channel, data())
        except Exception:
            logger.warning("could not publish %s", what, exc_info=True)

    transaction.on_commit(publish)


def tell_gateway_on_commit(op: str, account_id: uuid.UUID | str) -> None:
    """After the current transaction commits, tell the gateway `op` happened to the account
    (on a Redis failure the gateway still re-reads every account periodically,
    gateway.manager.RESYNC_SECONDS). Sealed when sent, so its time-to-live starts then."""
    payload = {"op": op, "account_id": str(account_id)}
    _publish_on_commit(GATEWAY_COMMANDS, lambda: seal_command(payload), op)


def publish_event_on_commit(account_id: uuid.UUID | str, payload: dict[str, Any]) -> None:
    """After the current transaction commits, tell the account's open browsers (the SSE
    stream forwards `payload`; its "type" must be one the stream knows, sse.EVENT_TYPES)."""
    _publish_on_commit(
        events_channel(account_id), lambda: encode(payload), f"a {payload.get('type')} event"
    )
