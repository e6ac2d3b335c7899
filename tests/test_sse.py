"""GET /chat/events/ through the real ASGI application: replay after Last-Event-ID, then live
events from Redis, with no gap and no duplicate, and never another account's events."""

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.test import Client

from accounts.models import Session, User
from channels_app import events, sse
from channels_app.models import Channel, Message, Notification, Server
from channels_app.selectors import chat as selectors
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
application = get_asgi_application()


class EventStream:
    """An HTTP request to the ASGI app whose response is read event by event."""

    def __init__(self, path: str, *, cookie: str, headers: dict[str, str] | None = None) -> None:
        path, _, query = path.partition("?")
        raw_headers = [(b"host", b"localhost"), (b"cookie", cookie.encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("localhost", 80),
        }
        self.sent: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.requested = False
        self.buffer = ""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.sent.put(message)

    async def __aenter__(self) -> "EventStream":
        self.task = asyncio.create_task(application(self.scope, self.receive, self.send))
        start = await asyncio.wait_for(self.sent.get(), 10)
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, 10)

    async def next_block(self, timeout: float = 5) -> str:
        """The next event or comment, as the text between blank lines."""
        while "\n\n" not in self.buffer:
            message = await asyncio.wait_for(self.sent.get(), timeout)
            self.buffer += message.get("body", b"").decode()
            if not message.get("more_body", False):
                self.ended = True
                if "\n\n" not in self.buffer:
                    raise EOFError("the stream ended")
        block, self.buffer = self.buffer.split("\n\n", 1)
        return block

    async def next_event(self, timeout: float = 5) -> dict[str, Any]:
        """The next event (comments and the retry hint skipped): {"id", "event", "data"}."""
        while True:
            fields: dict[str, Any] = {}
            for line in (await self.next_block(timeout)).split("\n"):
                name, _, value = line.partition(": ")
                if name in ("id", "event", "data"):
                    fields[name] = value
            if "event" in fields:
                fields["data"] = json.loads(fields["data"])
                return fields


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def scenario_then_close() -> None:
        try:
            await scenario()
        finally:
            # Each run is a loop of its own: its hub (subscription, session task) ends with it.
            await sse.close_hub()

    async_to_sync(scenario_then_close)()


def cookie_for(user: User) -> str:
    client = signed_in_client(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@pytest.fixture
def world(clean_schemas: None) -> dict[str, Any]:
    alice = UserFactory(email="alice@example.org")
    bob = UserFactory(email="bob@example.org")
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
    with switch(bob):
        bob_server = Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
        bob_channel = Channel.objects.create(server=bob_server, name="#palaver")
    return {"alice": alice, "bob": bob, "channel": channel, "bob_channel": bob_channel}


def store(user: User, channel: Channel, text: str, n: int, *, highlight: bool = False) -> Message:
    with switch(user):
        message = Message.objects.create(
            channel=channel, sender="carol", text=text, server_time=T0 + timedelta(seconds=n)
        )
        if highlight:
            Notification.objects.create(message=message, kind=Notification.Kind.HIGHLIGHT)
    return message


def message_event(message: Message, server_id: int) -> dict[str, Any]:
    """What the gateway publishes for a stored line."""
    return {
        "type": "message",
        "id": message.pk,
        "channel_id": message.channel_id,
        "server_id": server_id,
        "kind": message.kind,
        "sender": message.sender,
        "text": message.text,
        "server_time": message.server_time.isoformat(),
        "msgid": message.msgid,
        "highlight": False,
    }


async def publish(user: User, payload: dict[str, Any]) -> None:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        # user.account was loaded when the user was made: no query here.
        await client.publish(events.events_channel(user.account_id), events.encode(payload))
    finally:
        await client.aclose()


def test_replay_then_live_in_order_without_gap_or_duplicate(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, channel = world["alice"], world["channel"]
    server_id = channel.server_id
    seen_before = store(alice, channel, "already on the page", 0)
    missed = [store(alice, channel, f"missed {n}", n, highlight=n == 2) for n in range(1, 4)]
    late: list[Message] = []

    # The gateway keeps writing while the stream reads its replay, publishing after each
    # commit: one line commits just before the read (it is replayed and also arrives live), one
    # just after (it arrives only live, so the stream must have subscribed before reading).
    real_read = selectors.message_payloads_after
    redis = events.redis_client()

    def commit_and_publish(text: str, n: int) -> None:
        message = store(alice, channel, text, n)
        late.append(message)
        redis.publish(events.events_channel(alice.account_id), events.encode(
            message_event(message, server_id)))  # fmt: skip

    def racing_read(after_id: int, limit: int) -> list[dict[str, Any]]:
        if not late:
            commit_and_publish("committed before the read", 10)
        rows = real_read(after_id, limit)
        if len(late) == 1:
            commit_and_publish("committed after the read", 11)
        return rows

    monkeypatch.setattr(selectors, "message_payloads_after", racing_read)
    cookie = cookie_for(alice)

    async def scenario() -> None:
        async with EventStream(
            "/chat/events/",
            cookie=cookie,
            headers={"Last-Event-ID": str(seen_before.pk)},
        ) as stream:
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["cache-control"].startswith("no-cache")
            assert stream.headers["x-accel-buffering"] == "no"
            first = await stream.next_block()
            assert first.startswith("retry: ")
            replay = [await stream.next_event() for _ in range(4)]
            await publish(alice, message_event(missed[0], server_id))  # a repeat
            await publish(alice, {"type": "channel", "channel_id": channel.pk, "server_id": 1,
                                  "topic": "t", "members_changed": True})  # fmt: skip
            rest: list[dict[str, Any]] = []
            while not rest or rest[-1]["event"] != "channel":
                rest.append(await stream.next_event())

        received = replay + rest
        ids = [int(e["id"]) for e in received if e["event"] == "message"]
        expected = [m.pk for m in [*missed, *late]]
        assert ids == expected
        assert len(ids) == len(set(ids))
        assert [e["data"]["text"] for e in replay] == [
            "missed 1",
            "missed 2",
            "missed 3",
            "committed before the read",
        ]
        shape = replay[0]["data"]
        assert shape == {
            "type": "message",
            "id": missed[0].pk,
            "channel_id": channel.pk,
            "server_id": server_id,
            "kind": "message",
            "sender": "carol",
            "text": "missed 1",
            "server_time": missed[0].server_time.isoformat(),
            "msgid": "",
            "highlight": False,
        }
        assert replay[1]["data"]["highlight"] is True
        assert received[-1]["data"]["members_changed"] is True

    run(scenario)


def test_query_parameter_resumes_and_no_id_means_live_only(world: dict[str, Any]) -> None:
    alice, channel = world["alice"], world["channel"]
    messages = [store(alice, channel, f"line {n}", n) for n in range(3)]
    cookie = cookie_for(alice)

    async def scenario() -> None:
        async with EventStream(
            f"/chat/events/?last_event_id={messages[0].pk}", cookie=cookie
        ) as stream:
            got = [await stream.next_event(), await stream.next_event()]
            assert [int(e["id"]) for e in got] == [m.pk for m in messages[1:]]
        # The header wins over the query parameter (EventSource keeps the URL it started with).
        async with EventStream(
            f"/chat/events/?last_event_id={messages[0].pk}",
            cookie=cookie,
            headers={"Last-Event-ID": str(messages[1].pk)},
        ) as stream:
            assert int((await stream.next_event())["id"]) == messages[2].pk
        async with EventStream("/chat/events/", cookie=cookie) as stream:
            await stream.next_block()  # open
            await publish(alice, {"type": "server_state", "server_id": channel.server_id,
                                  "state": "connected", "error": "", "next_retry": None,
                                  "nick": "alice"})  # fmt: skip
            event = await stream.next_event()
            assert event["event"] == "server_state" and "id" not in event
            # Another tab marked a channel read: this tab's counts change too.
            read = {"type": "read", "channel_id": channel.pk, "up_to": messages[2].pk}
            await publish(alice, read)
            event = await stream.next_event()
            assert event["event"] == "read" and event["data"] == read

    run(scenario)


def test_another_accounts_events_never_appear(world: dict[str, Any]) -> None:
    alice, bob = world["alice"], world["bob"]
    bob_line = store(bob, world["bob_channel"], "bob's secret", 0)
    alice_line = store(alice, world["channel"], "for alice", 0)
    cookie = cookie_for(alice)

    async def scenario() -> None:
        async with EventStream("/chat/events/?last_event_id=0", cookie=cookie) as stream:
            replay = await stream.next_event()
            # Same id in both schemas: only alice's own line is replayed.
            assert replay["data"]["text"] == "for alice"
            assert bob_line.pk == alice_line.pk
            await publish(bob, message_event(bob_line, 1) | {"id": 999, "text": "bob's secret"})
            await publish(bob, {"type": "notification", "id": 1, "message_id": 999,
                                "kind": "highlight"})  # fmt: skip
            await publish(alice, {"type": "notification", "id": 7, "message_id": alice_line.pk,
                                  "kind": "highlight"})  # fmt: skip
            event = await stream.next_event()
            assert event["event"] == "notification" and event["data"]["id"] == 7
            with pytest.raises(TimeoutError):
                await stream.next_event(timeout=0.3)

    run(scenario)


def test_heartbeat_and_ending_the_session_ends_the_stream(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "HEARTBEAT_SECONDS", 0.2)
    cookie = cookie_for(world["alice"])

    async def scenario() -> None:
        async with EventStream("/chat/events/", cookie=cookie) as stream:
            await stream.next_block()
            assert await stream.next_block() == ": heartbeat"
            key = cookie.split("=", 1)[1]
            await sync_to_async(lambda: Session.objects.filter(session_key=key).delete())()
            event = await stream.next_event()
            assert event["event"] == "signed_out"
            with pytest.raises(EOFError):
                await stream.next_block()

    run(scenario)


def test_disconnect_unsubscribes(world: dict[str, Any]) -> None:
    alice = world["alice"]
    channel_name = events.events_channel(alice.account.pk)

    async def subscribers() -> int:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return int(dict(await client.pubsub_numsub(channel_name))[channel_name.encode()])
        finally:
            await client.aclose()

    cookie = cookie_for(alice)

    async def scenario() -> None:
        async with EventStream("/chat/events/", cookie=cookie) as stream:
            await stream.next_block()
            assert await subscribers() == 1
        for _ in range(50):
            if await subscribers() == 0:
                break
            await asyncio.sleep(0.05)
        assert await subscribers() == 0

    run(scenario)


def test_too_many_missed_lines_ask_the_page_to_reload(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "REPLAY_BATCH", 2)
    monkeypatch.setattr(sse, "REPLAY_MAX", 4)
    alice, channel = world["alice"], world["channel"]
    with switch(alice):
        Message.objects.bulk_create(
            Message(channel=channel, sender="c", text=str(n), server_time=T0) for n in range(9)
        )

    cookie = cookie_for(alice)

    async def scenario() -> None:
        async with EventStream("/chat/events/?last_event_id=0", cookie=cookie) as s:
            names = [(await s.next_event())["event"] for _ in range(5)]
            assert names == ["message"] * 4 + ["resync"]

    run(scenario)


def test_signed_out_stream_is_refused(world: dict[str, Any]) -> None:
    response = Client().get("/chat/events/")
    assert response.status_code == 302


def test_stream_opens_with_each_servers_current_state(world: dict[str, Any]) -> None:
    """A state that changed after the page rendered, before the stream subscribed, still
    reaches the page: the stream starts with every server's last known state."""
    alice, channel = world["alice"], world["channel"]
    state = {"type": "server_state", "server_id": channel.server_id, "state": "connected",
             "error": "", "next_retry": None, "nick": "alice_p"}  # fmt: skip
    redis = events.redis_client()
    key = events.server_state_key(alice.account_id, channel.server_id)
    redis.set(key, events.encode(state))
    cookie = cookie_for(alice)

    async def scenario() -> None:
        async with EventStream("/chat/events/", cookie=cookie) as stream:
            assert (await stream.next_block()).startswith("retry: ")
            first = await stream.next_event()
            assert first["event"] == "server_state"
            assert first["data"] == state

    try:
        run(scenario)
    finally:
        redis.delete(key)


async def _body(stream: EventStream) -> str:
    message = await asyncio.wait_for(stream.sent.get(), 5)
    return bytes(message.get("body", b"")).decode()


def test_streams_per_user_are_limited_and_slots_come_back(
    world: dict[str, Any], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.LIMIT_SSE_STREAMS_PER_USER = 2
    monkeypatch.setattr(sse, "SESSION_RECHECK_SECONDS", 0.2)
    monkeypatch.setattr(sse, "STREAM_SLOT_TTL_SECONDS", 1)
    alice, bob = world["alice"], world["bob"]
    alice_cookie, bob_cookie = cookie_for(alice), cookie_for(bob)
    redis = events.redis_client()
    key = f"palaver:sse-streams:{alice.pk}"

    async def scenario() -> None:
        async with (
            EventStream("/chat/events/", cookie=alice_cookie) as one,
            EventStream("/chat/events/", cookie=alice_cookie) as two,
        ):
            assert (one.status, two.status) == (200, 200)
            # Held well past a slot's lifetime: each recheck renews it.
            await asyncio.sleep(1.5)
            async with EventStream("/chat/events/", cookie=alice_cookie) as three:
                assert three.status == 429
                assert three.headers["retry-after"] == "1"
                text = await _body(three)
                assert text.startswith("Too many live streams are open for your user (2)")
            # The limit is per user: bob's stream opens.
            async with EventStream("/chat/events/", cookie=bob_cookie) as bobs:
                assert bobs.status == 200
        # Both ended: their slots are free at once.
        assert await sync_to_async(redis.zcard)(key) == 0

        # A worker that died holding both slots stops renewing them: they lapse.
        await sync_to_async(redis.zadd)(key, {"dead-1": time.time() + 1, "dead-2": time.time() + 1})
        async with EventStream("/chat/events/", cookie=alice_cookie) as refused:
            assert refused.status == 429
        await asyncio.sleep(1.2)
        async with EventStream("/chat/events/", cookie=alice_cookie) as after:
            assert after.status == 200

    try:
        run(scenario)
    finally:
        redis.delete(key)


def test_redis_unreachable_is_a_503_not_a_500(world: dict[str, Any], settings: Any) -> None:
    cookie = cookie_for(world["alice"])
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    async def scenario() -> None:
        async with EventStream("/chat/events/", cookie=cookie) as stream:
            assert stream.status == 503
            assert "unavailable" in await _body(stream)

    run(scenario)


def test_a_stream_that_falls_behind_is_ended_to_resume_by_last_event_id(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its queue is bounded: past STREAM_QUEUE_LIMIT it ends with a retry, never grows."""
    monkeypatch.setattr(sse, "STREAM_QUEUE_LIMIT", 5)
    alice, channel = world["alice"], world["channel"]
    cookie = cookie_for(alice)
    payload = {"type": "channel", "channel_id": channel.pk, "server_id": channel.server_id,
               "topic": "t", "members_changed": False}  # fmt: skip

    async def scenario() -> None:
        async with EventStream("/chat/events/", cookie=cookie) as stream:
            await stream.next_block()
            client = aioredis.Redis.from_url(settings.REDIS_URL)
            try:
                # One burst: the fanout reads it all before the stream's turn comes.
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(200):
                        pipe.publish(
                            events.events_channel(alice.account_id), events.encode(payload)
                        )
                    await pipe.execute()
            finally:
                await client.aclose()
            blocks = []
            with contextlib.suppress(EOFError):
                while True:
                    blocks.append(await stream.next_block())
            assert blocks and blocks[-1].startswith("retry: "), blocks[-3:]
            assert sum(1 for b in blocks if b.startswith("event: channel")) <= 5

    run(scenario)


def test_sessions_are_checked_together_and_a_revoke_ends_only_its_stream(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "SESSION_RECHECK_SECONDS", 0.2)
    checked: list[int] = []
    real_valid_sessions = sse._valid_sessions

    def counting(pairs: list[tuple[str, Any]]) -> set[tuple[str, Any]]:
        checked.append(len(pairs))
        return real_valid_sessions(pairs)

    monkeypatch.setattr(sse, "_valid_sessions", counting)
    alice, bob = world["alice"], world["bob"]
    laptop, phone, bobs = cookie_for(alice), cookie_for(alice), cookie_for(bob)

    async def scenario() -> None:
        async with (
            EventStream("/chat/events/", cookie=laptop) as one,
            EventStream("/chat/events/", cookie=phone) as two,
            EventStream("/chat/events/", cookie=bobs) as three,
        ):
            for stream in (one, two, three):
                await stream.next_block()
            await asyncio.sleep(0.6)
            # The three new streams were validated in one query, and then none while no one's
            # sign-in generation moved.
            assert 3 in checked and all(n in (0, 3) for n in checked), checked
            key = laptop.split("=", 1)[1]
            await sync_to_async(lambda: Session.objects.filter(session_key=key).delete())()
            assert (await one.next_event(timeout=3))["event"] == "signed_out"
            with pytest.raises(EOFError):
                await one.next_block()
            # Alice's other session, and bob, go on: only alice's two streams were asked about.
            assert checked[-1] == 2, checked
            for stream in (two, three):
                with pytest.raises(TimeoutError):
                    await stream.next_event(timeout=0.5)
                assert not stream.ended

    run(scenario)
