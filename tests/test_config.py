"""Start-up failures an operator can fix give one clear line, not a traceback."""

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
import redis
from django.conf import settings
from django.core.checks import WARNING, Tags, run_checks
from django.test import override_settings

from config import embedded
from config.database import connection_params, database_url
from config.env import env

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unreachable_database_is_one_clear_line() -> None:
    result = run_manage(
        "migrate_schemas", "--shared", DATABASE_URL="postgres://postgres@127.0.0.1:1/nowhere"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("palaver: cannot reach the database at 127.0.0.1:1/nowhere")
    assert "Traceback" not in result.stderr


def test_bad_setting_is_one_clear_line() -> None:
    result = run_manage("check", SECRET_ENCRYPTION_KEYS="", DEBUG="maybe")
    assert result.returncode == 2
    assert result.stderr.startswith("palaver: configuration error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_pub_sub_channels_carry_the_deployment_prefix() -> None:
    """Pub/sub ignores Redis database numbers: without the prefix two deployments (or two test
    workers) sharing a Redis would hear each other's events and gateway commands."""
    from django.conf import settings

    from channels_app import events

    prefix = settings.REDIS_CHANNEL_PREFIX + ":"
    assert prefix != "palaver:"  # the tests run under a prefix of their own
    assert events.GATEWAY_COMMANDS.startswith(prefix)
    assert events.events_channel("a").startswith(prefix)
    assert events.server_state_key("a", 1).startswith(prefix)


# --- the connection other processes get (config/database.py) ------------------------------


def test_a_socket_directory_in_options_reaches_helpers_and_children() -> None:
    """The embedded PostgreSQL's URL names its socket directory in `?host=`, which ends up in
    OPTIONS with HOST empty; a helper reading only HOST went to another server."""
    socket_dir = "/opt/palaver test/pgdata"
    db = env.db_url_config(f"postgresql://postgres:@/palaver?host={quote(socket_dir, safe='')}")
    db["OPTIONS"]["connect_timeout"] = 5
    db["OPTIONS"]["isolation_level"] = 1  # Django's, not libpq's: must not reach libpq
    assert db["HOST"] == ""
    params = connection_params(db, dbname="postgres")
    assert params == {
        "host": socket_dir,
        "user": "postgres",
        "dbname": "postgres",
        "connect_timeout": "5",
    }
    url = database_url(db)
    # What a child reads back (django-environ) and what libpq reads are the same server.
    assert connection_params(env.db_url_config(url)) == connection_params(db)
    assert psycopg.conninfo.conninfo_to_dict(url)["host"] == socket_dir


def test_helpers_connect_to_the_server_the_settings_name() -> None:
    with psycopg.connect(**connection_params(settings.DATABASES["default"])) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
    assert name == (settings.DATABASES["default"]["NAME"],)
    with psycopg.connect(database_url(settings.DATABASES["default"])) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == name


# --- the embedded Redis requires a password ------------------------------------------------


@pytest.fixture
def embedded_redis_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """config.embedded's Redis, real, with its files in a temporary directory instead of var/
    (a test must not start or stop the checkout's own servers)."""
    monkeypatch.setattr(embedded, "VAR_DIR", tmp_path)
    monkeypatch.setattr(embedded, "PG_DATA_DIR", tmp_path / "pgdata")
    monkeypatch.setattr(embedded, "REDIS_DIR", tmp_path / "redis")
    monkeypatch.setattr(embedded, "_REDIS_PIDFILE", tmp_path / "redis" / "redis.pid")
    monkeypatch.setattr(embedded, "_REDIS_URLFILE", tmp_path / "redis" / "url")
    try:
        yield tmp_path / "redis"
    finally:
        embedded.stop()


def test_embedded_redis_refuses_a_client_without_the_password(embedded_redis_dir: Path) -> None:
    password = secrets.token_urlsafe(32)
    url = embedded.redis_url(password=password)
    parts = urlsplit(url)
    assert parts.password == password
    assert redis.Redis.from_url(url).ping()
    assert parts.hostname is not None
    anonymous = redis.Redis(host=parts.hostname, port=parts.port or 0, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(password, "wrong-" + password)).ping()
    # Written nowhere but the configuration file, which only its owner can read.
    config = embedded_redis_dir / "redis.conf"
    assert config.stat().st_mode & 0o077 == 0
    for path in embedded_redis_dir.iterdir():
        if path != config and path.is_file():
            assert password not in path.read_text(errors="replace"), path
    assert password not in embedded.without_password(url)
    assert embedded.without_password(url) == f"redis://:***@{parts.netloc.rpartition('@')[2]}/0"


def test_embedded_redis_with_another_password_is_replaced(embedded_redis_dir: Path) -> None:
    """A server started before it had a password (or with an old one) does not linger."""
    first = embedded.redis_url(password=secrets.token_urlsafe(32))
    first_pid = embedded._redis_pid()
    second_password = secrets.token_urlsafe(32)
    second = embedded.redis_url(password=second_password)
    assert urlsplit(second).password == second_password
    assert redis.Redis.from_url(second).ping()
    assert not embedded._pid_alive(first_pid)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(first, socket_connect_timeout=2).ping()
    # The same password reuses the running server.
    assert embedded.redis_url(password=second_password) == second


def test_a_weak_embedded_redis_password_is_one_clear_line() -> None:
    result = run_manage(
        "check", REDIS_URL="", DATABASE_URL="postgres://u@127.0.0.1:1/x",
        EMBEDDED_REDIS_PASSWORD="short",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "palaver: configuration error: EMBEDDED_REDIS_PASSWORD has a bad value"
    ), result.stderr
    assert "short" not in result.stderr


def test_write_env_adds_a_missing_password_and_changes_nothing_else(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    old = "DEBUG=true\nSECRET_KEY=mine\nSECRET_ENCRYPTION_KEYS=k1\nREDIS_URL=redis://x/0"
    dotenv.write_text(old)
    write = [sys.executable, "scripts/write_env.py", str(dotenv)]
    subprocess.run(write, cwd=ROOT, check=True, capture_output=True)
    text = dotenv.read_text()
    assert text.startswith(old + "\n")
    added = [line for line in text.splitlines() if line.startswith("EMBEDDED_REDIS_PASSWORD=")]
    assert len(added) == 1 and len(added[0].partition("=")[2]) >= 32
    subprocess.run(write, cwd=ROOT, check=True, capture_output=True)
    assert dotenv.read_text() == text  # nothing to add the second time

    fresh = tmp_path / "fresh.env"
    subprocess.run([*write[:2], str(fresh)], cwd=ROOT, check=True, capture_output=True)
    assert fresh.stat().st_mode & 0o077 == 0
    assert {"SECRET_KEY", "SECRET_ENCRYPTION_KEYS", "EMBEDDED_REDIS_PASSWORD", "DEBUG"} <= {
        line.partition("=")[0] for line in fresh.read_text().splitlines() if "=" in line
    }


# --- the deployment check ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("debug", "redis_url", "warned"),
    [
        (False, "redis://localhost:6379/0", True),
        (False, "rediss://user@redis.example:6380/0", True),
        (False, "redis://:s3cret@localhost:6379/0", False),
        (False, "redis://user:s3cret@localhost:6379/0", False),
        (False, "unix:///run/redis/redis.sock?db=0", False),
        (True, "redis://localhost:6379/0", False),
    ],
)
def test_redis_without_a_password_is_a_warning_when_debug_is_off(
    debug: bool, redis_url: str, warned: bool
) -> None:
    with override_settings(DEBUG=debug, REDIS_URL=redis_url):
        messages = [m for m in run_checks(tags=[Tags.security]) if m.id == "palaver.W001"]
    assert [m.level for m in messages] == ([WARNING] if warned else [])
    assert all("s3cret" not in str(m) for m in messages)
