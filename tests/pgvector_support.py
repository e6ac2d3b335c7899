"""Tests that need pgvector run on every server, not skipped where it is missing.

A test module marked `pytestmark = pytest.mark.pgvector` needs a PostgreSQL with pgvector. When
the configured server has it (the embedded PostgreSQL, which ships it), those tests run with the
rest. When it lacks it (a system PostgreSQL without the package, as in CI's first run), they are
deselected here, and `run_pgvector_tests_elsewhere` (called by a test of
tests/test_knowledge_vectors_fts.py) runs them in a pytest child process against an embedded
PostgreSQL of its own, asserting that they all passed, more than none. The child:

- has DATABASE_URL empty and config.embedded pointed at a temporary directory
  (tests/pgvector_child.py, loaded first): a server initialised and started there (about a
  second), stopped by the parent afterwards; the checkout's own servers under var/ are never
  started, used or stopped;
- keeps REDIS_URL and the xdist worker's name, so it uses the Redis database of the worker that
  waits for it;
- has PALAVER_PGVECTOR_CHILD set: a child that finds no pgvector fails instead of deselecting
  (no recursion, no silent pass).

The embedded server listens on a Unix socket only, so this works inside `unshare -n` too.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from config import embedded
from config.database import connection_params
from tests.pgvector_child import CHILD_ENV

MARKER = "pgvector"
ROOT = Path(__file__).resolve().parent.parent


@cache
def server_has_pgvector() -> bool:
    """Whether the configured PostgreSQL server can create the vector extension (asked of the
    configured database: the list is the server's)."""
    params = {"connect_timeout": "10"}
    params.update(connection_params(settings.DATABASES["default"]))
    with psycopg.connect(psycopg.conninfo.make_conninfo(**params)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
    return bool(row and row[0])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: needs PostgreSQL with pgvector; run in a child against the embedded "
        "server when the configured one lacks it (tests/pgvector_support.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker(MARKER)]
    if not marked or server_has_pgvector():
        return
    if os.environ.get(CHILD_ENV):
        raise pytest.UsageError("the pgvector child run's server has no pgvector")
    config.hook.pytest_deselected(items=marked)
    items[:] = [item for item in items if not item.get_closest_marker(MARKER)]


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    tests: int
    failures: int
    errors: int
    skipped: int
    output: str


def run_pgvector_tests_elsewhere(modules: list[str], directory: Path) -> ChildRun:
    """Run the pgvector tests of `modules` in a pytest child on an embedded PostgreSQL in
    `directory` (short: a Unix socket's path is limited)."""
    report = directory / "report.xml"
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "TEST_DATABASE_NAME": (os.environ.get("TEST_DATABASE_NAME") or "test_palaver")
        + "_pgvector",
        CHILD_ENV: str(directory),
    }
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "tests.pgvector_child",
                "-p",
                "no:xdist",
                "-p",
                "no:cacheprovider",
                "-q",
                "-m",
                MARKER,
                f"--junitxml={report}",
                *modules,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        embedded.stop_postgres(directory / "pgdata")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report.exists():
        for suite in ET.parse(report).getroot().iter("testsuite"):  # noqa: S314 - our own file
            for key in counts:
                counts[key] += int(suite.get(key, "0"))
    return ChildRun(returncode=result.returncode, output=result.stdout + result.stderr, **counts)
