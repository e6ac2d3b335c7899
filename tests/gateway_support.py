"""Running a real Gateway inside the test process, on an event loop of its own thread, as
`manage.py irc_gateway` runs it. Loaded as a pytest plugin (tests/conftest.py)."""

import asyncio
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accounts.models import User
from channels_app.models import Message
from gateway.journal import Journal
from gateway.manager import Gateway
from gateway.storage import Store
from tenancy import switch


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


class GatewayThread:
    """A real Gateway on an event loop of its own thread, as `manage.py irc_gateway` runs it."""

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.gateway: Gateway | None = None
        self.tls_context = tls_context
        self.thread = threading.Thread(target=self._main, name="gateway", daemon=True)
        self.failed: BaseException | None = None
        # A journal of its own: not the checkout's var/journal, nor another test's.
        self.journal_dir = Path(tempfile.mkdtemp(prefix="palaver-journal-"))

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def run() -> None:
            store = Store(journal=Journal(self.journal_dir))
            self.gateway = Gateway(tls_context=self.tls_context, store=store)
            try:
                await self.gateway.run()
            except BaseException as exc:
                self.failed = exc

        self.loop.create_task(run())
        self.loop.run_forever()

    def start(self) -> "GatewayThread":
        self.thread.start()
        wait_until(lambda: self.gateway is not None and self.gateway.ready.is_set(), 20, "ready")
        return self

    def call(self, coroutine: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            if self.gateway is not None:
                self.call(self.gateway.stop())
                self.call(self.gateway.store.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            shutil.rmtree(self.journal_dir, ignore_errors=True)
        assert self.failed is None, f"the gateway crashed: {self.failed!r}"

    def connection(self, user: User, server_id: int) -> Any:
        assert self.gateway is not None
        return self.gateway.connections.get((user.account.pk, server_id))


@pytest.fixture
def run_gateway(clean_schemas: None) -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def start(tls_context: ssl.SSLContext | None = None) -> GatewayThread:
        runner = GatewayThread(tls_context).start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


def messages(user: User, **filters: Any) -> list[Message]:
    with switch(user):
        return list(Message.objects.filter(**filters).select_related("channel").order_by("id"))
