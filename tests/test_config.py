"""Start-up failures an operator can fix give one clear line, not a traceback."""

import os
import subprocess
import sys
from pathlib import Path

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
