"""The live stream over real HTTP (uvicorn, as in production): however busy the account, the
stream ends within 5 s of its browser being signed out, whichever way that happens."""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from accounts.models import Session, User
from accounts.services import revoke_session
from channels_app import events
from tests.factories import UserFactory
from tests.test_chat_e2e import AsgiServer, asgi_server, event_stream

__all__ = ["asgi_server"]  # the fixture, used here by name

SIGN_OUT_DEADLINE = 5.0


@pytest.fixture
def alice(clean_schemas: None) -> User:
    return cast(User, UserFactory(email="alice@example.org"))


@contextlib.contextmanager
def busy_account(user: User, every: float = 0.05) -> Iterator[None]:
    """The gateway publishing for the account without a pause: the stream is never idle."""
    stop = threading.Event()
    redis = events.redis_client()
    payload = events.encode(
        {
            "type": "channel",
            "channel_id": 1,
            "server_id": 1,
            "topic": "busy",
            "members_changed": False,
        }
    )

    def publish() -> None:
        while not stop.wait(every):
            redis.publish(events.events_channel(user.account_id), payload)

    thread = threading.Thread(target=publish, name="busy-account", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        redis.close()


def revoke(user: User) -> None:
    # The sessions page's service, for the one session the stream signed in with.
    (public_id,) = Session.objects.filter(user=user).values_list("public_id", flat=True)
    assert revoke_session(user=user, public_id=public_id)


def deactivate(user: User) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def change_password(user: User) -> None:
    # The session's auth hash no longer matches the user's.
    user.set_password("a quite different passphrase")
    user.save(update_fields=["password"])


@pytest.mark.parametrize(
    "sign_out", [revoke, deactivate, change_password], ids=lambda f: f.__name__
)
def test_busy_stream_ends_within_5_seconds_of_signing_out(
    alice: User, asgi_server: AsgiServer, sign_out: Callable[[User], None]
) -> None:
    def channel_events(stream: Any) -> int:
        return sum(1 for e in stream.events if e["event"] == "channel")

    with busy_account(alice), event_stream(asgi_server, alice) as stream:
        stream.wait_for(lambda e: e["event"] == "channel", what="a busy event")
        # Still signed in: the stream goes on past several rechecks.
        time.sleep(3)
        assert not stream.ended
        flowing = channel_events(stream)
        assert flowing > 20, flowing

        sign_out(alice)
        signed_out_at = time.monotonic()
        stream.wait_for(
            lambda e: e["event"] == "signed_out",
            timeout=SIGN_OUT_DEADLINE,
            what="signed_out within 5 s",
        )
        deadline = time.monotonic() + 1
        while not stream.ended and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.monotonic() - signed_out_at
        assert stream.ended, "the stream stayed open after signed_out"
        assert elapsed < SIGN_OUT_DEADLINE, elapsed
        # It was busy up to the end.
        assert channel_events(stream) > flowing


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def test_open_streams_hold_no_thread_and_share_one_subscription(
    alice: User, asgi_server: AsgiServer
) -> None:
    """Ten streams: no thread each (the request's own is let go), and one subscriber of the
    account's channel in Redis for all of them (the process's shared subscription)."""
    pid = asgi_server.process.pid
    redis = events.redis_client()
    channel = events.events_channel(alice.account_id)
    with contextlib.ExitStack() as streams:
        streams.enter_context(event_stream(asgi_server, alice))
        before = _threads(pid)
        opened = [streams.enter_context(event_stream(asgi_server, alice)) for _ in range(9)]
        time.sleep(0.5)
        assert _threads(pid) <= before + 2, (before, _threads(pid))
        assert dict(redis.pubsub_numsub(channel))[channel.encode()] == 1
        redis.publish(channel, events.encode({"type": "read", "channel_id": 1, "up_to": 2}))
        for stream in opened:
            stream.wait_for(lambda e: e["event"] == "read", what="the shared event")
    redis.close()
