"""Benchmark: agent runs, from the task to the first line said, and runs per second per worker.

    .venv/bin/python benchmarks/agent_runs.py [--latency-runs N] [--runs M] [--concurrency C]

One account with a server, a channel (50 lines of history for the context) and an agent whose
provider is a loopback OpenAI-compatible server (tests/llm_servers.py) that the real `openai`
SDK talks to. ONE agents worker runs as a child process, as scripts/run_all.py starts it:
`celery -A config worker -Q agents -P threads -c C`.

(a) Palaver's own overhead: the provider answers at once; N runs one after another, each
    timed from `create_task` (the row, the commit, the queueing) to its first AgentSay arriving
    on the gateway's Redis channel: broker, worker, context, the SDK's HTTP round trip,
    streaming, the line published.
(b) Runs in flight: the provider takes `--delay` seconds (default 1) per answer; M tasks
    (default 500) are queued at once (one commit), and the clock runs from that commit to the
    last run's finished_at. While they run, the database connections the worker holds are
    sampled from pg_stat_activity (the runner's bound, AGENT_DB_CONNECTIONS), and the runs in
    flight are counted from the tasks' started_at/finished_at.
Plus the price of that bound: a query handed to one of the runner's database threads minus
the same query inline, `handoff_ms` (a plain run pays it twice), and, for the alternative the
runner does not take, a query on a fresh connection (connect, authentication, SET search_path,
cold catalog caches) minus the same on an open one, `reconnect_ms`.

It runs in a database of its own (`palaver_bench_agents` on the server DATABASE_URL names),
dropped and recreated at the start and dropped at the end unless --keep, and on a Redis
database of its own (--redis-db, default 4) with its own pub/sub prefix.

stdout gets exactly one line:
    first_line_ms_p50=… first_line_ms_p99=… latency_runs=… runs_per_s=… runs=… delay_s=…
    concurrency=… in_flight_peak=… db_connections_peak=… handoff_ms=… reconnect_ms=…
    worker_cpu_ms_per_run=…
worker_cpu_ms_per_run is the worker process's CPU time during (b) divided by the runs: on a
shared machine, runs_per_s is capped near cores available / that.
Everything else goes to stderr.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--latency-runs", type=int, default=200, help="runs timed one by one (default 200)"
    )
    parser.add_argument(
        "--runs", type=int, default=500, help="runs queued at once for the rate (default 500)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="the worker's threads (default 100)"
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
        "--redis-db", type=int, default=4, help="Redis database number to use (default 4)"
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    return parser.parse_args(argv)


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


class Worker:
    """`celery worker -Q agents -P threads` as a child process, its output in a file."""

    def __init__(self, env: dict[str, str], concurrency: int) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            prefix="bench-agents-worker-", suffix=".log", delete=False
        )
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            "agents",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-n",
            f"bench-agents-{os.getpid()}@%h",
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
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
            raise BenchmarkError(f"the worker exited ({self.process.returncode}): {self.tail()}")

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


def wait_for(condition: Any, timeout: float, what: str, worker: Worker) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        worker.check()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out waiting for {what}; the worker said: {worker.tail()}")
        time.sleep(0.02)


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction

    from agents.models import Agent, Task
    from agents.services.tasks import create_task
    from channels_app.events import GATEWAY_COMMANDS, open_command, parse_command, redis_client
    from channels_app.models import Channel, Message, Server
    from config.celery import app
    from llms.models import LLM
    from llms.services import save_account_llm, sync_tool_catalog
    from tenancy import switch
    from tenancy.services import provision_account
    from tests.llm_servers import LLMServer, Reply

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    sync_tool_catalog()

    server = LLMServer(default=Reply(chunks=["Pong."], usage=(120, 3))).start()
    worker: Worker | None = None
    sampler: ConnectionSampler | None = None
    try:
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
            irc = Server.objects.create(name="Bench", host="irc.example.org", nick="bench")
            channel = Channel.objects.create(server=irc, name="#bench", topic="Benchmarks")
            from django.utils import timezone

            now = timezone.now()
            Message.objects.bulk_create(
                Message(
                    channel=channel,
                    sender=f"user{n % 7}",
                    text=f"line {n}: what people say in a channel before someone asks",
                    server_time=now,
                )
                for n in range(50)
            )
            agent = Agent.objects.create(
                name="Bench", nick="benchbot", account_llm=provider, model="bench-model"
            )

        with app.connection() as conn:
            conn.default_channel.queue_purge("agents")

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
        worker = Worker(env, args.concurrency)

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
        wait_for(lambda: finished([warm]) == 1, 90, "the worker's first run", worker)
        log("worker ready")

        # (a) task created -> first AgentSay on Redis, one run at a time.
        client = redis_client()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(GATEWAY_COMMANDS)
        time.sleep(0.2)
        latencies: list[float] = []
        latency_ids: list[int] = []
        cpu_before = cpu_seconds(worker.process.pid)
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
        wait_for(lambda: finished(latency_ids) == len(latency_ids), 60, "the timed runs", worker)
        cpu_a = (cpu_seconds(worker.process.pid) - cpu_before) * 1000 / len(latencies)
        p50, p99 = statistics.median(latencies), percentile(latencies, 99)
        with switch(account):
            timed = list(
                Task.objects.filter(pk__in=latency_ids).values_list(
                    "created_at", "started_at", "first_line_at"
                )
            )
        queued_ms = [(s - c).total_seconds() * 1000 for c, s, f in timed if s and f]
        running_ms = [(f - s).total_seconds() * 1000 for c, s, f in timed if s and f]
        log(
            f"(a) of which queued (created_at to started_at) {statistics.median(queued_ms):.1f} "
            f"ms p50, {percentile(queued_ms, 99):.1f} p99; running (started_at to first_line_at) "
            f"{statistics.median(running_ms):.1f} ms p50, {percentile(running_ms, 99):.1f} p99"
        )
        log(
            f"(a) first line after {p50:.1f} ms (p50), {p99:.1f} ms (p99), "
            f"min {min(latencies):.1f}, max {max(latencies):.1f} over {len(latencies)} runs"
        )

        # (b) M runs queued at once against a provider taking `delay` seconds each.
        server.default = Reply(chunks=["Done, after a while."], delay=args.delay, usage=(120, 5))
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
        cpu_b = (cpu_seconds(worker.process.pid) - cpu_before) * 1000 / len(ids)
        own_b = (time.process_time() - own_before) * 1000 / len(ids)
        sampler = None
        with switch(account):
            rows = list(
                Task.objects.filter(pk__in=ids).values_list("status", "started_at", "finished_at")
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
            f"(b) {len(ids)} runs of {args.delay:.1f} s in {seconds:.2f} s: {rate:.1f} runs/s, "
            f"{peak} in flight at most, {db_peak} database connections at most "
            f"(bound {args.db_connections}); the provider served {server.served} calls; "
            f"the worker used {cpu_b:.1f} ms of CPU per run ({cpu_a:.1f} in (a)), this process "
            f"(queueing, the provider) {own_b:.1f} ms"
        )

        # The bound's price. What the runner pays: a hand-off to a database thread holding an
        # open connection, against the same query inline. What closing the run thread's own
        # connection between stretches (the alternative) would pay: a fresh connection.
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
        print(
            f"first_line_ms_p50={p50:.1f} first_line_ms_p99={p99:.1f} "
            f"latency_runs={len(latencies)} runs_per_s={rate:.1f} runs={len(ids)} "
            f"delay_s={args.delay:g} concurrency={args.concurrency} in_flight_peak={peak} "
            f"db_connections_peak={db_peak} handoff_ms={handoff:.2f} reconnect_ms={reconnect:.2f} "
            f"worker_cpu_ms_per_run={cpu_b:.1f}",
            file=result_out,
            flush=True,
        )
    finally:
        if sampler is not None:
            sampler.stop()
        if worker is not None:
            worker.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before Django reads its settings: a Redis database and pub/sub prefix of our own.
    os.environ["REDIS_URL"] = redis_url_for(args.redis_db)
    os.environ["REDIS_CHANNEL_PREFIX"] = CHANNEL_PREFIX
    return run_in_scratch_database(args, title="agents benchmark", run=run)


if __name__ == "__main__":
    sys.exit(main())
