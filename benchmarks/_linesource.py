"""Shared by the IRC gateway benchmarks (benchmarks/irc_*.py): a line source of our own, and
the plumbing to run a real Gateway in-process against it.

The line source is a minimal IRC server on 127.0.0.1, run in a child process so that its work
never shares the benchmark process's GIL with the gateway. It accepts any number of
connections, answers registration the way the gateway expects of a modern server (CAP LS with
server-time and message-tags, CAP REQ/ACK, then 001, 005 with PREFIX and CHANTYPES, 422 for
the MOTD), echoes JOIN with a 353/366 names list, answers PING, and on command writes PRIVMSG
lines carrying @time= and msgid= tags into the channels its clients joined: a fixed number of
prepared lines as fast as the sockets take them (`flood`), or a steady rate for a while
(`paced`), recording when it wrote each line.

Why not a real IRC server: InspIRCd, the IRCv3 server the tests use, relays at most about
8,000 lines/s on a 2-core machine (50 senders into 10 channels; docs/benchmarks.md, "InspIRCd's
relay ceiling"), well below the 20,000 lines/s the gateway must store.

The benchmark process talks to the child over its stdin and stdout, one JSON object a line
(`LineSource` wraps that). Run by itself, `python benchmarks/_linesource.py` is that child.
The leading underscore keeps `make bench` from running this file as a benchmark.
"""

import asyncio
import contextlib
import json
import logging
import os
import resource
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accounts.models import Account
    from gateway.manager import Gateway

SERVER_NAME = "linesource.bench"
CAPS = ("server-time", "message-tags")
ISUPPORT = "PREFIX=(ov)@+ CHANTYPES=# CASEMAPPING=rfc1459 NETWORK=LineSource"
SENDERS = ("ana", "bert", "chloe", "dmitri", "esme", "farid", "gus", "hana")
# Chat-like text of mixed lengths (30 to 120 characters), none of it anyone's nick.
_TEXT = (
    "the build is green again after the rebase so I will merge it tonight unless someone "
    "objects to the new config layout or wants another look at the migration that adds the "
    "index on the message table which took forty seconds on the big instance yesterday"
)
WORDS = _TEXT.split()
WRITE_CHUNK = 64 * 1024


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one; thousands of sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def chat_text(seq: int) -> str:
    start = (seq * 7) % len(WORDS)
    count = 5 + (seq * 13) % 18
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))


def server_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def privmsg(channel: str, msgid: str, seq: int, at: float) -> bytes:
    sender = SENDERS[seq % len(SENDERS)]
    return (
        f"@time={server_time(at)};msgid={msgid} :{sender}!~{sender}@users.linesource.bench "
        f"PRIVMSG {channel} :{chat_text(seq)}\r\n"
    ).encode()


# --- the child: the IRC server ---------------------------------------------------------------


class Client:
    """One connection to the line source."""

    def __init__(self, server: "Server", index: int, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.index = index
        self.writer = writer
        self.nick = ""
        self.user = False
        self.negotiating = False
        self.welcomed = False
        self.channels: list[str] = []

    def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")

    def numeric(self, code: str, *params: str) -> None:
        self.send(f":{SERVER_NAME} {code} {self.nick or '*'} {' '.join(params)}")

    def handle(self, line: str) -> None:
        parts = line.split(" :", 1)
        words = parts[0].split()
        if not words:
            return
        params = words[1:] + parts[1:]
        command = words[0].upper()
        if command == "CAP" and params:
            sub = params[0].upper()
            if sub == "LS":
                self.negotiating = True
                self.send(f":{SERVER_NAME} CAP * LS :{' '.join(CAPS)}")
            elif sub == "REQ":
                wanted = params[-1].split()
                verb = "ACK" if set(wanted) <= set(CAPS) else "NAK"
                self.send(f":{SERVER_NAME} CAP * {verb} :{' '.join(wanted)}")
            elif sub == "END":
                self.negotiating = False
                self.welcome()
        elif command == "NICK" and params:
            self.nick = params[0]
            self.welcome()
        elif command == "USER":
            self.user = True
            self.welcome()
        elif command == "PING":
            self.send(f":{SERVER_NAME} PONG {SERVER_NAME} :{params[0] if params else ''}")
        elif command == "JOIN" and params and self.welcomed:
            for channel in params[0].split(","):
                if channel in self.channels:
                    continue
                self.send(f":{self.nick}!~{self.nick}@gateway.bench JOIN {channel}")
                self.numeric("353", "=", channel, f":{self.nick} @{SENDERS[0]} {SENDERS[1]}")
                self.numeric("366", channel, ":End of /NAMES list.")
                self.channels.append(channel)
                self.server.joined += 1
        elif command == "QUIT":
            self.writer.close()

    def welcome(self) -> None:
        if self.welcomed or self.negotiating or not (self.nick and self.user):
            return
        self.welcomed = True
        self.numeric("001", f":Welcome to the line source {self.nick}")
        self.numeric("005", ISUPPORT, ":are supported by this server")
        self.numeric("422", ":MOTD File is missing")
        self.server.registered += 1


class Server:
    def __init__(self) -> None:
        self.clients: dict[int, Client] = {}
        self.registered = 0
        self.joined = 0
        self._next_index = 0

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._next_index += 1
        client = Client(self, self._next_index, writer)
        self.clients[client.index] = client
        try:
            while not reader.at_eof():
                raw = await reader.readline()
                if not raw:
                    break
                client.handle(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            del self.clients[client.index]
            if client.welcomed:
                self.registered -= 1
            self.joined -= len(client.channels)
            with contextlib.suppress(Exception):
                writer.close()

    def targets(self) -> list[tuple[Client, str]]:
        """Every (connection, channel) joined, in a stable order."""
        return [(c, ch) for c in self.clients.values() for ch in c.channels]

    async def wait_joined(self, count: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while self.joined < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.clients),
            "registered": self.registered,
            "joined": self.joined,
        }

    async def flood(self, lines: int, prefix: str) -> dict[str, Any]:
        """Spread `lines` over every joined channel, prepared first, then written as fast as
        each socket takes them. Line `seq` of target `i` gets the msgid `<prefix><i>.<seq>`."""
        targets = self.targets()
        if not targets:
            raise ValueError("no connection has joined a channel")
        at = time.time()
        payloads: list[tuple[Client, bytes]] = []
        for i, (client, channel) in enumerate(targets):
            share = lines // len(targets) + (1 if i < lines % len(targets) else 0)
            payloads.append(
                (
                    client,
                    b"".join(
                        privmsg(channel, f"{prefix}{i}.{seq}", seq, at + seq / 1000)
                        for seq in range(share)
                    ),
                )
            )

        async def write(client: Client, data: bytes) -> None:
            view = memoryview(data)
            for start in range(0, len(data), WRITE_CHUNK):
                client.writer.write(view[start : start + WRITE_CHUNK])
                await client.writer.drain()

        started = time.time()
        await asyncio.gather(*(write(client, data) for client, data in payloads))
        return {
            "lines": lines,
            "targets": len(targets),
            "bytes": sum(len(data) for _, data in payloads),
            "started": started,
            "finished": time.time(),
        }

    async def paced(self, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
        """`rate` lines a second for `seconds`, round-robin over the joined channels, each
        written when it falls due; returns when each line was written (time.time())."""
        targets = self.targets()
        if not targets:
            raise ValueError("no connection has joined a channel")
        total = round(rate * seconds)
        sent: list[tuple[str, float]] = []
        started = time.time()
        seq = 0
        while seq < total:
            now = time.time()
            due = min(total, int((now - started) * rate) + 1)
            while seq < due:
                client, channel = targets[seq % len(targets)]
                msgid = f"{prefix}{seq}"
                at = time.time()
                client.writer.write(privmsg(channel, msgid, seq, at))
                sent.append((msgid, at))
                seq += 1
            # The next line's due time; asyncio wakes within about a millisecond of it.
            await asyncio.sleep(max(0.0, started + seq / rate - time.time()))
        return {"sent": sent, "started": started, "finished": time.time()}


async def child_main() -> None:
    raise_fd_limit()
    server = Server()
    listener = await asyncio.start_server(
        server.serve_client, "127.0.0.1", 0, backlog=4096, limit=64 * 1024
    )
    port = listener.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    control = asyncio.StreamReader(limit=1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control), sys.stdin)

    def reply(payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    reply({"port": port, "pid": os.getpid()})
    while True:
        raw = await control.readline()
        if not raw:
            break
        command = json.loads(raw)
        op = command.pop("op")
        try:
            if op == "quit":
                break
            if op == "stats":
                reply(server.stats())
            elif op == "wait_joined":
                reply(await server.wait_joined(command["count"], command["timeout"]))
            elif op == "flood":
                reply(await server.flood(command["lines"], command["prefix"]))
            elif op == "paced":
                reply(await server.paced(command["rate"], command["seconds"], command["prefix"]))
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
    listener.close()
    for client in list(server.clients.values()):
        client.writer.close()


# --- the parent: a handle on the child -------------------------------------------------------


class LineSourceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Flood:
    lines: int
    targets: int
    bytes: int
    started: float  # time.time() just before the first write
    finished: float  # time.time() when the last byte was handed to the kernel


class LineSource:
    """The line source in a child process; `with LineSource() as source: source.port ...`."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.port = 0
        self.pid = 0

    def __enter__(self) -> "LineSource":
        self._process = subprocess.Popen(  # noqa: S603 (this file, run by this Python)
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._reply(30)
        self.port, self.pid = int(hello["port"]), int(hello["pid"])
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(Exception):
            assert process.stdin is not None
            process.stdin.write('{"op":"quit"}\n')
            process.stdin.flush()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = None

    def _reply(self, timeout: float) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            raise LineSourceError(f"the line source did not answer within {timeout:.0f} s")
        line = self._process.stdout.readline()
        if not line:
            raise LineSourceError(f"the line source exited ({self._process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise LineSourceError(reply["error"])
        return reply

    def _call(self, op: str, wait: float, **args: Any) -> dict[str, Any]:
        """Send a command and wait up to `wait` seconds for its reply."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._process.stdin.flush()
        return self._reply(wait)

    def stats(self) -> dict[str, int]:
        return self._call("stats", 30)

    def wait_joined(self, count: int, timeout: float) -> dict[str, int]:
        """Wait until `count` channels are joined over all connections; raise on timeout."""
        stats = self._call("wait_joined", timeout + 30, count=count, timeout=timeout)
        if stats["joined"] < count:
            raise LineSourceError(f"only {stats} of {count} joined within {timeout:.0f} s")
        return stats

    def flood(self, lines: int, prefix: str = "f", timeout: float = 600) -> Flood:
        reply = self._call("flood", timeout, lines=lines, prefix=prefix)
        return Flood(**reply)

    def paced(
        self, rate: float, seconds: float, prefix: str = "p"
    ) -> tuple[list[tuple[str, float]], float, float]:
        """Returns [(msgid, written at)], and when the run started and finished."""
        reply = self._call("paced", seconds + 60, rate=rate, seconds=seconds, prefix=prefix)
        sent = [(str(msgid), float(at)) for msgid, at in reply["sent"]]
        return sent, float(reply["started"]), float(reply["finished"])


# --- the gateway side ------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class CountStatePublishFailures(logging.Filter):
    """Counts, and keeps out of the benchmark's stderr, the gateway's warnings that a
    connection-state event could not be published (one traceback per connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "could not publish server state":
            self.count += 1
            return False
        return True


class GatewayThread:
    """A real Gateway on an event loop of its own thread, as tests/test_gateway.py runs it
    (and as `manage.py irc_gateway` runs it, but sharing the process with the benchmark)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.gateway: Gateway | None = None
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="gateway", daemon=True)
        self.state_publish_failures = CountStatePublishFailures()
        logging.getLogger("gateway.manager").addFilter(self.state_publish_failures)

    def _main(self) -> None:
        from gateway.manager import Gateway

        asyncio.set_event_loop(self.loop)

        async def run() -> None:
            self.gateway = Gateway()
            try:
                await self.gateway.run()
            except BaseException as exc:
                self.failed = exc

        self.loop.create_task(run())
        self.loop.run_forever()

    def start(self, timeout: float = 120) -> "Gateway":
        self.thread.start()
        wait_until(
            lambda: (
                self.failed is not None
                or (self.gateway is not None and self.gateway.ready.is_set())
            ),
            timeout,
            "the gateway to load its accounts",
        )
        if self.failed is not None:
            raise RuntimeError(f"the gateway failed to start: {self.failed!r}")
        assert self.gateway is not None
        return self.gateway

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            if self.gateway is not None:
                self.call(self.gateway.stop())
                self.call(self.gateway.store.close())
                # The last connection-state publishes run in tasks of their own.
                self.call(self._settle(), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            logging.getLogger("gateway.manager").removeFilter(self.state_publish_failures)
            if self.state_publish_failures.count:
                print(
                    f"the gateway failed to publish {self.state_publish_failures.count:,} "
                    "connection-state events (its warnings are counted, not shown)",
                    file=sys.stderr,
                    flush=True,
                )

    @staticmethod
    async def _settle(timeout: float = 10) -> None:
        """Let the loop's other tasks finish, then cancel what is left."""
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            _, pending = await asyncio.wait(others, timeout=timeout)
            for task in pending:
                task.cancel()

    def wait_quiet(self, timeout: float, quiet: float = 0.5) -> None:
        """Wait until the store has written everything and nothing new arrived for `quiet` s."""
        assert self.gateway is not None
        store = self.gateway.store
        deadline = time.monotonic() + timeout
        last, since = store.stored, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if store.backlog or store.stored != last:
                last, since = store.stored, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
        raise TimeoutError(f"the gateway's store still busy after {timeout:.0f} s")


def create_accounts(
    count: int,
    *,
    port: int,
    servers_per_account: int = 1,
    autoconnect: bool = True,
    name_prefix: str = "Bench",
    progress: str = "accounts",
) -> list["Account"]:
    """`count` accounts through provision_account, each with servers on the line source and
    one autojoin channel on each server, created in the account's schema."""
    from tqdm import tqdm

    from channels_app.models import Channel, Server
    from tenancy import switch
    from tenancy.services import provision_account

    accounts = []
    for i in tqdm(range(count), desc=progress, unit="account", file=sys.stderr):
        account = provision_account(name=f"{name_prefix} {i:05d}")
        with switch(account):
            servers = Server.objects.bulk_create(
                Server(
                    name=f"Line source {s:03d}",
                    host="127.0.0.1",
                    port=port,
                    tls=False,
                    tls_verify=False,
                    nick=f"pal{i}x{s}",
                    username="palaver",
                    realname="Palaver benchmark",
                    autoconnect=autoconnect,
                )
                for s in range(servers_per_account)
            )
            Channel.objects.bulk_create(
                Channel(server=server, name="#bench", kind=Channel.Kind.CHANNEL, autojoin=True)
                for server in servers
            )
        accounts.append(account)
    return accounts


def forget_server_states(accounts: list["Account"]) -> None:
    """Remove the connection-state keys the gateway left in Redis for these accounts."""
    from channels_app import events
    from channels_app.models import Server
    from tenancy import switch

    client = events.redis_client()
    pipe = client.pipeline(transaction=False)
    for account in accounts:
        with switch(account):
            for server_id in Server.objects.values_list("pk", flat=True):
                pipe.delete(events.server_state_key(account.pk, server_id))
    pipe.execute()


def rss_kb(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default), from /proc/<pid>/status."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc status")


if __name__ == "__main__":
    asyncio.run(child_main())
