"""/list: the channels a network lists (RPL_LIST 322 up to RPL_LISTEND 323), gathered by the
connection and kept in Redis for the web page (channels_app/views/servers.py channel_list).

Big networks list 50,000 channels and more. What is held is bounded: the GATEWAY_LIST_MAX_CHANNELS
biggest by users (a heap while they arrive, so memory never grows past it), topics cut to
TOPIC_CHARS. While the list arrives, what came so far is published every PUBLISH_SECONDS, so the
page shows progress; the final list replaces it at 323 (or after LIST_TIMEOUT_SECONDS when a
server never ends it). One Redis key per account and server, with a time to live: the page reads
and filters it there, the gateway holds nothing once the list is published.
"""

import heapq
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

TOPIC_CHARS = 300
PUBLISH_SECONDS = 1.0
# The gateway reads a server at GATEWAY_MAX_LINES_PER_SECOND (500): 50,000 channels take 100 s.
LIST_TIMEOUT_SECONDS = 300.0


def channel_list_key(account_id: uuid.UUID | str, server_id: int) -> str:
    return f"{settings.REDIS_CHANNEL_PREFIX}:channel-list:{account_id}:{server_id}"


@dataclass
class ChannelList:
    """One LIST reply being gathered."""

    mask: str = ""
    max_channels: int = 10_000
    started: float = field(default_factory=time.monotonic)
    last_published: float = 0.0
    seen: int = 0
    closed: bool = False  # published after LIST_TIMEOUT_SECONDS: the rest is ignored
    # (users, name, topic) as a min-heap on users: the smallest is dropped when full.
    _heap: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, name: str, users: int, topic: str) -> None:
        self.seen += 1
        entry = (users, name, topic[:TOPIC_CHARS])
        if len(self._heap) < self.max_channels:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.started > LIST_TIMEOUT_SECONDS

    def due(self) -> bool:
        """Whether what came so far should be published now (progress for the page)."""
        return time.monotonic() - self.last_published >= PUBLISH_SECONDS

    def progress(self) -> str:
        """What the page shows while the list arrives: how many so far (cheap: no channels)."""
        self.last_published = time.monotonic()
        return json.dumps({"done": False, "mask": self.mask, "seen": self.seen, "channels": []})

    def payload(self, *, done: bool = True) -> str:
        """The list, biggest channels first (run on a thread: 10,000 channels take a while)."""
        channels = sorted(self._heap, key=lambda e: (-e[0], e[1].lower()))
        return json.dumps(
            {
                "done": done,
                "mask": self.mask,
                "seen": self.seen,
                "truncated": self.seen > len(channels),
                "at": datetime.now(UTC).isoformat(),
                "channels": [[name, users, topic] for users, name, topic in channels],
            },
            separators=(",", ":"),
        )


_clients: dict[str, Any] = {}


def _redis() -> Any:
    """One client (and connection pool) per Redis URL, made on first use: the threads that
    store lists share it."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        import redis

        client = _clients.setdefault(url, redis.Redis.from_url(url))
    return client


def store(account_id: uuid.UUID, server_id: int, payload: "str | ChannelList") -> None:
    """Write the list (or its progress) for the page. Run on a thread: the event loop must
    wait neither on Redis nor on encoding a big list."""
    if isinstance(payload, ChannelList):
        payload = payload.payload()
    try:
        _redis().set(
            channel_list_key(account_id, server_id), payload, ex=settings.GATEWAY_LIST_TTL_SECONDS
        )
    except Exception:
        logger.warning("could not store the channel list of server %s", server_id, exc_info=True)


# One thread, first in first out: a list's progress, written before its end, must never land
# after it (on a pool, the 10,000-channel encode of the end can finish first, and the progress
# would then hide the list until its TTL).
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="channel-lists")


def publish(account_id: uuid.UUID, server_id: int, payload: "str | ChannelList") -> None:
    """Store the list (or its progress) for the page, in order, off the event loop."""
    _writer.submit(store, account_id, server_id, payload)
