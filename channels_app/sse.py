"""GET /chat/events/: the account's live events as Server-Sent Events.

The stream subscribes to the account's Redis channel before it reads anything from the
database, then replays the lines after the browser's Last-Event-ID, then forwards what the
gateway publishes, skipping lines the replay already sent. The gateway publishes a line only
after its transaction commits, so every line is either in the replay or arrives live: no gap,
no duplicate.

The schema middleware hands the connection back to public when the view returns, before the
stream runs, so every database read in the stream enters the account itself
(`tenancy.switch`) in a sync function.

Every SESSION_RECHECK_SECONDS, however busy the stream, it looks at its user's sign-in
generation in Redis (one GET, pipelined with the renewal of its slot, below). Ending a session,
saving the user (deactivated, password changed) bumps that generation after the commit
(`announce_sign_in_change`, connected to the models' signals), and a stream that sees it move
re-validates its session against the database: a revoked session, a deactivated user or a
changed password ends it within seconds. The database is also asked every
SESSION_DB_RECHECK_SECONDS whatever Redis says, for what bypasses the signals (a queryset
update, expiry). Asking the database at every recheck instead measured ~30 ms a check here (a
new connection each time: a stream must not hold one for hours), ~15 CPU-seconds a second for
a thousand open streams; the Redis GET rides on a round trip the slot renewal makes anyway.

Each user may hold LIMIT_SSE_STREAMS_PER_USER streams at once: a Redis sorted set of stream
ids scored by when each lapses, renewed at every recheck, so a worker that dies without
releasing its streams frees their slots within STREAM_SLOT_TTL_SECONDS.
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
from django.contrib.auth import HASH_SESSION_KEY
from django.contrib.auth.decorators import login_required
from django.db import close_old_connections, transaction
from django.db.models.signals import post_delete, post_save
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts.models import Account, Session, User
from channels_app import events
from channels_app.events import EVENT_TYPES
from channels_app.models import Server
from channels_app.selectors import chat as selectors
from tenancy import switch
from tenancy.context import public_schema

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
# A stream ends within this (plus one query) of its session ending: well inside 5 s.
SESSION_RECHECK_SECONDS = 2.0
# The database is asked this often even when Redis announced nothing.
SESSION_DB_RECHECK_SECONDS = 60.0
# A stream's slot lapses this long after its last renewal (every recheck) unless renewed again.
STREAM_SLOT_TTL_SECONDS = 30
# How long the browser waits before reconnecting after the stream ends.
RETRY_MILLISECONDS = 3000
REPLAY_BATCH = 500
# Past this many missed lines a page is better reloaded than replayed line by line.
REPLAY_MAX = 5000
TOO_MANY_STREAMS = (
    "Too many live streams are open for your user ({limit}): close some tabs or devices, "
    "then reload this page."
)


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
    """The browser is still signed in, as Django's authentication would decide on its next
    request: its session was not ended and has not expired, the user can still sign in, and
    the password hash the session was signed in with is still the user's (a password change
    ends the other sessions)."""
    try:
        with public_schema():
            row = (
                Session.objects.filter(
                    session_key=session_key,
                    user_id=user_id,
                    user__is_active=True,
                    expire_date__gt=timezone.now(),
                )
                .values_list("session_data", "user__password")
                .first()
            )
    finally:
        close_old_connections()
    if row is None:
        return False
    session_data, password = row
    session_hash = Session.get_session_store_class()().decode(session_data).get(HASH_SESSION_KEY)
    if not isinstance(session_hash, str):
        return False
    user = User(password=password)
    return any(
        constant_time_compare(session_hash, expected)
        for expected in [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    )


def _sign_in_generation_key(user_id: uuid.UUID | str) -> str:
    return f"palaver:sign-in-generation:{user_id}"


def announce_sign_in_change(user_id: uuid.UUID | str) -> None:
    """After the commit, tell the user's live streams to re-validate their sessions. A Redis
    failure is logged: the streams still ask the database every SESSION_DB_RECHECK_SECONDS."""
    key = _sign_in_generation_key(user_id)

    def bump() -> None:
        try:
            with events.redis_client().pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, 7 * 24 * 3600)
                pipe.execute()
        except Exception:
            logger.warning("could not tell the live streams of a sign-in change", exc_info=True)

    transaction.on_commit(bump)


def _session_ended(sender: type[Session], instance: Session, **kwargs: Any) -> None:
    if instance.user_id is not None:
        announce_sign_in_change(instance.user_id)


def _user_saved(sender: type[User], instance: User, created: bool, **kwargs: Any) -> None:
    if not created:
        announce_sign_in_change(instance.pk)


def connect_signals() -> None:
    """Called once, from the app's ready()."""
    post_delete.connect(_session_ended, sender=Session, dispatch_uid="sse-session-ended")
    post_save.connect(_user_saved, sender=User, dispatch_uid="sse-user-saved")


def _slots_key(user_id: uuid.UUID) -> str:
    return f"palaver:sse-streams:{user_id}"


# Drop lapsed slots, then take one if fewer than the limit are held: atomic in Redis, so two
# streams opening at once cannot both take the last slot.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


async def take_stream_slot(client: Any, *, user_id: uuid.UUID, stream_id: str) -> bool:
    now = time.time()
    taken = await client.eval(
        _TAKE_SLOT,
        1,
        _slots_key(user_id),
        now,
        now + STREAM_SLOT_TTL_SECONDS,
        stream_id,
        settings.LIMIT_SSE_STREAMS_PER_USER,
        STREAM_SLOT_TTL_SECONDS,
    )
    return bool(taken)


async def _renew_slot_and_read_generation(
    client: Any, *, user_id: uuid.UUID, stream_id: str
) -> bytes | None:
    """Renew the stream's slot and read the user's sign-in generation: one round trip."""
    key = _slots_key(user_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {stream_id: time.time() + STREAM_SLOT_TTL_SECONDS})
        pipe.expire(key, STREAM_SLOT_TTL_SECONDS)
        pipe.get(_sign_in_generation_key(user_id))
        _, _, generation = await pipe.execute()
    return generation


async def _release_stream_slot(client: Any, *, user_id: uuid.UUID, stream_id: str) -> None:
    await client.zrem(_slots_key(user_id), stream_id)


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


def _is_redis_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, redis.RedisError)


def _redis() -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(settings.REDIS_URL)


async def event_stream(
    *,
    account: Account,
    user_id: uuid.UUID,
    session_key: str,
    after_id: int | None,
    stream_id: str,
) -> AsyncIterator[str]:
    """The events; the stream holds the slot `stream_id` (see take_stream_slot) and frees it
    when it ends."""
    client = _redis()
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

        # The generation is read before the database is asked: a change committed in between
        # then shows as a moved generation at the first recheck.
        known = await _renew_slot_and_read_generation(client, user_id=user_id, stream_id=stream_id)
        next_db_check = 0.0
        last_sent = next_check = time.monotonic()
        while True:
            now = time.monotonic()
            # Checked here, not only when the stream is idle: a busy account's stream never is.
            if now >= next_check:
                generation = await _renew_slot_and_read_generation(
                    client, user_id=user_id, stream_id=stream_id
                )
                if generation != known or now >= next_db_check:
                    if not await sync_to_async(_session_valid)(session_key, user_id):
                        yield format_event("signed_out", {})
                        return
                    known, next_db_check = generation, now + SESSION_DB_RECHECK_SECONDS
                next_check = now + SESSION_RECHECK_SECONDS
            wait = max(0.0, min(HEARTBEAT_SECONDS - (now - last_sent), next_check - now))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is None:
                if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
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
            await _release_stream_slot(client, user_id=user_id, stream_id=stream_id)
            await client.aclose()
        except Exception:
            # The slot then lapses by itself (STREAM_SLOT_TTL_SECONDS).
            logger.debug("closing the Redis subscription failed", exc_info=True)


@login_required
async def stream(request: HttpRequest) -> HttpResponseBase:
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    user = await request.auser()
    assert isinstance(user, User)  # login_required let only a signed-in user through
    account = await sync_to_async(lambda: user.account)()
    stream_id = uuid.uuid4().hex
    client = _redis()
    try:
        taken = await take_stream_slot(client, user_id=user.pk, stream_id=stream_id)
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        # The browser retries by itself; the page says it is reconnecting.
        logger.warning("live event stream refused: Redis unreachable", exc_info=True)
        return HttpResponse(
            "Live updates are unavailable for a moment.",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    finally:
        await client.aclose()
    if not taken:
        # EventSource cannot read this body; chat.js fetches the URL again to show it.
        limit = settings.LIMIT_SSE_STREAMS_PER_USER
        refused = HttpResponse(
            TOO_MANY_STREAMS.format(limit=limit),
            status=429,
            content_type="text/plain; charset=utf-8",
        )
        refused["Retry-After"] = str(STREAM_SLOT_TTL_SECONDS)
        return refused
    response = StreamingHttpResponse(
        event_stream(
            account=account,
            user_id=user.pk,
            session_key=request.session.session_key or "",
            after_id=last_event_id(request),
            stream_id=stream_id,
        ),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache, no-transform"
    # nginx and friends: pass each event through as it comes.
    response["X-Accel-Buffering"] = "no"
    return response
