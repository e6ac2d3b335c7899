"""Benchmark: live streams (GET /chat/events/) at scale on one uvicorn worker.

    .venv/bin/python benchmarks/sse_streams.py [--idle 10000] [--busy 1000] [--rate 10000]
        [--accounts 500] [--busy-accounts 100] [--seconds 20] [--clients 4]
        [--project DIR] [--database NAME] [--keep]

Provisions --accounts accounts (each with one user signed in, one session, one server), then
runs one uvicorn worker (`config.asgi:application`, as scripts/run_all.py does) on a Redis
server of the benchmark's own (the redis-server binary on a free port, maxclients 50,000), so
the Redis clients the web uses are counted exactly and the shared Redis is left alone. The
load generator is --clients processes of plain asyncio HTTP clients (hand-written GET, chunked
SSE parsing), each holding its share of the streams, with the open-files limit raised to the
hard limit (ulimit -n: 10,000 streams are 10,000 sockets in the web and as many across the
clients).

(a) --idle streams open over all the accounts, no traffic: the web process's RSS grown per
    stream (RSS with them open minus RSS after one warm-up stream, over the count), and the
    Redis clients connected (CLIENT LIST, less the benchmark's own).
(b) --busy streams over --busy-accounts accounts (streams spread evenly), and a publisher
    (this process) publishing "message" events round-robin over those accounts so that
    --rate deliveries a second reach the streams in total, for --seconds after a 2-second
    warm-up. Each event carries its publication time (time.time(), one machine); a delivery's
    latency is from then to its arrival at the client. Every delivery must arrive exactly once.

--project runs the web from another checkout (e.g. an export of main) to measure "before" the
same way.

stdout gets exactly one line:
    idle_streams=… rss_kb_per_stream=… redis_clients=… busy_streams=… deliveries_per_s=…
    latency_ms_p50=… latency_ms_p99=… delivered=…/… web_cpu_us_per_delivery=…
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from _linesource import raise_fd_limit  # noqa: E402
from provisioning import BenchmarkError, back_to_public, log, run_in_scratch_database  # noqa: E402

DEFAULT_DATABASE = "palaver_bench_sse_streams"
EVENTS_PATH = "/chat/events/"
WARMUP_SECONDS = 2.0
# Streams each client opens at once: each opening request holds a PostgreSQL connection while
# Django authenticates it, and the server allows 100 in all (shared with others here).
OPEN_CONCURRENCY = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10_000, help="idle streams (a)")
    parser.add_argument("--busy", type=int, default=1_000, help="busy streams (b)")
    parser.add_argument("--rate", type=float, default=10_000, help="deliveries/s in total (b)")
    parser.add_argument("--accounts", type=int, default=500, help="accounts (a)")
    parser.add_argument("--busy-accounts", type=int, default=100, help="accounts (b)")
    parser.add_argument("--seconds", type=float, default=20, help="seconds timed (b)")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--project", default=str(PROJECT_DIR), help="the web's checkout")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="scratch database")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.busy_accounts > args.accounts or args.busy % args.busy_accounts:
        parser.error("--busy must be a multiple of --busy-accounts <= --accounts")
    return args


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


# --- the clients (child processes) ------------------------------------------------------------


async def _read_stream(
    port: int, cookie: str, opened: asyncio.Event, latencies: list[float], counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(
        f"GET {EVENTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"the event stream answered {status!r}")
    while await reader.readline() not in (b"\r\n", b""):
        pass
    buffer = b""
    try:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            arrived = time.time()
            if not opened.is_set() and b": stream open" in buffer:
                opened.set()
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                for field in event.split(b"\n"):
                    if field.startswith(b"data: "):
                        payload = json.loads(field[6:])
                        if payload.get("type") == "message":
                            latencies.append(arrived - float(payload["text"]))
                            counts[0] += 1
    finally:
        writer.close()


def client(port: int, cookies: list[str], pipe: Connection) -> None:
    """Opens a stream per cookie, says "open", records deliveries until told "stop"."""
    raise_fd_limit()

    async def main() -> None:
        latencies: list[float] = []
        counts = [0]
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        opened = [asyncio.Event() for _ in cookies]

        async def one(cookie: str, event: asyncio.Event) -> None:
            async with gate:
                task = asyncio.create_task(_read_stream(port, cookie, event, latencies, counts))
                await asyncio.wait(
                    [task, asyncio.create_task(event.wait())],
                    return_when=asyncio.FIRST_COMPLETED,
                    timeout=120,
                )
            await task

        tasks = [asyncio.create_task(one(c, e)) for c, e in zip(cookies, opened, strict=True)]
        error = ""
        deadline = time.monotonic() + 300
        while not all(e.is_set() for e in opened) and time.monotonic() < deadline:
            failed = [t for t in tasks if t.done()]
            if failed:
                error = repr(failed[0].exception()) if not failed[0].cancelled() else "cancelled"
                break
            await asyncio.sleep(0.1)
        pipe.send({"open": sum(e.is_set() for e in opened), "error": error})
        loop = asyncio.get_running_loop()
        while True:
            message = await loop.run_in_executor(None, pipe.recv)
            if message == "reset":
                latencies.clear()
                counts[0] = 0
                pipe.send("ok")
            elif message == "stop":
                ended = sum(t.done() for t in tasks)
                pipe.send({"latencies": latencies, "count": counts[0], "ended": ended})
                break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


@contextlib.contextmanager
def clients(port: int, cookies: list[str], processes: int) -> Iterator[list[Connection]]:
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    for i in range(processes):
        share = cookies[i::processes]
        ours, theirs = context.Pipe()
        child = context.Process(target=client, args=(port, share, theirs), name=f"client-{i}")
        child.start()
        pipes.append(ours)
        children.append(child)
    try:
        opened = 0
        for pipe in pipes:
            if not pipe.poll(360):
                raise BenchmarkError("a client did not open its streams")
            reply = pipe.recv()
            if reply["error"]:
                raise BenchmarkError(f"a client failed: {reply['error']}")
            opened += reply["open"]
        if opened != len(cookies):
            raise BenchmarkError(f"only {opened} of {len(cookies)} streams opened")
        yield pipes
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for child in children:
            child.join(30)
            if child.is_alive():
                child.terminate()


def collect(pipes: list[Connection]) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    count = ended = 0
    for pipe in pipes:
        pipe.send("stop")
        reply = pipe.recv()
        latencies += reply["latencies"]
        count += reply["count"]
        ended += reply["ended"]
    return latencies, count, ended


# --- the servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(  # noqa: S603 (fixed arguments)
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            *f"--port {port} --bind 127.0.0.1 --appendonly no --maxclients 50000".split(),
            *["--save", "", "--dir", workdir],
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def web_server(
    args: argparse.Namespace, bench_url: str, redis_url: str
) -> Iterator[tuple[int, int]]:
    """uvicorn on a free port: (port, pid)."""
    from django.conf import settings

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # Listening already: connections wait in the backlog until uvicorn accepts them.
    listener.listen(4096)
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL_PREFIX": settings.REDIS_CHANNEL_PREFIX,
        "DEBUG": "false",
        "LIMIT_SSE_STREAMS_PER_USER": "100000",
    }
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--lifespan", "off"]
    command += ["--fd", str(listener.fileno()), "--no-access-log", "--log-level", "warning"]
    command += ["--backlog", "4096", "--timeout-graceful-shutdown", "1"]
    process = subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
        command, cwd=args.project, env=env, pass_fds=(listener.fileno(),)
    )
    listener.close()
    try:
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchmarkError("no VmRSS")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_clients(redis_url: str) -> int:
    """Clients connected to the benchmark's Redis, not counting the connection asking."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return len(client.client_list()) - 1
    finally:
        client.close()


def settle(pid: int, seconds: float = 3.0) -> int:
    """RSS once it stops moving (after the burst of opening settles)."""
    time.sleep(seconds)
    return rss_kb(pid)


# --- the benchmark ----------------------------------------------------------------------------


def make_users(count: int) -> tuple[list[str], list[str]]:
    """A user, a session and a server in each of `count` new accounts: (cookies, account ids)."""
    from django.conf import settings
    from django.test import Client
    from tqdm import tqdm

    from accounts.models import User
    from channels_app.models import Server
    from tenancy import switch
    from tenancy.services import provision_account

    cookies, account_ids = [], []
    for i in tqdm(range(count), desc="accounts", unit="account", file=sys.stderr):
        account = provision_account(name=f"Streams {i:05d}")
        with switch(account):
            Server.objects.create(name="Bench", host="irc.example.org", nick=f"b{i}")
        back_to_public()
        user = User(account=account, email=f"stream{i}@bench.example", is_account_admin=True)
        user.set_unusable_password()
        user.save()
        browser = Client()
        browser.force_login(user)
        cookies.append(
            f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        account_ids.append(str(account.pk))
    return cookies, account_ids


def publish(
    redis_url: str, channels: list[str], rate: float, seconds: float, stop: threading.Event
) -> int:
    """`rate` events a second round-robin over `channels`, in 5 ms ticks; returns how many."""
    import redis

    client = redis.Redis.from_url(redis_url)
    tick = 0.005
    sent = 0
    start = time.monotonic()
    next_id = 1
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) + 1 - sent
            if due > 0:
                pipe = client.pipeline(transaction=False)
                now = f"{time.time():.6f}"
                for _ in range(due):
                    payload = {"type": "message", "id": next_id, "channel_id": 1, "server_id": 1,
                               "kind": "message", "sender": "bench", "text": now,
                               "server_time": "2026-11-30T00:00:00+00:00", "msgid": "",
                               "highlight": False}  # fmt: skip
                    pipe.publish(channels[sent % len(channels)], json.dumps(payload))
                    next_id += 1
                    sent += 1
                pipe.execute()
            time.sleep(tick)
    finally:
        client.close()
    return sent


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command

    from channels_app import events

    raise_fd_limit()
    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    cookies, account_ids = make_users(args.accounts)

    with redis_server() as redis_url, web_server(args, bench_url, redis_url) as (port, pid):
        # One warm-up stream: everything imported, the process's shared parts made.
        with clients(port, cookies[:1], 1) as pipes:
            collect(pipes)
        time.sleep(1)
        base_rss, base_redis = settle(pid), redis_clients(redis_url)
        log(f"web pid {pid}: RSS {base_rss} kB, {base_redis} Redis clients, {threads(pid)} threads")

        idle = [cookies[i % len(cookies)] for i in range(args.idle)]
        started = time.monotonic()
        with clients(port, idle, args.clients) as pipes:
            opened_in = time.monotonic() - started
            idle_rss = settle(pid, 5)
            idle_redis = redis_clients(redis_url)
            idle_threads = threads(pid)
            log(
                f"{args.idle} idle streams open in {opened_in:.1f} s: RSS {idle_rss} kB, "
                f"{idle_redis} Redis clients, {idle_threads} threads"
            )
            collect(pipes)
        per_stream = (idle_rss - base_rss) / args.idle
        time.sleep(3)

        per_account = args.busy // args.busy_accounts
        busy = [cookies[a] for a in range(args.busy_accounts) for _ in range(per_account)]
        channels = [events.events_channel(account_ids[a]) for a in range(args.busy_accounts)]
        publish_rate = args.rate / per_account
        with clients(port, busy, args.clients) as pipes:
            log(f"{args.busy} streams open; warming up at {args.rate:,.0f} deliveries/s")
            stop = threading.Event()
            publish(redis_url, channels, publish_rate, WARMUP_SECONDS, stop)
            time.sleep(1)
            for pipe in pipes:
                pipe.send("reset")
                pipe.recv()
            log(f"{publish_rate:,.0f} events/s x {per_account} streams for {args.seconds:.0f} s")
            started, cpu_before = time.monotonic(), cpu_seconds(pid)
            sent = publish(redis_url, channels, publish_rate, args.seconds, stop)
            took = time.monotonic() - started
            time.sleep(2)
            web_cpu = cpu_seconds(pid) - cpu_before
            latencies, delivered, ended = collect(pipes)
    expected = sent * per_account
    if not latencies:
        raise BenchmarkError("nothing was delivered")
    ms = [x * 1000 for x in latencies]
    log(
        f"deliveries: {delivered}/{expected}, {ended} streams ended early; "
        f"p50 {statistics.median(ms):.1f} ms, p90 {percentile(ms, 90):.1f}, "
        f"p99 {percentile(ms, 99):.1f}, max {max(ms):.1f}; the web used {web_cpu:.1f} CPU-s "
        f"({web_cpu / max(delivered, 1) * 1e6:.0f} us a delivery); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"idle_streams={args.idle} rss_kb_per_stream={per_stream:.1f} redis_clients={idle_redis} "
        f"busy_streams={args.busy} deliveries_per_s={expected / took:.0f} "
        f"latency_ms_p50={statistics.median(ms):.1f} latency_ms_p99={percentile(ms, 99):.1f} "
        f"delivered={delivered}/{expected} web_cpu_us_per_delivery="
        f"{web_cpu / max(delivered, 1) * 1e6:.0f}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_in_scratch_database(parse_args(argv), title="SSE streams benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
