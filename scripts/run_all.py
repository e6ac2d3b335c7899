"""Run the web server, the IRC gateway and the Celery workers together (`make run`): one for
the default queue (with beat), one for agent runs (a threads pool: many runs in flight).

    .venv/bin/python scripts/run_all.py        # PORT=8000 by default

Every child gets the same DATABASE_URL and REDIS_URL. When those are unset (in the environment
and in .env), the embedded PostgreSQL and Redis are started here, once, before any child, and
their URLs are handed down, so they never race to start servers of their own (see
config/embedded.py; the servers keep running after this exits, until `make stop`).

Each child runs in a process group of its own and its output is prefixed with its name. Ctrl-C
(SIGINT) or SIGTERM stops them all: SIGTERM goes to each child's process group (Celery's pool
processes included), SIGKILL after a grace period. If a child exits on its own, the others
are stopped and this exits non-zero.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

GRACE_SECONDS = 10


def service_urls() -> tuple[dict[str, str], bool]:
    """The URLs both children use, and whether any of them is an embedded server.

    The settings resolve them (starting the embedded servers when the URLs are unset), once,
    here; the database URL is rebuilt from the resolved settings by config.database, the one
    function that turns them into something another process connects with."""
    from config.env import setting  # reads .env the way settings do

    embedded_used = not setting("DATABASE_URL", default="") or not setting("REDIS_URL", default="")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings

    from config import embedded
    from config.database import database_url

    urls = {
        "DATABASE_URL": database_url(settings.DATABASES["default"]),
        "REDIS_URL": settings.REDIS_URL,
    }
    if not setting("DATABASE_URL", default=""):
        print(f"run_all: embedded PostgreSQL under {embedded.PG_DATA_DIR}", flush=True)
    if not setting("REDIS_URL", default=""):
        print(f"run_all: embedded Redis at {embedded.without_password(urls['REDIS_URL'])}")
    return urls, embedded_used


def commands(port: str) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "web": [
            python,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            # Open SSE streams would otherwise hold Ctrl-C until the browser goes away.
            "--timeout-graceful-shutdown",
            "3",
        ],
        "gateway": [python, "manage.py", "irc_gateway"],
        "worker": [
            python,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-l",
            "info",
            # The default queue: short jobs (pruning, ingestion, exports).
            "-Q",
            "celery",
            "-n",
            "default@%h",
            "--concurrency",
            "2",
            # Celery beat inside the worker: periodic tasks (CELERY_BEAT_SCHEDULE, e.g. history
            # pruning). Fine for one development worker; production runs one `celery beat`.
            "--beat",
            "--schedule",
            str(BASE_DIR / "var" / "celerybeat-schedule"),
        ],
        # Agent runs wait seconds on LLM providers: threads keep AGENT_WORKER_CONCURRENCY of
        # them in flight in one process, sharing AGENT_DB_CONNECTIONS database connections
        # (agents/runner/db.py). What benchmarks/agent_runs.py measures: warnings only (Celery
        # logs two INFO lines per task; every run has its run page), and none of the worker
        # chatter (gossip, mingle, heartbeat events) a single development worker has no use for.
        "agents": [
            python,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-l",
            "warning",
            "-Q",
            "agents",
            "-n",
            "agents@%h",
            "-P",
            "threads",
            "-c",
            str(agent_worker_concurrency()),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
    }


def agent_worker_concurrency() -> int:
    from django.conf import settings

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    return int(settings.AGENT_WORKER_CONCURRENCY)


def relay(name: str, stream: IO[bytes], width: int, colour: str) -> None:
    """Copy a child's output to ours, one line at a time, behind its name."""
    reset = "\033[0m" if colour else ""
    prefix = f"{colour}{name.ljust(width)} |{reset} ".encode()
    out = sys.stdout.buffer
    for line in iter(stream.readline, b""):
        out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        out.flush()


class Supervisor:
    def __init__(self, env: dict[str, str], port: str) -> None:
        self.env = env
        self.port = port
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.threads: list[threading.Thread] = []
        self.stop_requested: int | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = signum

    def start(self) -> None:
        palette = ["\033[36m", "\033[33m", "\033[35m", "\033[32m"]
        colours = palette if sys.stdout.isatty() else [""] * len(palette)
        specs = commands(self.port)
        width = max(len(name) for name in specs)
        for (name, argv), colour in zip(specs.items(), colours, strict=True):
            child = subprocess.Popen(  # noqa: S603
                argv,
                cwd=BASE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signalled by us, not the tty
            )
            assert child.stdout is not None
            thread = threading.Thread(
                target=relay, args=(name, child.stdout, width, colour), daemon=True
            )
            thread.start()
            self.children[name] = child
            self.threads.append(thread)

    def wait(self) -> int:
        """Block until a signal arrives or a child exits; return this script's exit code."""
        while True:
            if self.stop_requested is not None:
                name = signal.Signals(self.stop_requested).name
                print(f"run_all: {name} received, stopping {', '.join(self.children)}", flush=True)
                self.stop_all()
                return 0
            for name, child in self.children.items():
                code = child.poll()
                if code is not None:
                    others = [other for other in self.children if other != name]
                    print(
                        f"run_all: {name} exited with code {code}; stopping {', '.join(others)}",
                        flush=True,
                    )
                    self.stop_all()
                    return code or 1
            time.sleep(0.2)

    def stop_all(self) -> None:
        for child in self.children.values():
            self._signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"run_all: {name} did not stop in {GRACE_SECONDS}s, killing it", flush=True)
                self._signal_group(child, signal.SIGKILL)
                child.wait()
            # Pool processes may outlive their parent for a moment; they share its group.
            self._signal_group(child, signal.SIGKILL)
        for thread in self.threads:
            thread.join(timeout=2)

    @staticmethod
    def _signal_group(child: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)


def main() -> int:
    port = os.environ.get("PORT") or "8000"
    env = dict(os.environ)
    urls, embedded_used = service_urls()
    env.update(urls)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    env["PYTHONUNBUFFERED"] = "1"
    env["PORT"] = port

    (BASE_DIR / "var").mkdir(exist_ok=True)  # beat's schedule file lives there
    supervisor = Supervisor(env, port)
    signal.signal(signal.SIGINT, supervisor._on_signal)
    signal.signal(signal.SIGTERM, supervisor._on_signal)
    supervisor.start()
    print(
        f"run_all: Palaver on http://127.0.0.1:{port}/ with the IRC gateway and the Celery "
        "workers; Ctrl-C stops them all",
        flush=True,
    )
    code = supervisor.wait()
    if embedded_used:
        print("run_all: the embedded servers keep running under var/; `make stop` stops them")
    return code


if __name__ == "__main__":
    sys.exit(main())
