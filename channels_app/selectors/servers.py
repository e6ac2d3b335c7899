"""Reads for the server pages: the live connection state of each server, from what the gateway
keeps in Redis (events.server_state_key and events.server_error_key)."""

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.utils.dateparse import parse_datetime

from channels_app import events
from channels_app.selectors.chat import ServerState, parse_server_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerStatus:
    """What a server page says about a connection: its state now and the last error seen."""

    state: ServerState
    last_error: str = ""
    last_error_at: datetime | None = None

    @property
    def label(self) -> str:
        """connected, connecting, error (dropped with a reason), disconnected, not connected,
        unknown: the word shown, and the CSS class."""
        if self.state.state == "disconnected" and self.state.error:
            return "error"
        return self.state.state.replace(" ", "-")


def _parse_error(raw: bytes | str | None) -> tuple[str, datetime | None]:
    if not raw:
        return "", None
    try:
        payload = json.loads(raw)
        at = payload.get("at")
        return str(payload.get("error") or "")[:500], parse_datetime(at) if isinstance(
            at, str
        ) else None
    except (ValueError, TypeError, AttributeError):
        return "", None


def server_statuses(account_id: uuid.UUID, server_ids: list[int]) -> dict[int, ServerStatus]:
    """Every server's state and last error in one Redis round trip."""
    if not server_ids:
        return {}
    keys = [events.server_state_key(account_id, pk) for pk in server_ids]
    keys += [events.server_error_key(account_id, pk) for pk in server_ids]
    try:
        raw = events.redis_client().mget(keys)
    except Exception:
        logger.warning("could not read server states from Redis", exc_info=True)
        return {pk: ServerStatus(ServerState(state="unknown")) for pk in server_ids}
    count = len(server_ids)
    out: dict[int, ServerStatus] = {}
    for index, pk in enumerate(server_ids):
        error, at = _parse_error(raw[count + index])
        out[pk] = ServerStatus(parse_server_state(raw[index]), error, at)
    return out


# --- /list ------------------------------------------------------------------------------------

LIST_PAGE_SIZE = 100
MAX_LIST_QUERY = 100


@dataclass(frozen=True)
class ListedChannel:
    name: str
    users: int
    topic: str


@dataclass(frozen=True)
class ChannelListing:
    """What the /list page shows: the state of the list, and the page of channels matching."""

    state: str  # "none" (never asked, or expired), "receiving", "done"
    seen: int = 0  # channels the server listed (more than kept when `truncated`)
    truncated: bool = False
    at: datetime | None = None
    matching: int = 0
    channels: tuple[ListedChannel, ...] = ()


def channel_listing(
    account_id: uuid.UUID, server_id: int, *, query: str = "", offset: int = 0
) -> ChannelListing:
    """The server's channel list as the gateway left it (gateway/lists.py), filtered on the
    name or topic containing `query` (case-insensitively), LIST_PAGE_SIZE from `offset`."""
    from gateway.lists import channel_list_key

    try:
        raw = events.redis_client().get(channel_list_key(account_id, server_id))
    except Exception:
        logger.warning("could not read a channel list from Redis", exc_info=True)
        raw = None
    if not raw:
        return ChannelListing(state="none")
    try:
        payload = json.loads(raw)
        rows = payload.get("channels") or []
        at = payload.get("at")
        needle = query.strip().lower()[:MAX_LIST_QUERY]
        if needle:
            # Rows are [name, users, topic] as the gateway wrote them; one lower() per row.
            rows = [row for row in rows if needle in f"{row[0]}\n{row[2]}".lower()]
        start = max(0, offset)
        return ChannelListing(
            state="done" if payload.get("done") else "receiving",
            seen=int(payload.get("seen") or 0),
            truncated=bool(payload.get("truncated")),
            at=parse_datetime(at) if isinstance(at, str) else None,
            matching=len(rows),
            channels=tuple(
                ListedChannel(str(name), int(users), str(topic))
                for name, users, topic in rows[start : start + LIST_PAGE_SIZE]
            ),
        )
    except (ValueError, TypeError, AttributeError):
        return ChannelListing(state="none")
