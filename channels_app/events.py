"""The live-event contract between the IRC gateway, the web (SSE) and the chat's send path.

Redis pub/sub, JSON payloads:

- `events_channel(account_id)`: what happened in one account, for its open browsers.
  {"type": "message", "id": <Message.id>, "channel_id": ..., "server_id": ..., "kind": ...,
   "sender": ..., "text": ..., "server_time": ISO-8601, "msgid": ..., "highlight": bool}
  {"type": "channel", "channel_id": ..., "server_id": ..., "topic": ..., "members_changed": bool}
  {"type": "server_state", "server_id": ..., "state": "connecting" | "connected" |
   "disconnected", "error": str, "next_retry": ISO-8601 | null, "nick": str}
  {"type": "notification", "id": <Notification.id>, "message_id": ..., "kind": ...}
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


def tell_gateway_on_commit(op: str, account_id: uuid.UUID | str) -> None:
    """After the current transaction commits, tell the gateway `op` happened to the account.

    A Redis failure is logged, not raised: what the web saved stands, and the gateway re-reads
    every account periodically (gateway.manager.RESYNC_SECONDS)."""
    payload = {"op": op, "account_id": str(account_id)}

    def publish() -> None:
        try:
            publish_command(payload)
        except Exception:
            logger.warning("could not tell the gateway %s", op, exc_info=True)

    transaction.on_commit(publish)
