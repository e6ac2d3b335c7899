"""Benchmark: IRC-to-browser latency at a steady 1,000 lines/s into 10 accounts.

    .venv/bin/python benchmarks/irc_latency.py [--accounts N] [--rate R] [--seconds S] [--keep]

Provisions N accounts (default 10) through `tenancy.services.provision_account`, each with a
user signed in (a session, as a browser has), one server on our own line source
(benchmarks/_linesource.py) and one autojoin channel. Runs, as production does, three
processes besides PostgreSQL and Redis:

- the line source, a minimal IRC server of ours, in a child process;
- the web: uvicorn serving config.asgi on a free port, in a child process;
- a real `gateway.manager.Gateway` on a thread of this process;

and a fourth, the browsers: a child process that opens the chat's live event stream
(GET /chat/events/, Server-Sent Events) for each account with its session cookie, and, to split
the time, subscribes to the same accounts' Redis event channels the stream forwards.

The source then writes R lines a second (default 1,000) for S seconds (default 20), round-robin
over the accounts' channels, each line written when it falls due and its time recorded, after
a 2-second warm-up that is not counted. A line's latency is from the moment the source wrote
it to its socket to the moment its `message` event arrived on the account's SSE stream
(time.time() in both processes, one machine). Every line must arrive exactly once.

It runs in a database of its own (`palaver_bench_irc_latency` on the server DATABASE_URL
names), dropped and recreated at the start and dropped at the end unless --keep.

stdout gets exactly one line:
    latency_ms_p50=… latency_ms_p99=… rate=… lines=… via=sse
    read_ms_p50=… read_ms_p99=… stored_ms_p50=… stored_ms_p99=…
    published_ms_p50=… published_ms_p99=… sse_ms_p50=… sse_ms_p99=…
(on one line). latency_* is through the SSE endpoint. The split is cumulative, every figure
from the moment the source wrote the line: read_* when the gateway handed it to its store
(Store.put), stored_* when its batch committed, published_* when it arrived on the account's
Redis channel (a subscriber in the browsers' process), sse_* when it arrived on the stream
(the same as latency_*). A stage's own share is the difference between neighbours'
percentiles only roughly (percentiles do not subtract); the log on stderr gives each stage's
own distribution too. The read and commit times come from a StoreObserver
(gateway.storage.Store.observer) set on the gateway's store, which runs on a thread here.
rate is the rate achieved.
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from _linesource import (  # noqa: E402
    GatewayThread,
    LineSource,
    create_accounts,
    forget_server_states,
    raise_fd_limit,
    wait_until,
)
from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
)

DEFAULT_DATABASE = "palaver_bench_irc_latency"
WARMUP_SECONDS = 2.0
WARMUP_PREFIX = "warm"
PREFIX = "lat"
EVENTS_PATH = "/chat/events/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10, help="accounts (default 10)")
    parser.add_argument("--rate", type=float, default=1000, help="lines/s (default 1,000)")
    parser.add_argument("--seconds", type=float, default=20, help="seconds timed (default 20)")
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--accounts, --rate and --seconds must be positive")
    if args.rate * args.seconds < 100:
        parser.error("too few lines for a 99th percentile: raise --rate or --seconds")
    return args


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


# --- the browsers (a child process) ----------------------------------------------------------


async def read_sse(
    port: int, cookie: str, arrivals: dict[str, float], opened: asyncio.Event
) -> None:
    """One browser's live stream: GET the endpoint, then note when each line's event arrives."""
    deadline = time.monotonic() + 60
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    writer.write(
        (
            f"GET {EVENTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
            "Accept: text/event-stream\r\nUser-Agent: palaver-benchmark\r\n\r\n"
        ).encode()
    )
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"the event stream answered {status!r}")
    headers = b""
    while (line := await reader.readline()) not in (b"\r\n", b""):
        headers += line.lower()
    chunked = b"transfer-encoding: chunked" in headers
    buffer = b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    return
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(64 * 1024)
                if not data:
                    return
            arrived = time.time()
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for field in event.split(b"\n"):
                    if field.startswith(b": stream open"):
                        opened.set()
                    elif field.startswith(b"data: "):
                        payload = json.loads(field[6:])
                        msgid = payload.get("msgid") if payload.get("type") == "message" else ""
                        if msgid in arrivals:
                            arrivals[f"duplicate:{msgid}"] = arrived
                        elif msgid:
                            arrivals[msgid] = arrived
    finally:
        writer.close()


async def read_redis(
    redis_url: str, channels: list[str], arrivals: dict[str, float], subscribed: asyncio.Event
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(*channels)
        confirmed = 0
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            if message["type"] == "subscribe":
                confirmed += 1
                if confirmed == len(channels):
                    subscribed.set()
                continue
            arrived = time.time()
            payload = json.loads(message["data"])
            if payload.get("type") == "message" and payload.get("msgid"):
                arrivals.setdefault(payload["msgid"], arrived)
    finally:
        await pubsub.aclose()
        await client.aclose()


def browsers(
    port: int,
    cookies: list[str],
    redis_url: str,
    channels: list[str],
    ready: EventType,
    stop: EventType,
    results: "multiprocessing.Queue[Any]",
) -> None:
    async def main() -> None:
        sse: dict[str, float] = {}
        redis_arrivals: dict[str, float] = {}
        opened = [asyncio.Event() for _ in cookies]
        subscribed = asyncio.Event()
        tasks = [
            asyncio.create_task(read_sse(port, cookie, sse, event))
            for cookie, event in zip(cookies, opened, strict=True)
        ]
        tasks.append(
            asyncio.create_task(read_redis(redis_url, channels, redis_arrivals, subscribed))
        )
        error = ""
        try:
            waiting = [asyncio.create_task(e.wait()) for e in [*opened, subscribed]]
            await asyncio.wait([*waiting, *tasks], timeout=60, return_when=asyncio.FIRST_EXCEPTION)
            if all(w.done() for w in waiting):
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                    if any(t.done() for t in tasks):
                        break
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                error = repr(failed[0].exception())
            elif not ready.is_set():
                error = "the event streams did not open within 60 s"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        results.put({"sse": sse, "redis": redis_arrivals, "error": error})

    asyncio.run(main())


# --- the web (a child process) ---------------------------------------------------------------


@contextlib.contextmanager
def web_server(bench_url: str) -> Iterator[int]:
    """uvicorn serving the project on a free port, its socket bound here and handed over."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": bench_url, "DEBUG": "false"}
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application"]
    command += ["--fd", str(listener.fileno()), "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
        command,
        cwd=PROJECT_DIR,
        env=env,
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    try:
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the benchmark ---------------------------------------------------------------------------


class StageClock:
    """The gateway store's observer: when each timed line was read and when its batch
    committed (time.time(), comparable with the source's and the browsers' clocks)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.read_at: dict[str, float] = {}
        self.committed_at: dict[str, float] = {}

    def read(self, record: Any) -> None:
        msgid = getattr(record, "msgid", "")
        if msgid.startswith(self.prefix):
            self.read_at[msgid] = time.time()

    def committed(self, batch: list[Any]) -> None:
        at = time.time()
        for record in batch:
            msgid = getattr(record, "msgid", "")
            if msgid.startswith(self.prefix):
                self.committed_at[msgid] = at


def sign_in(accounts: list[Any]) -> list[str]:
    """A user in each account, and a session for it: the Cookie header a browser would send."""
    from django.conf import settings
    from django.test import Client

    from accounts.models import User

    cookies = []
    for i, account in enumerate(accounts):
        user = User(account=account, email=f"latency{i}@bench.example", is_account_admin=True)
        user.set_unusable_password()
        user.save()
        client = Client()
        client.force_login(user)
        session = client.cookies[settings.SESSION_COOKIE_NAME].value
        cookies.append(f"{settings.SESSION_COOKIE_NAME}={session}")
    return cookies


def written_at(accounts: list[Any], prefix: str) -> dict[str, float]:
    """When the gateway's writer built each row (Message.created_at, set just before INSERT)."""
    from channels_app.models import Message
    from tenancy import switch

    created: dict[str, float] = {}
    for account in accounts:
        with switch(account):
            for msgid, at in Message.objects.filter(msgid__startswith=prefix).values_list(
                "msgid", "created_at"
            ):
                if msgid in created:
                    raise BenchmarkError(f"line {msgid} stored twice")
                created[msgid] = at.timestamp()
    return created


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.conf import settings
    from django.core.management import call_command

    from channels_app import events

    raise_fd_limit()
    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()

    with LineSource() as source, web_server(bench_url) as port:
        log(f"line source on 127.0.0.1:{source.port}, web on 127.0.0.1:{port}")
        accounts = create_accounts(args.accounts, port=source.port)
        cookies = sign_in(accounts)
        runner = GatewayThread()
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        results: multiprocessing.Queue[Any] = context.Queue()
        consumer = context.Process(
            target=browsers,
            args=(
                port,
                cookies,
                settings.REDIS_URL,
                [events.events_channel(a.pk) for a in accounts],
                ready,
                stop,
                results,
            ),
            name="browsers",
        )
        try:
            gateway = runner.start()
            clock = StageClock(PREFIX)
            gateway.store.observer = clock
            source.wait_joined(args.accounts, 60)
            runner.wait_quiet(30)
            consumer.start()
            if not ready.wait(90):
                raise BenchmarkError("the browsers' event streams did not open")
            log(f"{args.accounts} event streams open; warming up for {WARMUP_SECONDS:.0f} s")
            source.paced(args.rate, WARMUP_SECONDS, prefix=WARMUP_PREFIX)
            runner.wait_quiet(30)
            stored_before = gateway.store.stored
            log(f"{args.rate:,.0f} lines/s for {args.seconds:.0f} s")
            sent, started, finished = source.paced(args.rate, args.seconds, prefix=PREFIX)
            wait_until(
                lambda: gateway.store.stored >= stored_before + len(sent),
                30,
                "the gateway to store every line",
            )
            time.sleep(1.0)  # the last events' way to the browsers
            stop.set()
            outcome = results.get(timeout=60)
            consumer.join(30)
        finally:
            stop.set()
            if consumer.is_alive():
                consumer.terminate()
            runner.stop()
            if runner.failed is not None:
                raise BenchmarkError(f"the gateway crashed: {runner.failed!r}")

    if outcome["error"]:
        raise BenchmarkError(f"the browsers failed: {outcome['error']}")
    sse: dict[str, float] = outcome["sse"]
    redis_arrivals: dict[str, float] = outcome["redis"]
    duplicates = [k for k in sse if k.startswith("duplicate:")]
    missing = [msgid for msgid, _ in sent if msgid not in sse]
    if duplicates or missing:
        raise BenchmarkError(
            f"{len(missing)} lines never reached a stream (e.g. {missing[:3]}), "
            f"{len(duplicates)} arrived twice"
        )
    created = written_at(accounts, PREFIX)
    forget_server_states(accounts)
    sent_at = dict(sent)

    def ms(arrivals: dict[str, float], since: dict[str, float] = sent_at) -> list[float]:
        return [(arrivals[m] - since[m]) * 1000 for m in sent_at if m in arrivals and m in since]

    stages = {
        "read": ms(clock.read_at),
        "stored": ms(clock.committed_at),
        "published": ms(redis_arrivals),
        "sse": ms(sse),
    }
    for name, samples in stages.items():
        if len(samples) != len(sent):
            raise BenchmarkError(f"{name}: {len(samples)} of {len(sent)} lines timed")
    own = {
        "source -> gateway read (Store.put)": stages["read"],
        "read -> row built by the writer": ms(created, clock.read_at),
        "read -> batch committed": ms(clock.committed_at, clock.read_at),
        "committed -> Redis channel": ms(redis_arrivals, clock.committed_at),
        "Redis channel -> SSE stream": ms(sse, redis_arrivals),
        "source -> SSE stream (the browser)": stages["sse"],
    }
    for name, samples in own.items():
        log(
            f"{name}: p50 {statistics.median(samples):.1f} ms, p90 {percentile(samples, 90):.1f},"
            f" p99 {percentile(samples, 99):.1f}, max {max(samples):.1f} ({len(samples)} lines)"
        )
    rate = len(sent) / (finished - started)
    latency = stages["sse"]
    split = " ".join(
        f"{name}_ms_p50={statistics.median(samples):.1f} "
        f"{name}_ms_p99={percentile(samples, 99):.1f}"
        for name, samples in stages.items()
    )
    print(
        f"latency_ms_p50={statistics.median(latency):.1f} "
        f"latency_ms_p99={percentile(latency, 99):.1f} rate={rate:.0f} lines={len(sent)} "
        f"via=sse {split}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_in_scratch_database(parse_args(argv), title="IRC latency benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
