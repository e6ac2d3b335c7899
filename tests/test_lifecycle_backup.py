"""Backup and restore of one account (lifecycle.backup, lifecycle.restore) against the real
PostgreSQL: round trips compared table by table, restores as a new account and over an existing
one, the refusals, an archive made at an older migration state, and a consistent snapshot.

Transactional: a backup reads on a connection of its own, which sees only committed rows."""

import gzip
import io
import json
import tarfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.test import Client, override_settings

from accounts.models import Account, Session, User
from agents.models import ModelCall
from channels_app.models import Channel, Message, Notification
from knowledge.chunking import ChunkText
from knowledge.models import Chunk
from knowledge.services import replace_chunks
from lifecycle import archive
from lifecycle.archive import (
    ArchiveError,
    CorruptArchive,
    NewerFormat,
    NewerMigrations,
    OtherKeySet,
    RestoreRefused,
    owned_public_models,
    read_manifest,
    seal_manifest,
)
from lifecycle.backup import write_backup
from lifecycle.restore import restore_backup
from llms.models import AccountLLM, AccountTool, Tool
from media import uploads
from media.models import Upload
from scheduling.models import ScheduleEntry
from tenancy import switch
from tenancy.context import connection
from tenancy.services import purge_account
from tests.factories import PASSWORD, UserFactory
from tests.helpers import populate

pytestmark = pytest.mark.usefixtures("clean_schemas")

API_KEY = "sk-test-0123456789"
FILE_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def make_account(email: str = "alice@example.org", name: str = "Alice's place") -> User:
    """An account with one of everything: history (with a notification), a server and
    channels, an agent with a task and a model call, a knowledge base with a document and its
    chunks (embeddings included), a provider key, a tool setting, a schedule entry, an upload."""
    user = UserFactory(email=email, account_name=name)
    objects = populate(user)
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    with switch(user):
        channel = objects["channel"]
        Message.objects.bulk_create(
            Message(
                channel=channel,
                sender=f"nick{i % 7}",
                text=f"line {i} with\ttab and\nnewline \\ backslash é",
                server_time=now + timedelta(seconds=i),
                tags={"i": i},
            )
            for i in range(300)
        )
        Notification.objects.create(
            message=Message.objects.filter(channel=channel).earliest("id"), kind="highlight"
        )
        ModelCall.objects.create(
            task=objects["task"],
            agent=objects["agent"],
            agent_name="Helper",
            step=1,
            provider="OpenAI",
            model="gpt-4o-mini",
            input_tokens=10,
            output_tokens=2,
            outcome=ModelCall.Outcome.OK,
        )
        replace_chunks(
            document=objects["document"],
            chunks=[
                ChunkText(text="Be kind.", heading_path=("Rules",), page=None, tokens=2, ordinal=0),
                ChunkText(text="Be brief.", heading_path=("Rules",), page=1, tokens=2, ordinal=1),
            ],
            embeddings=[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],
        )
        token = uploads.new_token()
        Upload.objects.create(
            token=token,
            name="cat.png",
            content_type="image/png",
            size=len(FILE_BYTES),
            channel_name=channel.name,
            uploaded_by="alice",
        )
        uploads.storage().save(uploads.storage_name(token, "cat.png"), ContentFile(FILE_BYTES))
    tool = Tool.objects.earliest("id")
    AccountTool.objects.create(account=user.account, tool=tool, enabled=True, settings={"a": 1})
    with switch(user):
        objects["agent"].tools.add(tool)
    ScheduleEntry.objects.create(account=user.account, schedule_id=7, next_run_at=now)
    return user


def schema_rows(schema: str) -> dict[str, list[str]]:
    """Every row of every table of the schema, as text, sorted: what "the same data" means."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s "
            "AND tablename <> 'django_migrations' ORDER BY 1",
            [schema],
        )
        tables = [name for (name,) in cursor.fetchall()]
        rows = {}
        for table in tables:
            cursor.execute(f'SELECT t::text FROM "{schema}"."{table}" t ORDER BY 1')
            rows[table] = [text for (text,) in cursor.fetchall()]
    return rows


def public_rows(account_id: uuid.UUID) -> dict[str, list[str]]:
    """The account's public rows, without integer ids (a restore draws them afresh: another
    database's sequences gave them out to other accounts)."""
    from django.db import models

    owned = owned_public_models()
    by_model = {item.model: item for item in owned}
    rows = {}
    for item in owned:
        path = archive.account_filter_path(item, by_model)
        values = list(item.model._base_manager.filter(**{path: account_id}).values())
        if isinstance(item.model._meta.pk, models.AutoField):
            for value in values:
                value.pop(item.model._meta.pk.attname)
        rows[item.table] = sorted(json.dumps(v, sort_keys=True, default=str) for v in values)
    return rows


def backup_bytes(account: Account, **kwargs: Any) -> tuple[bytes, dict[str, Any]]:
    out = io.BytesIO()
    manifest = write_backup(account=account, output=out, **kwargs)
    return out.getvalue(), manifest


def scratch_schemas() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'restore\\_%%'")
        return [name for (name,) in cursor.fetchall()]


def test_owned_public_models_are_found_by_introspection() -> None:
    labels = [item.label for item in owned_public_models()]
    assert labels[0] == "accounts.account"
    for label in (
        "accounts.user",
        "llms.accountllm",
        "llms.accounttool",
        "scheduling.scheduleentry",
    ):
        assert label in labels
    assert "accounts.session" not in labels
    # Every public model with a foreign key to the account is either backed up or excluded
    # with a reason: a new one cannot be forgotten silently.
    from django.apps import apps

    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if getattr(field, "related_model", None) is Account and model._meta.app_label not in {
                app.rsplit(".", 1)[-1] for app in settings.TENANT_APPS
            }:
                assert model._meta.label_lower in labels or archive.excluded_reason(model)


def test_round_trip_same_id_after_deletion(transactional_db: None, storage_dir: Path) -> None:
    user = make_account()
    account = user.account
    schema, account_id = account.schema_name, account.pk
    before_schema = schema_rows(schema)
    before_public = public_rows(account_id)
    progress: list[tuple[int, int]] = []
    path = storage_dir.parent / "alice.tar"
    manifest = write_backup(
        account=account, output=path, progress=lambda d, t: progress.append((d, t))
    )

    assert read_manifest(path) == manifest
    assert manifest["rows"] == sum(e["rows"] for e in manifest["tables"]) > 300
    assert progress[-1] == (manifest["rows"], manifest["rows"])
    assert ["agents", "0003_modelcall_purpose"] in manifest["migrations"]
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json"
    assert "schema/channels_app_message.copy.gz" in names
    assert "public/llms_accountllm.copy.gz" in names
    assert any(name.startswith("uploads/") for name in names)
    # The provider key is in the archive only encrypted.
    with tarfile.open(path) as tar:
        member = tar.extractfile("public/llms_accountllm.copy.gz")
        assert member is not None
        assert API_KEY.encode() not in gzip.decompress(member.read())

    purge_account(account=account)
    assert not Account.objects.filter(pk=account_id).exists()
    upload_name = before_schema["media_upload"][0]
    assert upload_name
    restored = restore_backup(source=path)

    assert restored.pk == account_id and restored.schema_name == schema
    assert schema_rows(schema) == before_schema
    assert public_rows(account_id) == before_public
    assert scratch_schemas() == []
    assert AccountLLM.objects.get(account=restored).api_key == API_KEY  # still decrypts
    with switch(restored):
        upload = Upload.objects.get()
        assert uploads.storage().open(upload.storage_name).read() == FILE_BYTES
        assert Chunk.objects.filter(embedding__isnull=False).count() == 2
    # Its people sign in as before and its pages work.
    client = Client()
    assert client.login(username="alice@example.org", password=PASSWORD)
    for url in ("/chat/", "/servers/", "/agents/", "/knowledge/", "/uploads/", "/providers/"):
        response = client.get(url, follow=True)
        assert response.status_code == 200, url
    channel = restored_channel(restored)
    assert client.get(f"/chat/{channel.pk}/", follow=True).status_code == 200


def restored_channel(account: Account) -> Channel:
    with switch(account):
        return Channel.objects.get(name="#palaver")


def test_restore_as_new_account_next_to_the_original(
    transactional_db: None, storage_dir: Path
) -> None:
    user = make_account()
    original = user.account
    data, _manifest = backup_bytes(original)
    before = schema_rows(original.schema_name)

    with pytest.raises(RestoreRefused, match=r"alice@example\.org"):
        restore_backup(source=io.BytesIO(data), new_name="Copy")
    assert not Account.objects.filter(name="Copy").exists()
    assert scratch_schemas() == []
    with pytest.raises(RestoreRefused, match="already exists"):
        restore_backup(source=io.BytesIO(data), new_name="alice's PLACE")

    copy = restore_backup(source=io.BytesIO(data), new_name="Copy", without_users=True)
    assert copy.pk != original.pk and copy.name == "Copy"
    assert not User.objects.filter(account=copy).exists()
    # The original is intact; the copy has the same history under its own ids.
    assert schema_rows(original.schema_name) == before
    copied = schema_rows(copy.schema_name)
    assert copied["channels_app_message"] == before["channels_app_message"]
    original_llm = AccountLLM.objects.get(account=original)
    copy_llm = AccountLLM.objects.get(account=copy)
    assert copy_llm.pk != original_llm.pk and copy_llm.api_key == API_KEY
    assert AccountTool.objects.filter(account=copy).count() == 1
    assert ScheduleEntry.objects.filter(account=copy).count() == 1
    with switch(copy):
        from agents.models import Agent

        assert Agent.objects.get().account_llm_id == copy_llm.pk  # rewritten to its own key
        upload = Upload.objects.get()
        assert uploads.storage().open(upload.storage_name).read() == FILE_BYTES
        copy_token = upload.token
        Message.objects.all().delete()
    with switch(original):
        assert Upload.objects.get().token != copy_token  # a token finds one file
        assert Message.objects.count() == 300  # isolated
    # Deleting the copy leaves the original's file in place.
    purge_account(account=copy)
    with switch(original):
        assert uploads.storage().exists(Upload.objects.get().storage_name)


def test_replace_puts_the_archive_back_atomically(
    transactional_db: None, storage_dir: Path
) -> None:
    user = make_account()
    account = user.account
    data, _manifest = backup_bytes(account)
    before_schema = schema_rows(account.schema_name)
    before_public = public_rows(account.pk)
    client = Client()
    assert client.login(username=user.email, password=PASSWORD)
    with switch(account):
        Message.objects.filter(text__startswith="line 1").delete()
        Channel.objects.create(server=Channel.objects.first().server, name="#new")  # type: ignore[union-attr]
    AccountLLM.objects.filter(account=account).delete()

    # A failing replace (a corrupt archive) leaves the account as it is.
    # The last member (the uploaded file), so everything before it has been loaded.
    broken = bytearray(data)
    broken[data.index(FILE_BYTES) + 100] ^= 0xFF
    changed = schema_rows(account.schema_name)
    with pytest.raises(CorruptArchive):
        restore_backup(source=io.BytesIO(bytes(broken)), account=account, replace=True)
    assert schema_rows(account.schema_name) == changed
    assert scratch_schemas() == []

    restored = restore_backup(source=io.BytesIO(data), account=account, replace=True)
    assert restored.pk == account.pk
    assert schema_rows(account.schema_name) == before_schema
    assert public_rows(account.pk) == before_public
    assert AccountLLM.objects.get(account=account).api_key == API_KEY
    assert not Session.objects.filter(user__account=account).exists()  # everyone signs in again
    assert Client().login(username=user.email, password=PASSWORD)


def reseal(data: bytes, change: Any) -> bytes:
    """The archive with its manifest changed by `change(manifest)` and sealed again (as an
    archive made by another version would be), its members untouched (or changed by it)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as source:
        manifest = json.loads(source.extractfile("manifest.json").read())  # type: ignore[union-attr]
        members = {
            info.name: source.extractfile(info).read()  # type: ignore[union-attr]
            for info in source.getmembers()
            if info.name != "manifest.json"
        }
    change(manifest, members)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        sealed = seal_manifest(manifest)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(sealed)
        tar.addfile(info, io.BytesIO(sealed))
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_refusals_say_which(transactional_db: None, storage_dir: Path) -> None:
    user = make_account()
    account = user.account
    data, manifest = backup_bytes(account)
    purge_account(account=account)
    accounts_before = Account.objects.count()

    def refused(source: bytes, kind: type[ArchiveError], words: str) -> None:
        nonlocal accounts_before
        with pytest.raises(kind, match=words):
            restore_backup(source=io.BytesIO(source))
        assert Account.objects.count() == accounts_before
        assert scratch_schemas() == []

    # A flipped byte in a data member, and in the manifest.
    message_offset = data.index(b"schema/channels_app_message.copy.gz")
    broken = bytearray(data)
    broken[message_offset + 1024] ^= 0x01
    refused(bytes(broken), CorruptArchive, "corrupt")
    broken = bytearray(data)
    broken[data.index(b'"format_version"') + 30] ^= 0x01
    refused(bytes(broken), CorruptArchive, "corrupt")
    refused(b"not a tar at all" * 100, CorruptArchive, "corrupt")
    with transaction.atomic(), pytest.raises(RuntimeError, match=r"outside transaction\.atomic"):
        restore_backup(source=io.BytesIO(data))
    refused(data[: len(data) // 2], CorruptArchive, "corrupt")

    def newer_format(m: dict[str, Any], _members: dict[str, bytes]) -> None:
        m["format_version"] = archive.FORMAT_VERSION + 1

    refused(reseal(data, newer_format), NewerFormat, "newer Palaver")

    def newer_migration(m: dict[str, Any], _members: dict[str, bytes]) -> None:
        m["migrations"].append(["channels_app", "9999_from_the_future"])

    refused(reseal(data, newer_migration), NewerMigrations, "9999_from_the_future")

    other_keys = [Fernet.generate_key().decode()]
    with override_settings(SECRET_ENCRYPTION_KEYS=other_keys):
        refused(data, OtherKeySet, "different encryption key set")
    # Rotated: a new key in front of the archive's still restores.
    with override_settings(SECRET_ENCRYPTION_KEYS=other_keys + settings.SECRET_ENCRYPTION_KEYS):
        restored = restore_backup(source=io.BytesIO(data))
    assert restored.pk == uuid.UUID(manifest["account"]["id"])
    accounts_before += 1
    refused(data, RestoreRefused, "exists here")
    schema = restored.schema_name
    Account.objects.filter(pk=restored.pk).delete()  # the row gone, the schema left behind
    refused_now = accounts_before - 1
    with pytest.raises(RestoreRefused, match="exists here without its account"):
        restore_backup(source=io.BytesIO(data))
    assert Account.objects.count() == refused_now
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_an_archive_from_an_older_migration_state_is_migrated(
    transactional_db: None, storage_dir: Path
) -> None:
    """The archive as one made before agents.0003_modelcall_purpose (a leaf migration adding a
    column with a default) would look: that migration not recorded, the column not in the
    model calls' member. Built by editing a current archive, not by running old code."""
    user = make_account()
    account = user.account
    data, _manifest = backup_bytes(account)
    purge_account(account=account)

    def older(m: dict[str, Any], members: dict[str, bytes]) -> None:
        m["migrations"].remove(["agents", "0003_modelcall_purpose"])
        entry = next(e for e in m["tables"] if e["table"] == "agents_modelcall")
        position = entry["columns"].index("purpose")
        entry["columns"].pop(position)
        lines = gzip.decompress(members[entry["member"]]).split(b"\n")
        cut = [
            b"\t".join(f for i, f in enumerate(line.split(b"\t")) if i != position)
            for line in lines
        ]
        body = gzip.compress(b"\n".join(cut), compresslevel=1)
        members[entry["member"]] = body
        entry["bytes"] = len(body)
        import hashlib

        entry["sha256"] = hashlib.sha256(body).hexdigest()

    restored = restore_backup(source=io.BytesIO(reseal(data, older)))
    with switch(restored):
        assert ModelCall.objects.get().purpose == "chat"  # the migration's default
        assert Message.objects.count() == 300
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT count(*) FROM "{restored.schema_name}".django_migrations '
            "WHERE app = 'agents' AND name = '0003_modelcall_purpose'"
        )
        assert cursor.fetchone()[0] == 1
    assert scratch_schemas() == []


def test_a_backup_sees_one_snapshot_while_lines_are_stored(
    transactional_db: None, storage_dir: Path
) -> None:
    user = make_account()
    account = user.account
    inserted = threading.Event()
    channel = restored_channel(account)

    def insert_meanwhile(done: int, total: int) -> None:
        if inserted.is_set():
            return
        inserted.set()

        # Another connection (a thread's own) stores lines and a notification, and commits.
        def store() -> None:
            from django.db import connection as thread_connection

            with switch(account):
                message = Message.objects.create(
                    channel=channel, text="late", server_time=datetime.now(UTC)
                )
                Notification.objects.create(message=message, kind="highlight")
            thread_connection.close()

        worker = threading.Thread(target=store)
        worker.start()
        worker.join()

    _data, manifest = backup_bytes(account, progress=insert_meanwhile)
    assert inserted.is_set()
    counts = {entry["table"]: entry["rows"] for entry in manifest["tables"]}
    assert counts["channels_app_message"] == 300
    assert counts["channels_app_notification"] == 1
    with switch(account):
        assert Message.objects.count() == 301  # stored, after the snapshot


def test_a_database_whose_catalogs_number_entries_otherwise(
    transactional_db: None, storage_dir: Path
) -> None:
    """Moving to another database: its LLM and tool catalogs hold the same entries under other
    ids. The restored rows point at this database's entries, found by name and slug; an entry
    this database lacks is refused by name."""
    from agents.models import Agent
    from llms.models import LLM

    user = make_account()
    account = user.account
    data, manifest = backup_bytes(account)
    assert manifest["catalogs"]["llms_llm"]["key"] == "name"
    tool_slug = Tool.objects.earliest("id").slug
    purge_account(account=account)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE llms_llm SET id = id + 1000")
        cursor.execute("UPDATE llms_tool SET id = id + 1000")

    restored = restore_backup(source=io.BytesIO(data))
    provider = AccountLLM.objects.get(account=restored)
    assert provider.llm_id == LLM.objects.get(name="OpenAI").pk > 1000
    assert provider.api_key == API_KEY
    tool = Tool.objects.get(slug=tool_slug)
    assert AccountTool.objects.get(account=restored).tool_id == tool.pk
    with switch(restored):
        assert list(Agent.objects.get().tools.values_list("pk", flat=True)) == [tool.pk]

    purge_account(account=restored)
    LLM.objects.filter(name="OpenAI").update(name="Gone")
    with pytest.raises(RestoreRefused, match="'OpenAI'"):
        restore_backup(source=io.BytesIO(data))
    assert not Account.objects.filter(pk=account.pk).exists()
    assert scratch_schemas() == []
