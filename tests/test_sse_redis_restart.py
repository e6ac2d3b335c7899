"""Redis restarted under open live streams: the browser misses nothing.

A redis-server of the test's own (so the shared one is never touched), the web under uvicorn
on it, and a client that behaves as the browser's EventSource: it follows `retry:`, reconnects
with Last-Event-ID when the stream ends, and gives up (as EventSource does) if a reconnection
is refused. Lines are stored and published as the gateway does (commit, then publish; a
publish that fails while Redis is down is lost, the row is not): before the restart, while
Redis is down, and right after it is back. Every line must arrive once, in order, and the
stream must not be refused on the way.
"""

import contextlib
import http.client
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from accounts.models import User
from channels_app import events
from channels_app.models import Channel, Message, Server
from channels_app.selectors import chat as selectors
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.ircd import free_port
from tests.test_chat_e2e import AsgiServer, serving, uvicorn_env

DOWN_SECONDS = 4.5  # longer than the stream's retry (3 s): a browser would try while Redis is down


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                *f"--port {self.port} --bind 127.0.0.1 --appendonly no".split(),
                *["--save", "", "--dir", str(self.directory)],
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class EventSourceLike:
    """GET /chat/events/ on a thread, reconnecting as EventSource does."""

    def __init__(self, server: AsgiServer, cookie: str) -> None:
        self.port = int(server.url.rsplit(":", 1)[1])
        self.cookie = cookie
        self.last_event_id: str | None = None
        self.retry = 3.0
        self.ids: list[int] = []
        self.connections = 0
        self.refused: list[int] = []
        self.stopped = threading.Event()
        self.cond = threading.Condition()
        self.conn: http.client.HTTPConnection | None = None
        self.thread = threading.Thread(target=self._run, name="event-source", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            headers = {"Cookie": self.cookie, "Accept": "text/event-stream"}
            if self.last_event_id is not None:
                headers["Last-Event-ID"] = self.last_event_id
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("GET", "/chat/events/", headers=headers)
                response = self.conn.getresponse()
                if response.status != 200:
                    self.refused.append(response.status)
                    return  # EventSource fails the connection for good
                self.connections += 1
                self._read(response)
            except (OSError, http.client.HTTPException):
                pass
            finally:
                if self.conn is not None:
                    self.conn.close()
            self.stopped.wait(self.retry)

    def _read(self, response: http.client.HTTPResponse) -> None:
        fields: dict[str, str] = {}
        while True:
            raw = response.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                if name:
                    fields[name] = value.removeprefix(" ")
                continue
            if "retry" in fields:
                self.retry = int(fields["retry"]) / 1000
            if "id" in fields:
                self.last_event_id = fields["id"]
            if fields.get("event") == "message":
                with self.cond:
                    self.ids.append(int(json.loads(fields["data"])["id"]))
                    self.cond.notify_all()
            fields = {}

    def wait_for(self, count: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.ids) < count and time.monotonic() < deadline and not self.refused:
                self.cond.wait(0.1)
            return list(self.ids)

    def close(self) -> None:
        self.stopped.set()
        if self.conn is not None and self.conn.sock is not None:
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(2)
        self.thread.join(10)


def store_and_publish(user: User, channel: Channel, redis_url: str, text: str) -> int:
    """As the gateway does: the row commits, then its event is published (or is lost)."""
    with switch(user):
        message = Message.objects.create(
            channel=channel, sender="carol", text=text, server_time=timezone.now()
        )
        (payload,) = selectors.message_payloads_after(message.pk - 1, 1)
    client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.publish(events.events_channel(user.account_id), events.encode(payload))
    except redis.ConnectionError:
        pass  # Redis is down: the gateway logs it and goes on
    finally:
        client.close()
    return message.pk


def test_redis_restarted_mid_stream_misses_no_line(
    clean_schemas: None, own_redis: RedisServer, tmp_path: Path
) -> None:
    alice = cast(User, UserFactory(email="alice@example.org"))
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
    client = signed_in_client(alice)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    with serving(uvicorn_env(own_redis.url), tmp_path) as web:
        source = EventSourceLike(web, cookie)
        try:
            deadline = time.monotonic() + 10
            while source.connections == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # subscribed
            stored = [
                store_and_publish(alice, channel, own_redis.url, f"before {n}") for n in range(5)
            ]
            assert source.wait_for(5, 10) == stored, "lines published before the restart"

            own_redis.stop()
            stored += [
                store_and_publish(alice, channel, own_redis.url, f"during {n}") for n in range(5)
            ]
            time.sleep(DOWN_SECONDS)
            own_redis.start()
            stored += [
                store_and_publish(alice, channel, own_redis.url, f"after {n}") for n in range(5)
            ]

            received = source.wait_for(len(stored), 30)
            time.sleep(1)  # nothing more (a duplicate) arrives
            received = list(source.ids)
        finally:
            source.close()
        log = web.log_text()

    assert source.refused == [], f"a reconnection was refused: {source.refused}\n{log}"
    assert received == stored, f"got {received}, stored {stored}\n{log}"
    # The stream did end and come back: the lines stored while Redis was down came by replay.
    assert source.connections >= 2
