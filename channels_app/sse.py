"""GET /chat/events/: the account's live events as Server-Sent Events.

Everything here is async and shared per web process (per event loop), so an open stream costs
a coroutine, a small queue and its socket, not a thread or a connection of its own:

- One Redis subscription per process (channels_app/live_fanout.py) fans every published event
  out to the streams of its account. An event is decoded and formatted once, however many
  streams forward it.
- The stream subscribes (the fanout confirms the subscription covers its account) before it
  reads anything from the database, then replays the lines after the browser's Last-Event-ID,
  then forwards what the gateway publishes, skipping lines the replay already sent. The gateway
  publishes a line only after its transaction commits, so every line is either in the replay or
  arrives live: no gap, no duplicate. If the shared subscription is lost (Redis restarted), the
  fanout ends the streams that might have missed something once it is subscribed again; each
  browser reconnects with Last-Event-ID and the replay fills the gap. A stream that falls more
  than STREAM_QUEUE_LIMIT events behind is ended the same way.
- Database reads (the replay, the server list, session validation) go through one batcher per
  process (`_Database`): queued calls run together on a pool thread with one connection, closed
  after each batch (a stream lives for hours and must not hold one).
- The request's own thread (asgiref gives each request one for its sync middleware) is let go
  as the stream starts: see `_release_request_thread`.

Sessions are checked for all the process's streams at once (`_Hub.check`): every
SESSION_RECHECK_SECONDS one Redis round trip reads every user's sign-in generation (MGET),
renewing the streams' slots in the same pipeline every SLOT_RENEW_SECONDS. Ending a session,
saving the user (deactivated, password changed) bumps that generation after the commit
(`announce_sign_in_change`, connected to the models' signals), and the streams of a user whose
generation moved, plus any stream opened since the last round, are validated against the
database in one query: a revoked session, a deactivated user or a changed password ends its
stream within about SESSION_RECHECK_SECONDS. Every SESSION_DB_RECHECK_SECONDS, and on every
round while Redis cannot be read, all the process's sessions are validated in one query, for
what bypasses the signals (a queryset update, expiry).

Each user may hold LIMIT_SSE_STREAMS_PER_USER streams at once: a Redis sorted set of stream
ids scored by when each lapses, renewed by the hub, so a worker that dies without releasing its
streams frees their slots within STREAM_SLOT_TTL_SECONDS.
"""

import asyncio
import json
import logging
import random
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync, sync_to_async
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
from redis.exceptions import RedisError

from accounts.models import Account, Session, User
from channels_app import events
from channels_app.events import EVENT_TYPES
from channels_app.live_fanout import Ended, Fanout, Subscription
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
# A stream's slot lapses this long after its last renewal unless renewed again.
STREAM_SLOT_TTL_SECONDS = 30
# How long the browser waits before reconnecting after the stream ends.
RETRY_MILLISECONDS = 3000
# After a lost subscription every stream of the process ends at once: their browsers come back
# spread over this much more, not all in the same instant.
RETRY_SPREAD_MILLISECONDS = 2000
REPLAY_BATCH = 500
# Past this many missed lines a page is better reloaded than replayed line by line.
REPLAY_MAX = 5000
# Events a stream may fall behind before it is ended (and resumes by Last-Event-ID).
STREAM_QUEUE_LIMIT = 1000
# Calls the database batcher runs on one thread hop and one connection.
DATABASE_BATCH = 200
# Session keys per validation query.
SESSION_QUERY_CHUNK = 2000
TOO_MANY_STREAMS = (
    "Too many live streams are open for your user ({limit}): close some tabs or devices, "
    "then reload this page."
)


def format_event(event: str, payload: dict[str, Any], event_id: int | None = None) -> str:
    """One SSE event. The data is compact JSON: one line, whatever the payload holds."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {events.encode(payload)}\n\n"


def event_fields(payload: object) -> tuple[str, int | None] | None:
    """An event's SSE name and, for a line, its id (the SSE event id): the one place that reads
    a live event's shape. None for what the stream does not forward."""
    if not isinstance(payload, dict):
        return None
    kind = payload.get("type")
    if kind not in EVENT_TYPES:
        return None
    if kind != "message":
        return kind, None
    try:
        return kind, int(payload["id"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class SseFrame:
    """A published live event formatted once, as every stream of its account sends it."""

    kind: str
    message_id: int | None
    text: str


def decode_event(data: bytes | str) -> SseFrame | None:
    try:
        payload = json.loads(data)
    except (ValueError, TypeError):
        logger.warning("dropping an event that is not JSON: %r", data)
        return None
    fields = event_fields(payload)
    if fields is None:
        return None
    kind, message_id = fields
    return SseFrame(kind, message_id, format_event(kind, payload, message_id))


# --- database reads (sync, run by the batcher) ------------------------------------------------


def _read_after(account: Account, after_id: int, limit: int) -> list[dict[str, Any]]:
    with switch(account):
        return selectors.message_payloads_after(after_id, limit)


def _server_ids(account: Account) -> list[int]:
    with switch(account):
        return list(Server.objects.values_list("pk", flat=True))


def _session_hash_matches(session_data: str, password: str) -> bool:
    """The password hash the session was signed in with is still the user's (a password change
    ends the other sessions), as Django's authentication would decide on its next request."""
    session_hash = Session.get_session_store_class()().decode(session_data).get(HASH_SESSION_KEY)
    if not isinstance(session_hash, str):
        return False
    user = User(password=password)
    return any(
        constant_time_compare(session_hash, expected)
        for expected in [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    )


def _valid_sessions(pairs: Iterable[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
    """Which (session key, user id) pairs are still signed in: the session was not ended and
    has not expired, the user can still sign in, and the password is the one it signed in
    with. One query per SESSION_QUERY_CHUNK sessions."""
    wanted = set(pairs)
    keys = sorted({key for key, _ in wanted})
    valid: set[tuple[str, uuid.UUID]] = set()
    with public_schema():
        for start in range(0, len(keys), SESSION_QUERY_CHUNK):
            rows = Session.objects.filter(
                session_key__in=keys[start : start + SESSION_QUERY_CHUNK],
                user__is_active=True,
                expire_date__gt=timezone.now(),
            ).values_list("session_key", "user_id", "session_data", "user__password")
            for key, user_id, session_data, password in rows:
                if (key, user_id) in wanted and _session_hash_matches(session_data, password):
                    valid.add((key, user_id))
    return valid


Result = TypeVar("Result")


def _run_batch(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    try:
        for function, args in calls:
            try:
                results.append((True, function(*args)))
            except Exception as exc:
                results.append((False, exc))
    finally:
        # A pool thread must not keep a connection between batches.
        close_old_connections()
    return results


class _Database:
    """Runs the process's streams' database reads in batches on pool threads: one thread hop
    and one connection for up to DATABASE_BATCH calls, however many streams wait."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self.draining = False
        self.batches = 0

    async def call(self, function: Callable[..., Result], *args: Any) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.pending.append((function, args, future))
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch = self.pending[:DATABASE_BATCH]
                del self.pending[:DATABASE_BATCH]
                calls = [(function, args) for function, args, _ in batch]
                try:
                    results = await sync_to_async(_run_batch, thread_sensitive=False)(calls)
                except Exception as exc:
                    results = [(False, exc)] * len(batch)
                self.batches += 1
                for (_, _, future), (ok, value) in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self.draining = False


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


async def _release_stream_slot(client: Any, *, user_id: uuid.UUID, stream_id: str) -> None:
    await client.zrem(_slots_key(user_id), stream_id)


def _release_request_thread() -> None:
    """Let go of the thread asgiref keeps for this request.

    Django runs each request in a ThreadSensitiveContext: its sync middleware (and every
    thread-sensitive sync_to_async call) run on a thread made for that request, kept until the
    response ends, i.e. for a stream's whole life. Nothing of the request needs it once the
    stream runs (its database reads go to the batcher's pool threads), so it is shut down now;
    were it needed again (the response's close()), asgiref makes a new one for that moment."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is None:
        return
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)


@dataclass(eq=False, slots=True)
class _Stream:
    stream_id: str
    user_id: uuid.UUID
    session_key: str
    sub: Subscription[SseFrame]
    # Not yet validated against the database by the hub (its session may have ended between
    # the request's authentication and its registration).
    fresh: bool = True


@dataclass(eq=False)
class _Hub:
    """What the process's streams share: the fanout, a Redis client, the database batcher and
    the periodic session check."""

    fanout: Fanout[SseFrame]
    redis: Any
    database: _Database = field(default_factory=_Database)
    streams: dict[str, _Stream] = field(default_factory=dict)
    generations: dict[uuid.UUID, bytes | None] = field(default_factory=dict)
    next_db_check: float = 0.0
    next_renewal: float = 0.0
    task: "asyncio.Task[None] | None" = None

    def add(self, stream: _Stream) -> None:
        self.streams[stream.stream_id] = stream
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._check_forever())

    def remove(self, stream_id: str) -> None:
        self.streams.pop(stream_id, None)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(SESSION_RECHECK_SECONDS)
            try:
                await self.check()
            except Exception:
                logger.warning("the live streams' session check failed", exc_info=True)

    async def check(self) -> None:
        """One round: every stream's session, in one Redis round trip and at most one query."""
        streams = list(self.streams.values())
        if not streams:
            self.generations.clear()
            return
        now = time.monotonic()
        users = sorted({s.user_id for s in streams})
        changed: set[uuid.UUID] | None
        try:
            generations = await self._renew_and_read_generations(streams, users, now)
        except Exception:
            # Redis cannot say who signed out: ask the database about everyone.
            logger.warning("live streams: sign-in generations unreadable", exc_info=True)
            generations, changed = {}, None
        else:
            changed = {u for u in users if self.generations.get(u, b"?") != generations[u]}
        everyone = changed is None or now >= self.next_db_check
        to_check = [s for s in streams if everyone or s.fresh or s.user_id in (changed or ())]
        if to_check:
            valid = await self.database.call(
                _valid_sessions, [(s.session_key, s.user_id) for s in to_check]
            )
            for stream in to_check:
                stream.fresh = False
                if (stream.session_key, stream.user_id) not in valid:
                    stream.sub.end(Ended.EXPIRED, "signed_out")
            if everyone:
                self.next_db_check = now + SESSION_DB_RECHECK_SECONDS
        # Only now: a generation seen to move while the database could not be asked is
        # still a change at the next round.
        self.generations = generations

    async def _renew_and_read_generations(
        self, streams: list[_Stream], users: list[uuid.UUID], now: float
    ) -> dict[uuid.UUID, bytes | None]:
        renew = now >= self.next_renewal
        async with self.redis.pipeline(transaction=False) as pipe:
            if renew:
                lapse = time.time() + STREAM_SLOT_TTL_SECONDS
                by_user: dict[uuid.UUID, dict[str, float]] = {}
                for stream in streams:
                    by_user.setdefault(stream.user_id, {})[stream.stream_id] = lapse
                for user_id, slots in by_user.items():
                    pipe.zadd(_slots_key(user_id), slots)
                    pipe.expire(_slots_key(user_id), STREAM_SLOT_TTL_SECONDS)
            pipe.mget([_sign_in_generation_key(u) for u in users])
            results = await pipe.execute()
        if renew:
            self.next_renewal = now + STREAM_SLOT_TTL_SECONDS / 3
        return dict(zip(users, results[-1], strict=True))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.fanout.close()
        await self.redis.aclose()


def _redis() -> Any:
    import redis.asyncio as aioredis

    # Bounded: a burst of streams opening waits for a connection rather than opening one each.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=8, timeout=10
    )
    return aioredis.Redis(connection_pool=pool)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub]" = weakref.WeakKeyDictionary()


def _hub() -> _Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        fanout = Fanout(
            settings.REDIS_URL,
            decode=decode_event,
            queue_limit=STREAM_QUEUE_LIMIT,
            mode=settings.LIVE_FANOUT_MODE,
            pattern=events.events_channel("*"),
        )
        hub = _hubs[loop] = _Hub(fanout=fanout, redis=_redis())
    return hub


async def close_hub() -> None:
    """Close the running loop's hub (tests: each scenario runs on a loop of its own)."""
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.close()


def last_event_id(request: HttpRequest) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id")
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


async def _current_states(hub: _Hub, account: Account) -> list[str]:
    """Each server's last known state: a state that changed between the page's render and
    this subscription would otherwise never reach the page."""
    server_ids = await hub.database.call(_server_ids, account)
    if not server_ids:
        return []
    raw = await hub.redis.mget([events.server_state_key(account.pk, i) for i in server_ids])
    states = []
    for value in raw:
        event = decode_event(value) if value else None
        if event is not None and event.kind == "server_state":
            states.append(event.text)
    return states


def _retry_spread() -> str:
    spread = random.randrange(RETRY_SPREAD_MILLISECONDS)  # noqa: S311 (a spread, not a secret)
    return f"retry: {RETRY_MILLISECONDS + spread}\n\n"


async def event_stream(
    *,
    account: Account,
    user_id: uuid.UUID,
    session_key: str,
    after_id: int | None,
    stream_id: str,
    request: HttpRequest | None = None,
) -> AsyncIterator[str]:
    """The events; the stream holds the slot `stream_id` (see take_stream_slot) and frees it
    when it ends. `request`, if given, is emptied as the stream starts (see below)."""
    # The request thread's database connection goes first, on that thread.
    await sync_to_async(close_old_connections)()
    _release_request_thread()
    if request is not None:
        # Django's handler keeps the request until the response ends, hours for a stream; by
        # now every middleware is done with it, and nothing reads it again. Its headers, session,
        # user, account and URL match were a third of an idle stream's memory.
        request.__dict__.clear()
    hub = _hub()
    sub: Subscription[SseFrame] | None = None
    try:
        sub = await hub.fanout.subscribe(events.events_channel(account.pk))
        hub.add(_Stream(stream_id, user_id, session_key, sub))
        # The first bytes go out at once, so the browser sees the stream open.
        yield f"retry: {RETRY_MILLISECONDS}\n: stream open\n\n"
        for state in await _current_states(hub, account):
            yield state

        replay_floor = newest = after_id or 0
        if after_id is not None:
            replayed = 0
            while True:
                batch = await hub.database.call(_read_after, account, newest, REPLAY_BATCH)
                if batch:
                    yield "".join(format_event("message", row, row["id"]) for row in batch)
                    newest = batch[-1]["id"]
                    replayed += len(batch)
                if len(batch) < REPLAY_BATCH:
                    break
                if replayed >= REPLAY_MAX:
                    yield format_event("resync", {"reason": "too many missed lines"})
                    return

        last_sent = time.monotonic()
        while True:
            wait = HEARTBEAT_SECONDS - (time.monotonic() - last_sent)
            out = []
            for event in await sub.get(wait):
                # The replay sent every line in (after_id, newest_replayed] that had committed
                # when it read; an account's ids grow in commit order (one writer per account,
                # channels_app.events), so no line in that range can commit later.
                if event.message_id is not None and replay_floor < event.message_id <= newest:
                    continue
                out.append(event.text)
            if out:
                yield "".join(out)
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                yield ": heartbeat\n\n"
                last_sent = time.monotonic()
            if sub.ended is None:
                continue
            if sub.ended is Ended.EXPIRED and sub.reason == "signed_out":
                yield format_event("signed_out", {})
            elif sub.ended in (Ended.GAP, Ended.OVERFLOW):
                # Events may be missing: the browser comes back with Last-Event-ID.
                yield _retry_spread()
            return
    except asyncio.CancelledError:
        # The browser went away.
        raise
    except Exception:
        # Redis or the database went away: ending the stream makes the browser reconnect with
        # Last-Event-ID.
        logger.warning("live event stream for account %s ended", account.pk, exc_info=True)
    finally:
        hub.remove(stream_id)
        if sub is not None:
            hub.fanout.unsubscribe(sub)
        try:
            await _release_stream_slot(hub.redis, user_id=user_id, stream_id=stream_id)
        except Exception:
            # The slot then lapses by itself (STREAM_SLOT_TTL_SECONDS).
            logger.debug("releasing the stream's slot failed", exc_info=True)


@login_required
async def stream(request: HttpRequest) -> HttpResponseBase:
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    user = await request.auser()
    assert isinstance(user, User)  # login_required let only a signed-in user through
    account = await sync_to_async(lambda: user.account)()
    stream_id = uuid.uuid4().hex
    try:
        taken = await take_stream_slot(_hub().redis, user_id=user.pk, stream_id=stream_id)
    except RedisError:
        # The browser retries by itself; the page says it is reconnecting.
        logger.warning("live event stream refused: Redis unreachable", exc_info=True)
        return HttpResponse(
            "Live updates are unavailable for a moment.",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
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
            request=request,
        ),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache, no-transform"
    # nginx and friends: pass each event through as it comes.
    response["X-Accel-Buffering"] = "no"
    return response
