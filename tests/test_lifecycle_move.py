"""Moving an account between database servers: backed up on this PostgreSQL (the system one, or
whatever DATABASE_URL names), restored with the same id on another (an embedded PostgreSQL 16
started for the test in a directory of its own), where its person signs in with the same
password and finds its pages and data; then deleted on the first.

The other side runs in a child process (tests/lifecycle_move_child.py) with its own
DATABASE_URL, as the new deployment would."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import psycopg
from django.conf import settings
from django.core.management import call_command

from accounts.models import Account
from channels_app.models import Message
from config import embedded
from config.database import connection_params
from lifecycle.archive import read_manifest
from llms.models import LLM
from tenancy import switch
from tests.conftest import LLM_CATALOG
from tests.factories import PASSWORD, UserFactory
from tests.helpers import populate
from tests.lifecycle_support import purge

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-moved-along-4242"


def start_other_postgresql(directory: Path) -> str:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver

    server = pgserver.get_server(str(directory / "pgdata"), cleanup_mode=None)
    server.psql("CREATE DATABASE palaver")
    uri: str = server.get_uri("palaver")
    return uri


def seed_catalog_as_migrations_do() -> None:
    """The LLM catalog with the ids a fresh server's migrations give it, as the new server has
    it: a restore keeps an AccountLLM's reference to its catalog row by id, and this test
    database's ids drift with every flush of a transactional test."""
    if list(LLM.objects.order_by("pk").values_list("pk", "name")) == [
        (n, p["name"]) for n, p in enumerate(LLM_CATALOG, 1)
    ]:
        return
    LLM.objects.all().delete()
    for number, provider in enumerate(LLM_CATALOG, 1):
        LLM.objects.create(pk=number, **provider)


def this_server_version() -> int:
    params = connection_params(settings.DATABASES["default"])
    with psycopg.connect(psycopg.conninfo.make_conninfo(**params)) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


def test_an_account_moves_to_another_postgresql_and_signs_in_as_before(
    clean_schemas: None, tmp_path: Path
) -> None:
    seed_catalog_as_migrations_do()
    user = UserFactory(email="mover@example.org", account_name="Mover")
    things = populate(user)
    things["provider"].api_key = API_KEY
    things["provider"].save()
    with switch(user):
        Message.objects.bulk_create(
            Message(
                channel=things["channel"],
                sender="bob",
                text=f"moved line {n}",
                server_time=things["channel"].created_at,
            )
            for n in range(300)
        )
    account_id = user.account.pk
    # The operator's commands, as docs/scaling.md gives them: backup_account on the old server.
    archive = tmp_path / "mover.tar"
    call_command(
        "backup_account", str(account_id), output=str(archive), stdout=io.StringIO(),
        stderr=io.StringIO(),
    )  # fmt: skip
    assert read_manifest(str(archive))["account"]["id"] == str(account_id)

    # Short: the server's Unix socket lives in it.
    directory = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))
    try:
        uri = start_other_postgresql(directory)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": uri,
            # The test run's Redis database, not the development one.
            "REDIS_URL": settings.REDIS_URL,
            "ALLOWED_HOSTS": "testserver",
            "SECURE_COOKIES": "false",
        }
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.lifecycle_move_child",
                str(archive),
                user.email,
                PASSWORD,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        embedded.stop_postgres(directory / "pgdata")
        shutil.rmtree(directory, ignore_errors=True)
    assert child.returncode == 0, child.stderr[-4000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])

    # Another server: its own data directory (and here another major version, 16 vs 15).
    assert found["data_directory"].startswith(str(directory))
    print("moved from PostgreSQL", this_server_version(), "to", found["server_version"])
    # The same account: same id, name, schema.
    assert found["account"] == [str(account_id), "Mover", user.account.schema_name]
    # The person signs in with the same password (and a wrong one still fails).
    assert found["sign_in"] == [302, "/"]
    assert found["wrong_password"] == 400
    for name, (status, page) in found["pages"].items():
        assert status == 200, (name, page[:500])
    pages = found["pages"]
    assert "Libera" in pages["channels:server_list"][1]
    assert "Helper" in pages["agents:agent_list"][1]
    assert "Handbook" in pages["knowledge:kb_list"][1]
    assert "#palaver" in pages["chat:index"][1]
    assert found["search"][0] == 200
    assert "<mark>moved</mark> line 299" in found["search"][1]
    assert found["messages"] == 300
    assert found["documents"] == ["Rules"]
    # The provider key, encrypted in the archive, decrypts there with the same keys.
    assert found["api_keys"] == [API_KEY]

    # Then the account goes from the old server.
    purge(user.account)
    assert not Account.objects.filter(pk=account_id).exists()
