"""Benchmark: an agent answering a mention on IRC, runs per second per worker, the scheduler tick.

    .venv/bin/python benchmarks/agent_runs.py [--mentions K] [--latency-runs N] [--runs M]
        [--concurrency C] [--tick-accounts A] [--skip-mention] [--skip-first-line]
        [--skip-runs] [--skip-tick] [--database NAME] [--redis-db K] [--keep]

The three targets of issue 8 in one run: mention -> first reply line on IRC (p50 < 100 ms,
p99 < 300 ms, Palaver's own overhead), runs in flight per worker (>= 100 runs/s with a 1 s
provider, one worker process), and the scheduler tick over 10,000 accounts (p99 < 100 ms).

One account with a server, two channels (50 lines of history each, for the context) and an
agent `helper` (cooldown_seconds 0: every mention is a run) whose provider is a loopback
OpenAI-compatible server (tests/llm_servers.py) that the real `openai` SDK talks to. ONE agents
worker runs as a child process, as scripts/run_all.py starts it:
`celery -A config worker -Q agents -P threads -c C`.

(m) Mention to IRC, the whole real path: InspIRCd 3 on loopback (tests/ircd.py), a real gateway
    on a thread of this process (tests/gateway_support.GatewayThread: the user's connection and
    the agent's own), a default-queue worker as a child process as scripts/run_all.py starts it
    (`-Q celery -c 2`: the message-hook task, agents/triggers.py, create_task), the agents
    worker, the provider answering at once. A client on IRC (tests/ircd.IrcBot) says
    "helper: question N" in the channel, K times (default 100), one at a time, 50-100 ms after
    the previous answer; the clock runs from its send to its receipt of the agent's first
    PRIVMSG. The split comes from the rows' clocks (one machine): the line's row built by the
    gateway's writer (Message.created_at), the task created by the trigger (Task.created_at),
    the run started (Task.started_at), its first line published (Task.first_line_at), and the
    line received by the client.
    Lifted for it, because they are policy and not overhead: the gateway's send pacing
    (GATEWAY_SEND_BURST / GATEWAY_SEND_INTERVAL_SECONDS, irssi's 5 lines then one per 2.2 s,
    set here to 100,000 / 1 ms in the environment before Django reads its settings, so for
    the gateway thread of this process and the workers alike); one short answer per mention
    would otherwise leave the burst after 5 mentions and wait 2.2 s each. InspIRCd's flood
    limits are already off in tests/ircd.py's configuration (threshold 1,000,000, commandrate
    1,000,000,000, fakelag no), and its registration delay is kept short by its waker.
(a) The run alone: the provider answers at once; N runs one after another, each timed from
    `create_task` (the row, the commit, the queueing) to its first AgentSay arriving on the
    gateway's Redis channel: broker, worker, context, the SDK's HTTP round trip, streaming,
    the line published. No gateway runs then.
(b) Runs in flight: the provider takes `--delay` seconds (default 1) per answer; M tasks
    (default 500) are queued at once (one commit), and the clock runs from that commit to the
    last run's finished_at. While they run, the database connections the worker holds are
    sampled from pg_stat_activity (the runner's bound, AGENT_DB_CONNECTIONS), and the runs in
    flight are counted from the tasks' started_at/finished_at. The worker has
    AGENT_WORKER_CONCURRENCY threads (200) unless --concurrency says otherwise, and the
    provider runs in a child process of its own (tests.llm_servers.ProviderProcess).
    Plus the price of that bound: a query handed to one of the runner's database threads
    minus the same query inline, `handoff_ms` (a plain run pays it twice), and, for the
    alternative the runner does not take, a query on a fresh connection (connect,
    authentication, SET search_path, cold catalog caches) minus the same on an open one,
    `reconnect_ms`.
(t) The scheduler tick: benchmarks/scheduler_tick.py run as a child process first, over
    --tick-accounts accounts (default 10,000) in a database of its own (NAME_tick), on the same
    Redis database, before any worker starts; its tick_ms_p50/p99 are reported here.

It runs in a database of its own (`palaver_bench_agents` on the server DATABASE_URL names),
dropped and recreated at the start and dropped at the end unless --keep, and on a Redis
database of its own (--redis-db, default 4) with its own pub/sub prefix (with this process'
id: pub/sub ignores the database number).

stdout gets exactly one line (the fields of a skipped part left out):
    mention_to_irc_ms_p50=… mention_to_irc_ms_p99=… mentions=… mention_stored_ms_p50=…
    mention_task_ms_p50=… mention_started_ms_p50=… mention_said_ms_p50=…
    runs_per_s=… runs=… delay_s=… concurrency=… in_flight_peak=… db_connections_peak=…
    handoff_ms=… reconnect_ms=… worker_cpu_ms_per_run=…
    scheduler_tick_ms_p50=… scheduler_tick_ms_p99=… scheduler_accounts=… scheduler_due=…
    first_line_ms_p50=… first_line_ms_p99=… latency_runs=… load_avg_1m=…
mention_*_ms_p50 are the split of (m), cumulative from the client's send (percentiles do not
subtract; stderr gives each stage's own distribution). worker_cpu_ms_per_run is the agents
worker's CPU time during (b) divided by the runs: on a shared machine, runs_per_s is capped
near cores available / that. load_avg_1m is the machine's at the end (the machine is shared;
each part logs it too). Everything else goes to stderr.
"""

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
)

DEFAULT_DATABASE = "palaver_bench_agents"
CHANNEL_PREFIX = "palaver-bench-agents"
AGENT_NICK = "helper"
MENTION_CHANNEL = "#mention"
ANSWER = "Pong."
# The gateway's send pacing, lifted (see the docstring): a burst no run reaches, 1 ms between
# lines after it (the token bucket needs an interval above zero).
SEND_BURST = "100000"
SEND_INTERVAL_SECONDS = "0.001"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--mentions", type=int, default=100, help="mentions timed on IRC in (m) (default 100)"
    )
    parser.add_argument(
        "--latency-runs", type=int, default=200, help="runs timed one by one in (a) (default 200)"
    )
    parser.add_argument(
        "--runs", type=int, default=500, help="runs queued at once for the rate (default 500)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="the worker's threads (default AGENT_WORKER_CONCURRENCY, 200: with runs of at "
        "least a second, fewer than 100 threads can never complete 100 runs a second)",
    )
    parser.add_argument(
        "--delay", type=float, default=1.0, help="seconds the provider takes in (b) (default 1)"
    )
    parser.add_argument(
        "--db-connections",
        type=int,
        default=10,
        help="AGENT_DB_CONNECTIONS for the worker (default 10)",
    )
    parser.add_argument(
        "--tick-accounts",
        type=int,
        default=10_000,
        help="accounts for the scheduler tick (default 10,000)",
    )
    parser.add_argument("--ticks", type=int, default=200, help="timed ticks (default 200)")
    parser.add_argument("--skip-mention", action="store_true", help="skip (m), IRC")
    parser.add_argument("--skip-first-line", action="store_true", help="skip (a)")
    parser.add_argument("--skip-runs", action="store_true", help="skip (b) and the hand-off")
    parser.add_argument("--skip-tick", action="store_true", help="skip (t), the scheduler tick")
    parser.add_argument(
        "--redis-db", type=int, default=4, help="Redis database number to use (default 4)"
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if min(args.mentions, args.latency_runs, args.runs) < 2:
        parser.error("--mentions, --latency-runs and --runs need at least 2 (percentiles)")
    return args


def redis_url_for(db: int) -> str:
    base = os.environ.get("REDIS_URL") or ""
    if not base:
        from config.env import setting

        base = setting("REDIS_URL", default="")
    if not base:
        raise BenchmarkError("REDIS_URL is not set: this benchmark needs a real Redis")
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{db}"))


def percentile(samples: list[float], pct: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


def spread(samples: list[float]) -> str:
    return (
        f"p50 {statistics.median(samples):.1f} ms, p90 {percentile(samples, 90):.1f}, "
        f"p99 {percentile(samples, 99):.1f}, max {max(samples):.1f}"
    )


def load_average() -> float:
    return os.getloadavg()[0]


class Worker:
    """A `celery worker` on one queue as a child process, its output in a file."""

    def __init__(self, env: dict[str, str], *, name: str, queue: str, options: list[str]) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            prefix=f"bench-agents-{name}-", suffix=".log", delete=False
        )
        argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue, *options]
        argv += ["-n", f"bench-{name}-{os.getpid()}@%h", "-l", "warning"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.process = subprocess.Popen(  # noqa: S603
            argv,
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self) -> None:
        if self.process.poll() is not None:
            raise BenchmarkError(
                f"the {self.name} worker exited ({self.process.returncode}): {self.tail()}"
            )

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_sockets_to(pid: int, port: int) -> int:
    """TCP connections process `pid` holds open (ESTABLISHED) to `port`, from /proc: what
    the worker really holds, where pg_stat_activity also lists backends still exiting after
    their client closed."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


class ConnectionSampler(threading.Thread):
    """Counts the worker's open database connections every 10 ms."""

    def __init__(self, pid: int, port: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.port = port
        self.samples: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(open_sockets_to(self.pid, self.port))
            self._halt.wait(0.01)

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return max(self.samples, default=0)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, *workers: Worker) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for worker in workers:
            worker.check()
        if time.monotonic() > deadline:
            said = "; ".join(f"the {w.name} worker said: {w.tail()}" for w in workers)
            raise BenchmarkError(f"timed out waiting for {what}; {said}")
        time.sleep(0.02)


def stop_ircd(ircd: Any) -> None:
    """Stop the InspIRCd of (m) and remove its directory (configuration, logs)."""
    ircd.stop()
    shutil.rmtree(ircd.directory, ignore_errors=True)


def scheduler_tick(args: argparse.Namespace) -> dict[str, str]:
    """(t): benchmarks/scheduler_tick.py as a child, its one line parsed."""
    argv = [sys.executable, str(PROJECT_DIR / "benchmarks" / "scheduler_tick.py")]
    argv += ["--accounts", str(args.tick_accounts), "--ticks", str(args.ticks)]
    argv += ["--database", f"{args.database}_tick", "--redis-db", str(args.redis_db)]
    log(f"(t) the scheduler tick over {args.tick_accounts:,} accounts (load {load_average():.2f})")
    result = subprocess.run(  # noqa: S603 - this interpreter, our own script
        argv, cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True, timeout=1800, check=False
    )
    if result.returncode != 0:
        raise BenchmarkError(f"benchmarks/scheduler_tick.py failed ({result.returncode})")
    fields = dict(item.split("=", 1) for item in result.stdout.split())
    log(f"(t) {result.stdout.strip()}")
    return {
        "scheduler_tick_ms_p50": fields["tick_ms_p50"],
        "scheduler_tick_ms_p99": fields["tick_ms_p99"],
        "scheduler_accounts": fields["accounts"],
        "scheduler_due": fields["due"],
    }


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from agents.models import Agent, Task
    from agents.services.tasks import create_task
    from channels_app.events import GATEWAY_COMMANDS, open_command, parse_command, redis_client
    from channels_app.models import Channel, Message, Server
    from config.celery import app
    from llms.models import LLM
    from llms.services import save_account_llm, sync_tool_catalog
    from tenancy import switch
    from tenancy.services import provision_account
    from tests.ircd import InspIRCd
    from tests.llm_servers import ProviderProcess, Reply

    fields: dict[str, str] = {}
    if not args.skip_tick:
        # First, before any worker or server of ours competes for the CPU.
        fields.update(scheduler_tick(args))

    pacing = (settings.GATEWAY_SEND_BURST, settings.GATEWAY_SEND_INTERVAL_SECONDS)
    if pacing != (int(SEND_BURST), float(SEND_INTERVAL_SECONDS)):
        raise BenchmarkError("the gateway's send pacing was not lifted (GATEWAY_SEND_*)")

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    sync_tool_catalog()

    if args.concurrency is None:
        args.concurrency = settings.AGENT_WORKER_CONCURRENCY
    # The loopback provider in a child process of its own: it is not Palaver, and in this
    # process its threads took a share of the CPU (and the GIL) the measurement needs.
    server = ProviderProcess(default=Reply(chunks=[ANSWER], usage=(120, 3))).start()
    ircd: InspIRCd | None = None
    workers: list[Worker] = []
    sampler: ConnectionSampler | None = None
    try:
        if not args.skip_mention:
            ircd = InspIRCd(directory=Path(tempfile.mkdtemp(prefix="bench-agents-ircd-")))
            ircd.start()
            log(f"InspIRCd on 127.0.0.1:{ircd.port}")
        llm = LLM.objects.create(name="Loopback", kind=LLM.Kind.OPENAI, base_url=server.openai_url)
        account = provision_account(name="Agents bench")
        provider = save_account_llm(
            account=account,
            llm=llm,
            api_key="sk-bench",
            enabled_models=["bench-model"],
            default_model="bench-model",
        )
        with switch(account):
            irc = Server.objects.create(
                name="Bench",
                host="127.0.0.1",
                port=ircd.port if ircd is not None else 6667,
                tls=False,
                tls_verify=False,
                nick="bench",
                # Only (m) runs a gateway; without it, nothing connects anyway.
                autoconnect=ircd is not None,
            )
            channel = Channel.objects.create(
                server=irc, name="#bench", topic="Benchmarks", autojoin=False
            )
            room = Channel.objects.create(server=irc, name=MENTION_CHANNEL, autojoin=True)
            now = timezone.now()
            Message.objects.bulk_create(
                Message(
                    channel=where,
                    sender=f"user{n % 7}",
                    text=f"line {n}: what people say in a channel before someone asks",
                    server_time=now,
                )
                for where in (channel, room)
                for n in range(50)
            )
            agent = Agent.objects.create(
                name="Bench",
                nick=AGENT_NICK,
                account_llm=provider,
                model="bench-model",
                cooldown_seconds=0,
            )
            agent.channels.set([channel, room])

        with app.connection() as conn:
            conn.default_channel.queue_purge("agents")
            conn.default_channel.queue_purge("celery")

        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": bench_url,
                "REDIS_URL": settings.REDIS_URL,
                "REDIS_CHANNEL_PREFIX": settings.REDIS_CHANNEL_PREFIX,
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "DEBUG": "false",
                "AGENT_DB_CONNECTIONS": str(args.db_connections),
                "PYTHONUNBUFFERED": "1",
            }
        )
        log(f"starting the agents worker: -P threads -c {args.concurrency}")
        worker = Worker(
            env,
            name="agents",
            queue="agents",
            options=["-P", "threads", "-c", str(args.concurrency)],
        )
        workers.append(worker)
        default_worker: Worker | None = None
        if not args.skip_mention:
            # As scripts/run_all.py starts it (without beat): prefork, two processes.
            log("starting the default-queue worker: -Q celery -c 2")
            default_worker = Worker(env, name="default", queue="celery", options=["-c", "2"])
            workers.append(default_worker)

        def ask(text: str) -> int:
            with switch(account):
                task = create_task(
                    agent=agent,
                    trigger=Task.Trigger.MENTION,
                    input=text,
                    channel=channel,
                    requested_by="alice",
                )
            return int(task.pk)

        def finished(ids: list[int]) -> int:
            with switch(account):
                return Task.objects.filter(
                    pk__in=ids, status__in=[Task.Status.SUCCEEDED, Task.Status.FAILED]
                ).count()

        warm = ask("warm up")
        wait_for(lambda: finished([warm]) == 1, 90, "the worker's first run", *workers)
        log("worker ready")

        if ircd is not None and default_worker is not None:
            fields.update(mentions(args, account, ircd, workers))
            default_worker.stop()
            workers.remove(default_worker)
            stop_ircd(ircd)
            ircd = None

        if not args.skip_first_line:
            # (a) task created -> first AgentSay on Redis, one run at a time.
            client = redis_client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(GATEWAY_COMMANDS)
            time.sleep(0.2)
            latencies: list[float] = []
            latency_ids: list[int] = []
            log(f"(a) {args.latency_runs} runs one by one (load {load_average():.2f})")
            for n in range(args.latency_runs):
                started = time.perf_counter()
                latency_ids.append(ask(f"question {n}"))
                deadline = time.monotonic() + 30
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        payload = open_command(message["data"])
                        if payload and parse_command(payload) is not None:
                            latencies.append((time.perf_counter() - started) * 1000)
                            break
                    if time.monotonic() > deadline:
                        worker.check()
                        raise BenchmarkError(f"run {n}: no line within 30 s")
            pubsub.close()
            client.close()
            wait_for(
                lambda: finished(latency_ids) == len(latency_ids), 60, "the timed runs", worker
            )
            p50, p99 = statistics.median(latencies), percentile(latencies, 99)
            with switch(account):
                timed = list(
                    Task.objects.filter(pk__in=latency_ids).values_list(
                        "created_at", "started_at", "first_line_at"
                    )
                )
            queued_ms = [(s - c).total_seconds() * 1000 for c, s, f in timed if s and f]
            running_ms = [(f - s).total_seconds() * 1000 for c, s, f in timed if s and f]
            log(f"(a) of which queued (created_at to started_at): {spread(queued_ms)}")
            log(f"(a) of which running (started_at to first_line_at): {spread(running_ms)}")
            log(f"(a) first line: {spread(latencies)}, min {min(latencies):.1f} ms")
            fields.update(
                first_line_ms_p50=f"{p50:.1f}",
                first_line_ms_p99=f"{p99:.1f}",
                latency_runs=str(len(latencies)),
            )

        if not args.skip_runs:
            # (b) M runs queued at once against a provider taking `delay` seconds each.
            log(f"(b) {args.runs} runs queued at once (load {load_average():.2f})")
            server.default = Reply(
                chunks=["Done, after a while."], delay=args.delay, usage=(120, 5)
            )
            sampler = ConnectionSampler(worker.process.pid, urlsplit(bench_url).port or 5432)
            sampler.start()
            committed: list[float] = []
            cpu_before = cpu_seconds(worker.process.pid)
            own_before = time.process_time()
            with switch(account), transaction.atomic():
                transaction.on_commit(lambda: committed.append(time.time()))
                ids = [ask(f"slow question {n}") for n in range(args.runs)]
            wait_for(lambda: finished(ids) == len(ids), 60 + args.runs * args.delay, "(b)", worker)
            db_peak = sampler.stop()
            sampler = None
            cpu_b = (cpu_seconds(worker.process.pid) - cpu_before) * 1000 / len(ids)
            own_b = (time.process_time() - own_before) * 1000 / len(ids)
            with switch(account):
                rows = list(
                    Task.objects.filter(pk__in=ids).values_list(
                        "status", "started_at", "finished_at"
                    )
                )
            failed = sum(1 for status, _, _ in rows if status != Task.Status.SUCCEEDED)
            if failed:
                raise BenchmarkError(f"{failed} of {len(ids)} runs failed")
            spans = [(started, done) for _, started, done in rows if started and done]
            last = max(done for _, done in spans).timestamp()
            seconds = last - committed[0]
            rate = len(ids) / seconds
            edges = sorted(
                [(started.timestamp(), 1) for started, _ in spans]
                + [(done.timestamp(), -1) for _, done in spans]
            )
            in_flight = peak = 0
            for _, step in edges:
                in_flight += step
                peak = max(peak, in_flight)
            log(
                f"(b) {len(ids)} runs of {args.delay:.1f} s in {seconds:.2f} s: {rate:.1f} "
                f"runs/s, {peak} in flight at most, {db_peak} database connections at most "
                f"(bound {args.db_connections}); the provider served {server.served} calls; "
                f"the worker used {cpu_b:.1f} ms of CPU per run, this process "
                f"(queueing, the provider) {own_b:.1f} ms"
            )

            # The bound's price. What the runner pays: a hand-off to a database thread holding
            # an open connection, against the same query inline. What closing the run thread's
            # own connection between stretches (the alternative) would pay: a fresh connection.
            from agents.runner.db import on_database, shutdown_database_threads

            def query() -> bool:
                return Task.objects.filter(pk=warm).exists()

            with switch(account):
                inline: list[float] = []
                handed: list[float] = []
                fresh: list[float] = []
                for _ in range(300):
                    started = time.perf_counter()
                    query()
                    inline.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    on_database(query)
                    handed.append((time.perf_counter() - started) * 1000)
                    connection.close()
                    started = time.perf_counter()
                    query()
                    fresh.append((time.perf_counter() - started) * 1000)
            shutdown_database_threads()
            handoff = statistics.median(handed) - statistics.median(inline)
            reconnect = statistics.median(fresh) - statistics.median(inline)
            log(
                f"one query: {statistics.median(inline):.2f} ms inline, "
                f"{statistics.median(handed):.2f} ms through a database thread, "
                f"{statistics.median(fresh):.2f} ms on a fresh connection"
            )
            fields.update(
                runs_per_s=f"{rate:.1f}",
                runs=str(len(ids)),
                delay_s=f"{args.delay:g}",
                concurrency=str(args.concurrency),
                in_flight_peak=str(peak),
                db_connections_peak=str(db_peak),
                handoff_ms=f"{handoff:.2f}",
                reconnect_ms=f"{reconnect:.2f}",
                worker_cpu_ms_per_run=f"{cpu_b:.1f}",
            )

        order = [
            "mention_to_irc_ms_p50",
            "mention_to_irc_ms_p99",
            "mentions",
            "mention_stored_ms_p50",
            "mention_task_ms_p50",
            "mention_started_ms_p50",
            "mention_said_ms_p50",
            "runs_per_s",
            "runs",
            "delay_s",
            "concurrency",
            "in_flight_peak",
            "db_connections_peak",
            "handoff_ms",
            "reconnect_ms",
            "worker_cpu_ms_per_run",
            "scheduler_tick_ms_p50",
            "scheduler_tick_ms_p99",
            "scheduler_accounts",
            "scheduler_due",
            "first_line_ms_p50",
            "first_line_ms_p99",
            "latency_runs",
        ]
        fields["load_avg_1m"] = f"{load_average():.2f}"
        print(
            " ".join(f"{key}={fields[key]}" for key in [*order, "load_avg_1m"] if key in fields),
            file=result_out,
            flush=True,
        )
    finally:
        if sampler is not None:
            sampler.stop()
        for each in workers:
            each.stop()
        if ircd is not None:
            stop_ircd(ircd)
        server.stop()


def mentions(
    args: argparse.Namespace, account: Any, ircd: Any, workers: list[Worker]
) -> dict[str, str]:
    """(m): "helper: question N" said on IRC, timed to the agent's first PRIVMSG back."""
    from agents.models import Task
    from channels_app.models import Message
    from tenancy import switch
    from tests.gateway_support import GatewayThread
    from tests.ircd import IrcBot, IrcLine

    bot = IrcBot("asker")
    bot.connect(ircd.host, ircd.port, "asker")
    bot.join(MENTION_CHANNEL)
    runner = GatewayThread().start()
    try:
        # The user's connection (which stores the channel's lines) and the agent's own.
        for nick in ("bench", AGENT_NICK):
            bot.wait_for(rf"^:{nick}!\S+ JOIN :?{MENTION_CHANNEL}$", timeout=60, since=0)
        log("(m) the user's connection and the agent's are in the channel")

        def answer(line: IrcLine) -> bool:
            return (
                line.command == "PRIVMSG"
                and line.nick == AGENT_NICK
                and line.params[0].lower() == MENTION_CHANNEL
            )

        def ask(question: str) -> tuple[float, float]:
            """Say it; (when it was sent by the wall clock, ms until the first answer)."""
            mark = bot.mark()
            sent_wall, sent = time.time(), time.monotonic()
            bot.say(MENTION_CHANNEL, f"{AGENT_NICK}: {question}")
            try:
                line = bot.wait_for(answer, timeout=30, since=mark)
            except AssertionError as error:
                for worker in workers:
                    worker.check()
                raise BenchmarkError(f"(m) no answer to {question!r}: {error}") from None
            if line.text != ANSWER:
                raise BenchmarkError(f"(m) the agent said {line.text!r} to {question!r}")
            return sent_wall, (line.received_at - sent) * 1000

        for n in range(3):  # warm-up: the hook task's first run, the gateway's paths
            ask(f"warm-up {n}")
        rng = random.Random(8)  # the spacing, reproducible
        log(f"(m) {args.mentions} mentions (load {load_average():.2f})")
        timed: dict[str, tuple[float, float]] = {}
        for n in range(args.mentions):
            time.sleep(rng.uniform(0.05, 0.1))
            timed[f"question {n}"] = ask(f"question {n}")
        if runner.failed is not None:
            raise BenchmarkError(f"the gateway crashed: {runner.failed!r}")
    finally:
        bot.quit()
        runner.stop()

    with switch(account):
        tasks = list(
            Task.objects.filter(trigger=Task.Trigger.MENTION, input__in=list(timed)).values_list(
                "input", "source_message_id", "created_at", "started_at", "first_line_at"
            )
        )
        built = dict(
            Message.objects.filter(pk__in=[t[1] for t in tasks]).values_list("pk", "created_at")
        )
    if len(tasks) != len(timed) or len({t[0] for t in tasks}) != len(timed):
        raise BenchmarkError(f"(m) {len(tasks)} runs for {len(timed)} mentions")
    latencies = [ms for _, ms in timed.values()]
    # Each stage from the client's send, by the wall clock (one machine), and on its own.
    stages: dict[str, list[float]] = {k: [] for k in ("stored", "task", "started", "said")}
    own: dict[str, list[float]] = {
        "sent -> row built by the gateway's writer": [],
        "row built -> task created (hook task, trigger)": [],
        "task created -> run started (agents worker)": [],
        "run started -> first line published": [],
        "first line published -> received on IRC": [],
    }
    for question, message_id, created, started, said in tasks:
        if message_id is None or started is None or said is None:
            raise BenchmarkError(f"(m) the run for {question!r} has no source line or times")
        sent_wall, ms = timed[question]
        points = [
            sent_wall,
            built[message_id].timestamp(),
            created.timestamp(),
            started.timestamp(),
            said.timestamp(),
            sent_wall + ms / 1000,
        ]
        for name, at in zip(stages, points[1:5], strict=True):
            stages[name].append((at - sent_wall) * 1000)
        for samples, begin, end in zip(own.values(), points[:-1], points[1:], strict=True):
            samples.append((end - begin) * 1000)
    for name, samples in own.items():
        log(f"(m) {name}: {spread(samples)}")
    log(f"(m) mention -> first line on IRC: {spread(latencies)}, min {min(latencies):.1f} ms")
    result = {
        "mention_to_irc_ms_p50": f"{statistics.median(latencies):.1f}",
        "mention_to_irc_ms_p99": f"{percentile(latencies, 99):.1f}",
        "mentions": str(len(latencies)),
    }
    for name, samples in stages.items():
        result[f"mention_{name}_ms_p50"] = f"{statistics.median(samples):.1f}"
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before Django reads its settings: a Redis database and pub/sub prefix of our own (with
    # our pid: pub/sub channels are shared by every database of a Redis server), and the
    # gateway's send pacing lifted, for the gateway thread here and the workers alike.
    os.environ["REDIS_URL"] = redis_url_for(args.redis_db)
    os.environ["REDIS_CHANNEL_PREFIX"] = f"{CHANNEL_PREFIX}-{os.getpid()}"
    os.environ["GATEWAY_SEND_BURST"] = SEND_BURST
    os.environ["GATEWAY_SEND_INTERVAL_SECONDS"] = SEND_INTERVAL_SECONDS
    return run_in_scratch_database(args, title="agents benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
