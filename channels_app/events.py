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

- `server_state_key(account_id, server_id)`: the last server_state payload, kept in a Redis
  string so a page rendered now can show it without waiting for the next event.
"""

import json
import logging
import uuid
from typing import Any

from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

GATEWAY_COMMANDS = "palaver:gateway:commands"


def events_channel(account_id: uuid.UUID | str) -> str:
    return f"palaver:events:{account_id}"


def server_state_key(account_id: uuid.UUID | str, server_id: int) -> str:
    return f"palaver:server-state:{account_id}:{server_id}"


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), default=str)


def publish_command(payload: dict[str, Any], *, client: Any = None) -> None:
    (client or redis_client()).publish(GATEWAY_COMMANDS, encode(payload))


def _publish_on_commit(channel: str, payload: dict[str, Any], what: str) -> None:
    """Publish after the current transaction commits. A Redis failure is logged, not raised:
    what the web saved stands."""

    def publish() -> None:
        try:
            redis_client().publish(channel, encode(payload))
        except Exception:
            logger.warning("could not publish %s", what, exc_info=True)

    transaction.on_commit(publish)


def tell_gateway_on_commit(op: str, account_id: uuid.UUID | str) -> None:
    """After the current transaction commits, tell the gateway `op` happened to the account
    (on a Redis failure the gateway still re-reads every account periodically,
    gateway.manager.RESYNC_SECONDS)."""
    _publish_on_commit(GATEWAY_COMMANDS, {"op": op, "account_id": str(account_id)}, op)


def publish_event_on_commit(account_id: uuid.UUID | str, payload: dict[str, Any]) -> None:
    """After the current transaction commits, tell the account's open browsers (the SSE
    stream forwards `payload`; its "type" must be one the stream knows, sse.EVENT_TYPES)."""
    _publish_on_commit(events_channel(account_id), payload, f"a {payload.get('type')} event")
