"""'Download my data' (issue 12, item 4): an export built by a real Celery worker from a real
account schema, unzipped and read back: the plain-text logs in the client layout, the JSON lines,
everything else, and no secret anywhere in it; progress as it goes; the link expiring and the
sweep deleting the file; another account getting 404; the purge of the account removing it."""

import io
import json
import secrets
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from agents.models import Agent, ModelCall, Task, ToolCall
from channels_app.models import Channel, Message, Server
from config.celery import app
from exports import services, tasks
from exports.archive import ROOT
from exports.logs import log_line, safe_component
from exports.models import Export
from exports.storage import storage
from knowledge.models import Document, KnowledgeBase
from llms.models import AccountTool, Tool
from tenancy import switch
from tenancy.services import purge_account
from tests.conftest import signed_in_client, storages_with
from tests.factories import UserFactory
from tests.helpers import make_provider
from tests.workers import threads_worker

TOKYO = "Asia/Tokyo"
# 2026-03-01 12:00 UTC is 21:00 in Tokyo: lines from then on fall on three local days.
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ODD_CHANNEL = '#a/b\\c:d*e?f"g<h>i|j%'
ODD_NETWORK = "OFTC: the/other*net"


@pytest.fixture
def export_dir(tmp_path: Path) -> Iterator[Path]:
    """The exports storage in a directory of the test's own."""
    location = tmp_path / "exports"
    stores = storages_with("exports", location)
    with override_settings(STORAGES=stores):
        yield location


# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("#palaver", "#palaver"),
        ("#a/b", "#a%2Fb"),
        ('\\:*?"<>|', "%5C%3A%2A%3F%22%3C%3E%7C"),
        ("100%", "100%25"),
        ("CON", "CO%4E"),
        ("nul.txt", "nu%6C.txt"),
        ("..", "%2E%2E"),
        ("name.", "name%2E"),
        ("tab\there", "tab%09here"),
        ("#café", "#café"),
    ],
)
def test_a_name_becomes_a_file_name_every_os_accepts(name: str, expected: str) -> None:
    assert safe_component(name) == expected


def test_long_and_colliding_names_stay_distinct() -> None:
    long_a, long_b = "#" + "x" * 300 + "a", "#" + "x" * 300 + "b"
    assert safe_component(long_a) != safe_component(long_b)
    assert len(safe_component(long_a).encode()) <= 150
    # Percent itself is escaped: "%2F" typed literally is not the escape of "/".
    assert safe_component("#%2F") != safe_component("#/")


@pytest.mark.parametrize(
    ("kind", "sender", "text", "expected"),
    [
        ("message", "carol", "hello \x02there\x02", "<carol> hello there"),
        ("action", "dave", "waves", "* dave waves"),
        ("notice", "NickServ", "identify", "-NickServ- identify"),
        ("join", "erin", "erin@host", "*** Joins: erin (erin@host)"),
        ("part", "erin", "bye", "*** Parts: erin (bye)"),
        ("quit", "frank", "Ping timeout", "*** Quits: frank (Ping timeout)"),
        ("kick", "op", "frank spam", "*** frank was kicked by op (spam)"),
        ("nick", "frank", "frankie", "*** frank is now known as frankie"),
        ("mode", "op", "+o carol", "*** op sets mode: +o carol"),
        ("topic", "op", "new topic", "*** op changes topic to 'new topic'"),
        ("topic", "", "old topic", "*** Topic is 'old topic'"),
        ("system", "", "Connected", "*** Connected"),
        ("message", "carol", "two\nlines", "<carol> two lines"),
    ],
)
def test_lines_are_written_as_irc_clients_log_them(
    kind: str, sender: str, text: str, expected: str
) -> None:
    assert log_line(kind=kind, sender=sender, text=text, clock="21:00:00") == (
        f"[21:00:00] {expected}\n"
    )


# --- an account with one of everything ----------------------------------------------------------


def furnish(user: User) -> dict[str, Any]:
    """Two networks, channels whose names need escaping, a query, lines over three days of every
    kind, an agent with a run, a knowledge document with its original file, a provider key, a
    server password, a SASL password and a channel key. Returns the secrets and the lines."""
    secret = {
        "server password": f"srvpass-{secrets.token_hex(8)}",
        "other server password": f"srvpass2-{secrets.token_hex(8)}",
        "SASL password": f"saslpass-{secrets.token_hex(8)}",
        "channel key": f"chankey-{secrets.token_hex(8)}",
        "API key": f"sk-export-{secrets.token_hex(12)}",
    }
    provider = make_provider(user, api_key=secret["API key"])
    AccountTool.objects.create(
        account=user.account,
        tool=Tool.objects.get(slug="current_time"),
        enabled=True,
        settings={"timezone": TOKYO},
    )
    with switch(user):
        libera = Server.objects.create(
            name="Libera",
            host="irc.libera.chat",
            nick="alice",
            password=secret["server password"],
            sasl_username="alice",
            sasl_password=secret["SASL password"],
        )
        other = Server.objects.create(
            name=ODD_NETWORK,
            host="irc.oftc.net",
            nick="alice",
            password=secret["other server password"],
        )
        palaver = Channel.objects.create(server=libera, name="#palaver", key=secret["channel key"])
        odd = Channel.objects.create(server=other, name=ODD_CHANNEL)
        query = Channel.objects.create(server=other, name="CON", kind=Channel.Kind.QUERY)
        Channel.objects.create(server=libera, name="#quiet")  # no lines: no log folder
        lines = [
            (palaver, Message.Kind.JOIN, "carol", "carol@host", 0),
            (palaver, Message.Kind.MESSAGE, "carol", "hello \x0304red\x03 world", 1),
            (palaver, Message.Kind.ACTION, "dave", "waves", 2),
            (palaver, Message.Kind.TOPIC, "carol", "Palaver dev", 3),
            # 04:00 next day in Tokyo
            (palaver, Message.Kind.NICK, "dave", "davey", 7 * 60),
            (palaver, Message.Kind.PART, "davey", "later", 7 * 60 + 1),
            (palaver, Message.Kind.QUIT, "carol", "Ping timeout", 7 * 60 + 2),
            # two days later
            (palaver, Message.Kind.NOTICE, "ChanServ", "welcome", 2 * 24 * 60),
            (palaver, Message.Kind.KICK, "op", "spammer go away", 2 * 24 * 60 + 1),
            (odd, Message.Kind.MESSAGE, "erin", "odd names work", 5),
            (query, Message.Kind.MESSAGE, "CON", "hi in private", 6),
        ]
        for channel, kind, sender, text, minutes in lines:
            Message.objects.create(
                channel=channel,
                kind=kind,
                sender=sender,
                text=text,
                server_time=T0 + timedelta(minutes=minutes),
                msgid=f"id-{minutes}",
                tags={"account": sender},
            )
        kb = KnowledgeBase.objects.create(name="Handbook/Rules")
        Document.objects.create(
            knowledge_base=kb,
            title="Rules: be kind",
            source=Document.Source.UPLOAD,
            filename="rules.md",
            original=b"# Rules\n\nBe kind, always.\n",
            content_type="text/markdown",
            text="Rules\n\nBe kind, always.",
            status=Document.Status.INDEXED,
        )
        agent = Agent.objects.create(
            name="Helper", nick="helperbot", account_llm=provider, model="gpt-4o-mini"
        )
        agent.channels.add(palaver)
        agent.knowledge_bases.add(kb)
        task = Task.objects.create(
            agent=agent,
            channel=palaver,
            status=Task.Status.SUCCEEDED,
            input="What are the rules?",
            output="Be kind, always.",
            prompt_tokens=12,
            completion_tokens=5,
        )
        ToolCall.objects.create(
            task=task,
            tool="search_knowledge",
            arguments={"query": "rules"},
            result="Be kind, always.",
            started_at=T0,
        )
        ModelCall.objects.create(
            task=task,
            agent=agent,
            agent_name="Helper",
            provider="OpenAI",
            model="gpt-4o-mini",
            input_tokens=12,
            output_tokens=5,
            latency_ms=40,
            outcome=ModelCall.Outcome.OK,
        )
    return {"secret": secret, "lines": lines, "task": task}


def stored_ciphertexts(user: User) -> list[str]:
    schema = connection.ops.quote_name(user.account.schema_name)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT password, sasl_password FROM {schema}.channels_app_server")
        values = [v for row in cursor.fetchall() for v in row]
        cursor.execute(f"SELECT key FROM {schema}.channels_app_channel")
        values += [v for (v,) in cursor.fetchall()]
        cursor.execute(
            "SELECT api_key FROM llms_accountllm WHERE account_id = %s", [user.account.pk]
        )
        values += [v for (v,) in cursor.fetchall()]
    return [v for v in values if v]


def download(client: Client, export: Export) -> zipfile.ZipFile:
    response = client.get(reverse("exports:download", args=[export.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    return archive


def wait_for_export(
    user: User, export_id: uuid.UUID, *, seconds: float = 30
) -> tuple[Export, list[int]]:
    """Poll the row as the page does; the done counts seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    while True:
        with switch(user):
            export = Export.objects.get(pk=export_id)
        if export.status == Export.Status.RUNNING:
            seen.append(export.lines_done)
        if export.status in (Export.Status.READY, Export.Status.FAILED):
            return export, seen
        assert time.monotonic() < deadline, f"the export is still {export.status}"
        time.sleep(0.02)


def read(archive: zipfile.ZipFile, path: str) -> str:
    return archive.read(f"{ROOT}/{path}").decode()


# --- the whole export, through the page and a real worker ---------------------------------------


def test_a_worker_exports_everything_readable_and_no_secret(
    clean_schemas: None, export_dir: Path
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    bob = UserFactory(email="bob@example.org", account_name="Bob's place")
    world = furnish(alice)
    alice_client, bob_client = signed_in_client(alice), signed_in_client(bob)

    with threads_worker(2, queues=("celery",)):
        response = alice_client.post(reverse("exports:start"))
        assert response.status_code == 302
        with switch(alice):
            export_id = Export.objects.get().pk
        assert response["Location"] == reverse("exports:detail", args=[export_id])
        export, _seen = wait_for_export(alice, export_id)
    assert export.status == Export.Status.READY, export.error
    assert export.lines_done == export.lines_total == len(world["lines"])
    assert export.expires_at is not None and export.finished_at is not None
    assert export.expires_at - export.finished_at == timedelta(seconds=settings.EXPORT_LINK_TTL)
    assert (export_dir / export.file_name).is_file()

    page = alice_client.get(reverse("exports:detail", args=[export_id])).content.decode()
    assert "Download the archive" in page and "11 of 11 lines" in page

    # Another account: 404 on the status, the fragment and the download.
    for url in (
        reverse("exports:detail", args=[export_id]),
        reverse("exports:download", args=[export_id]),
    ):
        assert bob_client.get(url).status_code == 404
        assert bob_client.get(url, headers={"HX-Request": "true"}).status_code == 404
    assert alice.account.name not in bob_client.get(reverse("exports:index")).content.decode()

    archive = download(alice_client, export)
    names = set(archive.namelist())
    assert all(n.startswith(f"{ROOT}/") for n in names)

    # The plain-text logs: network/channel/date.log, days and times in the account's zone.
    logs = {n.removeprefix(f"{ROOT}/logs/") for n in names if n.startswith(f"{ROOT}/logs/")}
    odd = f"{safe_component(ODD_NETWORK)}/{safe_component(ODD_CHANNEL)}"
    assert odd == "OFTC%3A the%2Fother%2Anet/#a%2Fb%5Cc%3Ad%2Ae%3Ff%22g%3Ch%3Ei%7Cj%25"
    assert logs == {
        "Libera/#palaver/2026-03-01.log",
        "Libera/#palaver/2026-03-02.log",
        "Libera/#palaver/2026-03-03.log",
        f"{odd}/2026-03-01.log",
        f"{safe_component(ODD_NETWORK)}/CO%4E/2026-03-01.log",
    }
    assert read(archive, "logs/Libera/#palaver/2026-03-01.log") == (
        "[21:00:00] *** Joins: carol (carol@host)\n"
        "[21:01:00] <carol> hello red world\n"
        "[21:02:00] * dave waves\n"
        "[21:03:00] *** carol changes topic to 'Palaver dev'\n"
    )
    assert read(archive, "logs/Libera/#palaver/2026-03-02.log") == (
        "[04:00:00] *** dave is now known as davey\n"
        "[04:01:00] *** Parts: davey (later)\n"
        "[04:02:00] *** Quits: carol (Ping timeout)\n"
    )
    assert read(archive, "logs/Libera/#palaver/2026-03-03.log") == (
        "[21:00:00] -ChanServ- welcome\n[21:01:00] *** spammer was kicked by op (go away)\n"
    )
    assert read(archive, f"logs/{odd}/2026-03-01.log") == "[21:05:00] <erin> odd names work\n"

    # The same history as JSON lines, every field, the text as stored.
    history = [
        json.loads(line) for line in read(archive, "history/Libera/#palaver.jsonl").splitlines()
    ]
    assert len(history) == 9
    assert history[1] == {
        "network": "Libera",
        "channel": "#palaver",
        "id": history[1]["id"],
        "kind": "message",
        "sender": "carol",
        "text": "hello \x0304red\x03 world",
        "server_time": "2026-03-01T12:01:00.000000Z",
        "msgid": "id-1",
        "tags": {"account": "carol"},
        "created_at": history[1]["created_at"],
    }
    assert [h["kind"] for h in history] == [
        "join", "message", "action", "topic", "nick", "part", "quit", "notice", "kick",
    ]  # fmt: skip
    assert f"{ROOT}/history/{odd}.jsonl" in names

    # Servers and channels, with only whether each secret is set.
    servers = json.loads(read(archive, "servers.json"))
    libera = next(s for s in servers if s["name"] == "Libera")
    assert libera["password_set"] is True and libera["sasl_password_set"] is True
    assert "password" not in libera and "sasl_password" not in libera
    assert libera["sasl_username"] == "alice"
    palaver = next(c for c in libera["channels"] if c["name"] == "#palaver")
    assert palaver["key_set"] is True and "key" not in palaver
    assert {c["name"] for c in libera["channels"]} == {"#palaver", "#quiet"}

    agents = json.loads(read(archive, "agents.json"))
    assert agents[0]["name"] == "Helper" and agents[0]["provider"] == "OpenAI"
    assert agents[0]["channels"] == ["#palaver"]
    assert agents[0]["knowledge_bases"] == ["Handbook/Rules"]
    tasks = [json.loads(line) for line in read(archive, "tasks.jsonl").splitlines()]
    assert tasks[0]["output"] == "Be kind, always." and tasks[0]["agent"] == "Helper"
    assert tasks[0]["tool_calls"][0]["tool"] == "search_knowledge"
    usage = [json.loads(line) for line in read(archive, "usage.jsonl").splitlines()]
    assert usage[0]["input_tokens"] == 12 and usage[0]["outcome"] == "ok"

    knowledge = json.loads(read(archive, "knowledge.json"))
    document = knowledge[0]["documents"][0]
    assert knowledge[0]["name"] == "Handbook/Rules"
    assert read(archive, document["text_file"]) == "Rules\n\nBe kind, always."
    assert archive.read(f"{ROOT}/{document['original_file']}") == b"# Rules\n\nBe kind, always.\n"
    assert document["text_file"].startswith("knowledge/Handbook%2FRules/")

    account = json.loads(read(archive, "account.json"))
    assert account["name"] == "Alice's place" and account["time_zone"] == TOKYO
    assert account["users"] == [
        {
            "email": "alice@example.org",
            "is_account_admin": True,
            "date_joined": account["users"][0]["date_joined"],
            "last_login": account["users"][0]["last_login"],
        }
    ]
    assert account["providers"][0]["api_key_set"] is True
    assert "api_key" not in account["providers"][0]
    readme = read(archive, "README.txt")
    assert "logs/<network>/<channel>/<YYYY-MM-DD>.log" in readme and "No secret" in readme

    # No secret anywhere: not in plain text, not encrypted, not the password hash.
    alice.refresh_from_db()
    hidden = [*world["secret"].values(), *stored_ciphertexts(alice), alice.password]
    assert len(hidden) == 5 + 5 + 1
    for member in archive.namelist():
        data = archive.read(member)
        for value in hidden:
            assert value.encode() not in data, f"{member} holds a secret"


def test_progress_is_told_as_the_lines_are_written(
    alice: User, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 3 lines; every batch's count reaches the row, rising to the total."""
    furnish(alice)
    monkeypatch.setattr(services._Progress, "PROGRESS_SECONDS", 0)
    told: list[int] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith('UPDATE "exports_export" SET "lines_done"'):
            told.append(params[0])
        return execute(sql, params, many, context)

    with override_settings(EXPORT_BATCH_LINES=3), switch(alice):
        export = services.start_export(requested_by=alice.email)
        with connection.execute_wrapper(watch):
            built = services.build_export_now(export_id=export.pk)
    assert built is not None and built.status == Export.Status.READY
    # #palaver's 9 lines in batches of 3, then the odd channel's and the query's line.
    assert told == [3, 6, 9, 10, 11]
    assert built.lines_done == built.lines_total == 11


# --- one at a time, admins only ------------------------------------------------------------------


def test_one_export_at_a_time_and_a_stalled_one_gives_way(alice: User, export_dir: Path) -> None:
    with switch(alice):
        first = services.start_export(requested_by=alice.email)
        with pytest.raises(services.ExportRefused, match="already being made"):
            services.start_export(requested_by=alice.email)
        # Its worker died: nothing moved for longer than EXPORT_STALL_SECONDS.
        stale = timezone.now() - timedelta(seconds=settings.EXPORT_STALL_SECONDS + 1)
        Export.objects.filter(pk=first.pk).update(updated_at=stale)
        second = services.start_export(requested_by=alice.email)
        first.refresh_from_db()
        assert first.status == Export.Status.FAILED and "stopped" in first.error
        assert second.status == Export.Status.QUEUED
        # The old one's task, arriving late, does nothing.
        assert services.build_export_now(export_id=first.pk) is None


def test_the_page_refuses_a_second_export_with_a_message(
    alice: User, alice_client: Client, export_dir: Path
) -> None:
    assert alice_client.post(reverse("exports:start")).status_code == 302
    response = alice_client.post(reverse("exports:start"), follow=True)
    assert "already being made" in response.content.decode()
    with switch(alice):
        assert Export.objects.count() == 1
    page = alice_client.get(reverse("exports:index")).content.decode()
    assert "Waiting for a worker" in page and "0 of 0 lines" in page
    assert 'hx-trigger="every 1s"' in page


def test_only_the_accounts_admins_export(alice: User, export_dir: Path) -> None:
    member = User.objects.create(account=alice.account, email="member@example.org")
    member.set_password("member pass phrase 42")
    member.save()
    client = Client()
    assert client.login(username=member.email, password="member pass phrase 42")
    assert client.post(reverse("exports:start")).status_code == 403
    page = client.get(reverse("exports:index"))
    assert page.status_code == 200
    assert "Only the account's admins can export its data." in page.content.decode()
    account_page = client.get(reverse("accounts:account")).content.decode()
    assert "Only the account's admins can download its data." in account_page
    with switch(alice):
        export = services.start_export(requested_by=alice.email)
    assert client.get(reverse("exports:detail", args=[export.pk])).status_code == 403
    assert client.get(reverse("exports:download", args=[export.pk])).status_code == 403


def test_the_account_page_offers_it_and_start_takes_only_post(
    alice_client: Client, export_dir: Path
) -> None:
    page = alice_client.get(reverse("accounts:account")).content.decode()
    assert f'action="{reverse("exports:start")}"' in page and "Download my data" in page
    assert alice_client.get(reverse("exports:start")).status_code == 405
    assert Client().get(reverse("exports:index")).status_code == 302  # sign in first


# --- expiry and purge ----------------------------------------------------------------------------


def build(user: User) -> Export:
    """An export built here, in this process. Its row made directly: start_export would also
    queue a task, left in Redis for a later test's worker to run on a schema long dropped."""
    with switch(user):
        export = Export.objects.create(requested_by=user.email)
        built = services.build_export_now(export_id=export.pk)
    assert built is not None and built.status == Export.Status.READY
    return built


def test_an_expired_link_404s_and_the_sweep_deletes_its_file(
    alice: User, bob: User, alice_client: Client, export_dir: Path
) -> None:
    furnish(alice)
    with override_settings(EXPORT_LINK_TTL=3):
        expiring = build(alice)
    assert (export_dir / expiring.file_name).is_file()
    download(alice_client, expiring)  # within its 3 seconds
    kept = build(bob)  # the default TTL: days
    assert expiring.expires_at is not None
    time.sleep(max(0.0, (expiring.expires_at - timezone.now()).total_seconds()) + 1.1)

    detail = reverse("exports:detail", args=[expiring.pk])
    assert alice_client.get(reverse("exports:download", args=[expiring.pk])).status_code == 404
    assert "This link has expired" in alice_client.get(detail).content.decode()

    # The periodic task, as Celery beat runs it (on public, from the storage's listing).
    entry = settings.CELERY_BEAT_SCHEDULE["delete-expired-exports"]
    task = app.tasks[entry["task"]]
    assert task.name == tasks.delete_expired_exports.name
    assert task.apply().get() == 1
    assert not (export_dir / expiring.file_name).exists()
    assert (export_dir / kept.file_name).is_file()
    assert alice_client.get(reverse("exports:download", args=[expiring.pk])).status_code == 404

    # A new one can be started; the old row is marked expired then.
    assert alice_client.post(reverse("exports:start")).status_code == 302
    with switch(alice):
        expiring.refresh_from_db()
    assert expiring.status == Export.Status.EXPIRED and expiring.file_name == ""


def test_a_missing_file_is_a_404_not_an_error(
    alice: User, alice_client: Client, export_dir: Path
) -> None:
    export = build(alice)
    storage().delete(export.file_name)
    assert alice_client.get(reverse("exports:download", args=[export.pk])).status_code == 404


def test_deleting_the_account_removes_its_archives(clean_schemas: None, export_dir: Path) -> None:
    alice = UserFactory(email="alice@example.org")
    bob = UserFactory(email="bob@example.org")
    furnish(alice)
    done = build(alice)
    # A file a worker left in the account's folder without a row pointing at it.
    stray = f"{Path(done.file_name).parent}/{'0' * 32}-{int(time.time()) + 3600}.zip"
    storage().save(stray, ContentFile(b"partial"))
    bobs = build(bob)
    purge_account(account=alice.account)
    assert not (export_dir / done.file_name).exists()
    assert not (export_dir / stray).exists()
    assert (export_dir / bobs.file_name).is_file()
