"""One Redis subscription per web process, fanned out in process to the open live streams.

Each event loop (a uvicorn worker has one) holds a `Fanout`: one Redis connection in subscribe
mode, subscribed to the channels its streams listen to (SUBSCRIBE per channel as the first
stream of an account opens, UNSUBSCRIBE when its last one ends; or, with mode="pattern", one
PSUBSCRIBE over every account's channel). Its reader task decodes each published message once
and appends it to the bounded queue of every stream of that channel.

The guarantees the streams build on:

- `subscribe()` returns only once Redis has confirmed a subscription that covers the channel
  (waiting for every SUBSCRIBE still unanswered for it, so an UNSUBSCRIBE/SUBSCRIBE pair in
  flight cannot leave a hole): whatever is published after that reaches the stream's queue.
- A queue holds at most `queue_limit` items. A stream that cannot keep up is ended
  (Ended.OVERFLOW), never given unbounded memory; it resumes from Last-Event-ID.
- When the connection is lost (Redis restarted, network), the fanout reconnects with backoff
  and subscribes again; every stream that was subscribed before the loss may have missed
  events meanwhile, so once the new subscription covers its channel it is ended (Ended.GAP)
  and its browser reconnects and replays from the database. Streams are kept open (they only
  get heartbeats) while Redis is down, because a browser reconnecting then would be refused.
"""

import asyncio
import collections
import contextlib
import enum
import logging
import math
import random
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
# Channels per SUBSCRIBE command when (re)subscribing many at once.
SUBSCRIBE_CHUNK = 1000
RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
CONFIRM_TIMEOUT_SECONDS = 10.0


class Ended(enum.Enum):
    """Why the fanout ended a stream's subscription."""

    OVERFLOW = "overflow"  # the stream fell more than queue_limit events behind
    GAP = "gap"  # the Redis subscription was lost and re-established: events may be missing
    CLOSED = "closed"  # the fanout was closed
    EXPIRED = "expired"  # ended from outside (e.g. the session check)


class Subscription(Generic[Item]):
    """One stream's end of the fanout: a bounded queue of decoded items."""

    __slots__ = ("channel", "confirmed", "ended", "epoch", "items", "limit", "reason", "waiter")

    def __init__(self, channel: bytes, limit: int) -> None:
        self.channel = channel
        self.limit = limit
        # The connection epoch whose subscription covers this stream; 0 until confirmed.
        self.epoch = 0
        # A list, not a deque: an empty deque allocates a 64-slot block, per idle stream.
        self.items: list[Item] = []
        self.ended: Ended | None = None
        self.reason: Any = None
        self.confirmed: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None

    def push(self, item: Item) -> None:
        if self.ended is not None:
            return
        if len(self.items) >= self.limit:
            self.items.clear()
            self.end(Ended.OVERFLOW)
            return
        self.items.append(item)
        self._wake()

    def end(self, why: Ended, reason: Any = None) -> None:
        if self.ended is None:
            self.ended, self.reason = why, reason
        self._wake()
        if self.confirmed is not None and not self.confirmed.done():
            self.confirmed.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float) -> list[Item]:
        """Everything queued (oldest first), waiting up to `timeout` for something; [] when
        nothing came. Check `ended` after each call."""
        if not self.items and self.ended is None and timeout > 0:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, timeout)
            except TimeoutError:
                pass
            finally:
                self.waiter = None
        items, self.items = self.items, []
        return items


class Fanout(Generic[Item]):
    def __init__(
        self,
        url: str,
        *,
        decode: Callable[[bytes], Item | None],
        queue_limit: int,
        mode: str = "channels",
        pattern: str = "",
    ) -> None:
        if mode not in ("channels", "pattern"):
            raise ValueError(f"unknown fanout mode {mode!r}")
        self.url = url
        self.decode = decode
        self.queue_limit = queue_limit
        self.mode = mode
        self.pattern = pattern.encode()
        self.streams: dict[bytes, set[Subscription[Item]]] = {}
        # SUBSCRIBE commands sent on the current connection and not yet answered, per channel.
        self._unanswered: collections.Counter[bytes] = collections.Counter()
        # Channels (or, in pattern mode, the pattern) subscribed on the current connection.
        self._subscribed: set[bytes] = set()
        self._conn: Connection | None = None
        self.epoch = 0
        self.reconnects = 0
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="live-fanout")

    # --- the streams' side ----------------------------------------------------------------

    async def subscribe(self, channel: str) -> Subscription[Item]:
        """A subscription to `channel`, returned once Redis confirmed it (TimeoutError after
        CONFIRM_TIMEOUT_SECONDS, e.g. while Redis is down)."""
        key = channel.encode()
        sub: Subscription[Item] = Subscription(key, self.queue_limit)
        subs = self.streams.setdefault(key, set())
        subs.add(sub)
        covered = self.pattern if self.mode == "pattern" else key
        if covered in self._subscribed and not self._unanswered[covered]:
            sub.epoch = self.epoch
            return sub
        sub.confirmed = asyncio.get_running_loop().create_future()
        if self.mode == "channels" and not self._unanswered[key] and self._conn is not None:
            await self._send("SUBSCRIBE", key)
        try:
            await asyncio.wait_for(asyncio.shield(sub.confirmed), CONFIRM_TIMEOUT_SECONDS)
        except BaseException:
            self.unsubscribe(sub)
            raise
        if sub.ended is not None:
            self.unsubscribe(sub)
            raise ConnectionError(f"the live subscription ended: {sub.ended.value}")
        return sub

    def unsubscribe(self, sub: Subscription[Item]) -> None:
        subs = self.streams.get(sub.channel)
        if subs is None:
            return
        subs.discard(sub)
        if subs:
            return
        del self.streams[sub.channel]
        if self.mode == "channels" and sub.channel in self._subscribed:
            self._subscribed.discard(sub.channel)
            if self._conn is not None:
                self._spawn(self._send("UNSUBSCRIBE", sub.channel))

    def subscriptions(self) -> int:
        return sum(len(s) for s in self.streams.values())

    async def close(self) -> None:
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for subs in list(self.streams.values()):
            for sub in list(subs):
                sub.end(Ended.CLOSED)

    # --- the connection -------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send(self, *args: Any) -> None:
        conn = self._conn
        if conn is None:
            return
        if args[0] in ("SUBSCRIBE", "PSUBSCRIBE"):
            for channel in args[1:]:
                self._unanswered[channel] += 1
        try:
            await conn.send_command(*args, check_health=False)
        except Exception:
            # The reader sees the connection fail too, and subscribes everything again.
            logger.debug("a live subscription command failed", exc_info=True)

    async def _connect(self) -> Connection:
        # RESP2: subscribe-mode replies come back from read_response as lists (with RESP3
        # redis-py hands them to a push handler instead).
        pool = aioredis.ConnectionPool.from_url(self.url, socket_keepalive=True, protocol=2)
        conn = pool.make_connection()
        await conn.connect()
        return conn

    async def _run(self) -> None:
        delay = RECONNECT_MIN_SECONDS
        while not self._closed:
            try:
                conn = await self._connect()
            except (OSError, aioredis.RedisError):
                logger.warning("live events: Redis unreachable, retrying in %.1f s", delay)
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 (jitter)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            delay = RECONNECT_MIN_SECONDS
            self.epoch += 1
            self._conn = conn
            self._unanswered.clear()
            self._subscribed.clear()
            try:
                if self.mode == "pattern":
                    await self._send("PSUBSCRIBE", self.pattern)
                else:
                    channels = list(self.streams)
                    for start in range(0, len(channels), SUBSCRIBE_CHUNK):
                        await self._send("SUBSCRIBE", *channels[start : start + SUBSCRIBE_CHUNK])
                await self._read(conn)
            except (OSError, aioredis.RedisError) as exc:
                logger.warning("live events: lost the Redis subscription (%s); reconnecting", exc)
                self.reconnects += 1
            except Exception:
                # Anything else (a reply we did not expect): start over rather than leave every
                # stream of the process listening to a dead task.
                logger.exception("live events: the subscription failed; reconnecting")
                self.reconnects += 1
            finally:
                self._conn = None
                self._subscribed.clear()
                self._unanswered.clear()
                await conn.disconnect(nowait=True)

    async def _read(self, conn: Connection) -> None:
        streams = self.streams
        decode = self.decode
        while True:
            # Blocks until Redis sends something (math.inf: not the socket timeout); a dead peer
            # is found by TCP keepalive, a restarted Redis by the connection closing.
            reply = await conn.read_response(timeout=math.inf, disconnect_on_error=True)
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"message":
                subs = streams.get(reply[1])
                if not subs:
                    continue
                data = reply[2]
            elif kind == b"pmessage":
                subs = streams.get(reply[2])
                if not subs:
                    continue
                data = reply[3]
            elif kind == b"subscribe" or kind == b"psubscribe":
                self._confirmed(reply[1])
                continue
            else:
                continue
            item = decode(data)
            if item is None:
                continue
            for sub in list(subs):
                sub.push(item)

    def _confirmed(self, channel: bytes) -> None:
        self._unanswered[channel] -= 1
        if self._unanswered[channel] > 0:
            return  # a later SUBSCRIBE for it is still in flight: wait for that one
        del self._unanswered[channel]
        if self.mode == "pattern":
            self._subscribed.add(channel)
            groups = list(self.streams.values())
        else:
            if channel not in self.streams:
                # Every stream of it left meanwhile.
                self._spawn(self._send("UNSUBSCRIBE", channel))
                return
            self._subscribed.add(channel)
            groups = [self.streams[channel]]
        for subs in groups:
            for sub in list(subs):
                if sub.epoch == 0:
                    sub.epoch = self.epoch
                    if sub.confirmed is not None and not sub.confirmed.done():
                        sub.confirmed.set_result(None)
                elif sub.epoch < self.epoch:
                    sub.end(Ended.GAP)
