"""GET /chat/events/: the account's live events as Server-Sent Events.

The stream subscribes to the account's Redis channel before it reads anything from the
database, then replays the lines after the browser's Last-Event-ID, then forwards what the
gateway publishes, skipping lines the replay already sent. The gateway publishes a line only
after its transaction commits, so every line is either in the replay or arrives live: no gap,
no duplicate.

The schema middleware hands the connection back to public when the view returns, before the
stream runs, so every database read in the stream enters the account itself
(`tenancy.switch`) in a sync function.
"""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseNotAllowed, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone

from accounts.models import Account, Session, User
from channels_app import events, selectors
from channels_app.models import Server
from tenancy import switch
from tenancy.context import public_schema

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
# How long the browser waits before reconnecting after the stream ends.
RETRY_MILLISECONDS = 3000
REPLAY_BATCH = 500
# Past this many missed lines a page is better reloaded than replayed line by line.
REPLAY_MAX = 5000
EVENT_TYPES = frozenset({"message", "channel", "server_state", "notification", "read"})


def format_event(event: str, payload: dict[str, Any], event_id: int | None = None) -> str:
    """One SSE event. The data is compact JSON: one line, whatever the payload holds."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {events.encode(payload)}\n\n"


def _read_after(account: Account, after_id: int, limit: int) -> list[dict[str, Any]]:
    try:
        with switch(account):
            return selectors.message_payloads_after(after_id, limit)
    finally:
        # A stream lives for hours; it must not keep a database connection meanwhile.
        close_old_connections()


def _server_ids(account: Account) -> list[int]:
    try:
        with switch(account):
            return list(Server.objects.values_list("pk", flat=True))
    finally:
        close_old_connections()


async def _current_states(client: Any, account: Account) -> list[dict[str, Any]]:
    """Each server's last known state: a state that changed between the page's render and
    this subscription would otherwise never reach the page."""
    server_ids = await sync_to_async(_server_ids)(account)
    if not server_ids:
        return []
    raw = await client.mget([events.server_state_key(account.pk, i) for i in server_ids])
    states = []
    for value in raw:
        payload = _decode({"data": value}) if value else None
        if payload is not None and payload.get("type") == "server_state":
            states.append(payload)
    return states


def _session_valid(session_key: str, user_id: uuid.UUID) -> bool:
    """The browser is still signed in: its session was not ended, has not expired, and the
    user can still sign in."""
    try:
        with public_schema():
            return Session.objects.filter(
                session_key=session_key,
                user_id=user_id,
                user__is_active=True,
                expire_date__gt=timezone.now(),
            ).exists()
    finally:
        close_old_connections()


def last_event_id(request: HttpRequest) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id")
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


async def _subscribe(pubsub: Any, channel: str) -> None:
    """Subscribe and wait for Redis to confirm: from then on nothing published is missed."""
    await pubsub.subscribe(channel)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None and message.get("type") == "subscribe":
            return
    raise TimeoutError(f"Redis did not confirm the subscription to {channel}")


def _decode(message: dict[str, Any]) -> dict[str, Any] | None:
    try:
        payload = json.loads(message["data"])
    except (ValueError, TypeError, KeyError):
        logger.warning("dropping an event that is not JSON: %r", message.get("data"))
        return None
    if not isinstance(payload, dict) or payload.get("type") not in EVENT_TYPES:
        return None
    return payload


async def event_stream(
    *,
    account: Account,
    user_id: uuid.UUID,
    session_key: str,
    after_id: int | None,
) -> AsyncIterator[str]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    try:
        await _subscribe(pubsub, events.events_channel(account.pk))
        # The first bytes go out at once, so the browser sees the stream open.
        yield f"retry: {RETRY_MILLISECONDS}\n: stream open\n\n"
        for state in await _current_states(client, account):
            yield format_event("server_state", state)

        replayed: set[int] = set()
        if after_id is not None:
            cursor = after_id
            while True:
                batch = await sync_to_async(_read_after)(account, cursor, REPLAY_BATCH)
                for row in batch:
                    replayed.add(row["id"])
                    yield format_event("message", row, row["id"])
                if len(batch) < REPLAY_BATCH:
                    break
                cursor = batch[-1]["id"]
                if len(replayed) >= REPLAY_MAX:
                    yield format_event("resync", {"reason": "too many missed lines"})
                    return

        last_sent = time.monotonic()
        while True:
            wait = max(0.0, HEARTBEAT_SECONDS - (time.monotonic() - last_sent))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is None:
                if time.monotonic() - last_sent < HEARTBEAT_SECONDS:
                    continue
                if not await sync_to_async(_session_valid)(session_key, user_id):
                    yield format_event("signed_out", {})
                    return
                yield ": heartbeat\n\n"
                last_sent = time.monotonic()
                continue
            payload = _decode(message)
            if payload is None:
                continue
            if payload["type"] == "message":
                try:
                    message_id = int(payload["id"])
                except (KeyError, TypeError, ValueError):
                    continue
                if message_id in replayed:
                    continue
                yield format_event("message", payload, message_id)
            else:
                yield format_event(payload["type"], payload)
            last_sent = time.monotonic()
    except asyncio.CancelledError:
        # The browser went away.
        raise
    except Exception:
        # Redis went away: ending the stream makes the browser reconnect with Last-Event-ID.
        logger.warning("live event stream for account %s ended", account.pk, exc_info=True)
    finally:
        try:
            await pubsub.aclose()
            await client.aclose()
        except Exception:
            logger.debug("closing the Redis subscription failed", exc_info=True)


@login_required
async def stream(request: HttpRequest) -> HttpResponseBase:
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    user = await request.auser()
    assert isinstance(user, User)  # login_required let only a signed-in user through
    account = await sync_to_async(lambda: user.account)()
    response = StreamingHttpResponse(
        event_stream(
            account=account,
            user_id=user.pk,
            session_key=request.session.session_key or "",
            after_id=last_event_id(request),
        ),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache, no-transform"
    # nginx and friends: pass each event through as it comes.
    response["X-Accel-Buffering"] = "no"
    return response
