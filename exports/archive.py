"""What goes into an export, written into a zip file as it is read: history in batches (keyset
over (server_time, id), never the whole of it in memory), every member compressed as it streams.

Reads the account's schema (the caller has switched into it) and the account's public rows.
Secrets are never read: every EncryptedTextField (core.fields) is deferred and left out, so a
server password, SASL password, channel key or provider API key cannot reach the archive, not even
encrypted; password hashes, sessions and tokens are not read either.
"""

import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.db.models import BooleanField, ExpressionWrapper, Q

from agents.models import Agent, ModelCall, Schedule, Task
from channels_app.models import Channel, Message, Server
from core.fields import encrypted_fields
from exports.logs import log_line, safe_component
from knowledge.models import Document, KnowledgeBase
from llms.models import AccountLLM, AccountTool

if TYPE_CHECKING:
    from accounts.models import Account

_encode_string = json.encoder.encode_basestring
ROOT = "palaver-export"
FORMAT_VERSION = 1
Progress = Callable[[int], None]


def _json(value: Any) -> str:
    if isinstance(value, str):  # most of a history: the C encoder's fast path
        return _encode_string(value)
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False)


def row(obj: models.Model, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Every concrete field of `obj` but its secrets (and `skip`): a secret field is left out
    and only whether it is set is said ("password_set": true)."""
    model = type(obj)
    secret = set(encrypted_fields(model))
    out: dict[str, Any] = {}
    for field in model._meta.concrete_fields:
        if field.attname in secret or field.attname in skip:
            continue
        value = field.value_from_object(obj)
        if isinstance(value, bytes | memoryview):
            continue  # binary columns are written as files of their own
        out[field.attname] = value
    return out


def _secret_flags(model: type[models.Model], **values: Any) -> dict[str, bool]:
    return {f"{name}_set": bool(values.get(name)) for name in encrypted_fields(model)}


class Archive:
    """A zip being written member by member, each streamed (never built in memory)."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.zip = zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        self.names: set[str] = set()

    def _name(self, path: str) -> str:
        name = f"{ROOT}/{path}"
        if name in self.names:  # never: the callers' names are unique; a zip may not repeat one
            raise ValueError(f"{name} is already in the archive")
        self.names.add(name)
        return name

    def open(self, path: str) -> IO[bytes]:
        return self.zip.open(self._name(path), "w", force_zip64=True)

    def text(self, path: str, text: str) -> None:
        self.zip.writestr(self._name(path), text.encode())

    def json(self, path: str, data: Any) -> None:
        self.text(path, json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False, indent=2))

    def jsonl(self, path: str, rows: Iterable[dict[str, Any]]) -> None:
        with self.open(path) as out:
            for item in rows:
                out.write((_json(item) + "\n").encode())

    def copy(self, path: str, source: IO[bytes]) -> None:
        source.seek(0)
        with self.open(path) as out:
            shutil.copyfileobj(source, out, 1024 * 1024)

    def close(self) -> None:
        self.zip.close()


# --- history -----------------------------------------------------------------------------------


# Times come formatted by PostgreSQL (UTC to the microsecond for the JSON, the account's zone
# for the logs): parsing two timestamps per line into Python objects and formatting them again
# took most of an export's time. The JSON tags come as the text PostgreSQL already has.
_UTC_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
_BATCH_SQL = f"""
    SELECT id, kind, sender, text,
           to_char(server_time AT TIME ZONE 'UTC', '{_UTC_FORMAT}'),
           to_char(server_time AT TIME ZONE %(zone)s, 'YYYY-MM-DD'),
           to_char(server_time AT TIME ZONE %(zone)s, 'HH24:MI:SS'),
           msgid, tags::text,
           to_char(created_at AT TIME ZONE 'UTC', '{_UTC_FORMAT}')
      FROM {Message._meta.db_table}
     WHERE channel_id = %(channel)s
       AND (server_time, id) > (%(after_time)s::timestamptz, %(after_id)s)
     ORDER BY server_time, id
     LIMIT %(batch)s
"""
_BEFORE_EVERYTHING = ("-infinity", 0)


def history_batches(channel_id: int, zone: str, batch: int) -> Iterator[list[tuple[Any, ...]]]:
    """A channel's lines in time order, `batch` at a time, by keyset on (server_time, id): each
    batch one range read of the index message_channel_latest, however long the history. Each
    row: id, kind, sender, text, server time (UTC, ISO 8601), local day, local time of day,
    msgid, tags (JSON text), created at (UTC)."""
    after: tuple[str, int] = _BEFORE_EVERYTHING
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            # The index read in order, whatever the statistics say: lines just stored (no
            # ANALYZE since) look like a few rows to the planner, which then fetches and sorts
            # every remaining line of the channel for each batch (quadratic over the history).
            cursor.execute("SET LOCAL enable_sort = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute(
                _BATCH_SQL,
                {
                    "zone": zone,
                    "channel": channel_id,
                    "after_time": after[0],
                    "after_id": after[1],
                    "batch": batch,
                },
            )
            rows = cursor.fetchall()
        if not rows:
            return
        yield rows
        after = (rows[-1][4], rows[-1][0])
        if len(rows) < batch:
            return


def count_lines() -> int:
    """The lines of history an export writes: what its progress counts."""
    return Message.objects.count()


def buffers() -> Iterator[Channel]:
    """Every channel, conversation and server buffer, network by network."""
    channels = Channel.objects.select_related("server").order_by("server__name", "name")
    yield from channels.only("id", "name", "server__name")


def write_channel_history(
    archive: Archive,
    *,
    channel: Channel,
    network: str,
    zone: str,
    batch: int,
    progress: Progress,
) -> int:
    """logs/<network>/<channel>/<date>.log (a file per day in `zone`) and
    history/<network>/<channel>.jsonl (every field of every line); returns the lines written."""
    folder = f"{safe_component(network)}/{safe_component(channel.name)}"
    # The fields every line of this channel shares, as JSON once.
    where = f'{{"network": {_json(network)}, "channel": {_json(channel.name)}, "id": '
    written = 0
    day = ""
    log: IO[bytes] | None = None
    with tempfile.TemporaryFile() as jsonl:
        try:
            for rows in history_batches(channel.pk, zone, batch):
                text: list[str] = []
                records: list[str] = []
                for line_id, kind, sender, said, at, local_day, clock, msgid, tags, made in rows:
                    # Times only move forward here, so a day's file is written once; a clock
                    # turned back across midnight keeps writing into the later day.
                    if local_day > day:
                        if log is not None:
                            log.write("".join(text).encode())
                            text.clear()
                            log.close()
                        day = local_day
                        log = archive.open(f"logs/{folder}/{day}.log")
                    text.append(log_line(kind=kind, sender=sender, text=said, clock=clock))
                    records.append(
                        f'{where}{line_id}, "kind": {_json(kind)}, "sender": {_json(sender)}, '
                        f'"text": {_json(said)}, "server_time": "{at}", "msgid": {_json(msgid)}, '
                        f'"tags": {tags}, "created_at": "{made}"}}\n'
                    )
                assert log is not None
                log.write("".join(text).encode())
                jsonl.write("".join(records).encode())
                written += len(rows)
                progress(len(rows))
        finally:
            if log is not None:
                log.close()
        if written:
            archive.copy(f"history/{folder}.jsonl", jsonl)
    return written


# --- everything else ---------------------------------------------------------------------------


def without_secrets(model: type[models.Model]) -> Any:
    """`model`'s rows with their secret columns never read (deferred), and for each one a
    `<name>_set` flag computed in the database: whether it is set, not what it is."""
    names = encrypted_fields(model)
    flags = {
        f"{name}_set": ExpressionWrapper(~Q(**{name: ""}), output_field=BooleanField())
        for name in names
    }
    return model._default_manager.defer(*names).annotate(**flags)


def _flags(obj: models.Model) -> dict[str, bool]:
    return {f"{n}_set": bool(getattr(obj, f"{n}_set")) for n in encrypted_fields(type(obj))}


def servers_and_channels() -> list[dict[str, Any]]:
    channels: dict[int, list[dict[str, Any]]] = {}
    for channel in without_secrets(Channel).order_by("server_id", "kind", "name"):
        channels.setdefault(channel.server_id, []).append({**row(channel), **_flags(channel)})
    return [
        {**row(server), **_flags(server), "channels": channels.get(server.pk, [])}
        for server in without_secrets(Server).order_by("name")
    ]


def _names(manager: Any, field: str = "name") -> list[str]:
    return sorted(str(v) for v in manager.values_list(field, flat=True))


def agents(account: "Account") -> list[dict[str, Any]]:
    configs = AccountLLM.objects.filter(account=account).select_related("llm")
    providers = {p.pk: p.llm.name for p in configs.only("id", "llm__name")}
    out = []
    for agent in Agent.objects.order_by("name"):
        schedules = [row(s) for s in Schedule.objects.filter(agent=agent).order_by("pk")]
        out.append(
            {
                **row(agent),
                "provider": providers.get(agent.account_llm_id, ""),
                "channels": _names(agent.channels),
                "tools": sorted(t.slug for t in agent.tools.all()) if agent.pk else [],
                "knowledge_bases": _names(agent.knowledge_bases),
                "schedules": schedules,
            }
        )
    return out


def tasks() -> Iterator[dict[str, Any]]:
    """Every run with its answer, the conversation it started from and its tool calls."""
    runs = Task.objects.order_by("created_at", "pk").select_related("agent")
    for task in runs.prefetch_related("tool_calls").iterator(chunk_size=500):
        yield {
            **row(task),
            "agent": task.agent.name,
            "tool_calls": [row(call) for call in task.tool_calls.all()],
        }


def usage() -> Iterator[dict[str, Any]]:
    for call in ModelCall.objects.order_by("created_at", "pk").iterator(chunk_size=2000):
        yield row(call)


def knowledge(archive: Archive) -> list[dict[str, Any]]:
    """knowledge/<base>/<id> <title>.txt (the text) and originals/ (the file as uploaded or
    fetched); the index of them returned. Passages and embeddings are derived: left out."""
    bases = []
    for kb in KnowledgeBase.objects.order_by("name"):
        folder = f"knowledge/{safe_component(kb.name)}"
        documents = []
        ids = Document.objects.filter(knowledge_base=kb).order_by("pk").values_list("pk", flat=True)
        for document in (Document.objects.get(pk=pk) for pk in ids.iterator()):
            stem = safe_component(f"{document.pk} {document.title}")
            entry = {**row(document), "text_file": "", "original_file": ""}
            if document.text:
                entry["text_file"] = f"{folder}/{stem}.txt"
                archive.text(entry["text_file"], document.text)
            if document.original:
                name = safe_component(f"{document.pk} {document.filename or document.title}")
                entry["original_file"] = f"{folder}/originals/{name}"
                archive.zip.writestr(
                    archive._name(entry["original_file"]), bytes(document.original)
                )
            documents.append(entry)
        bases.append({**row(kb), "documents": documents})
    return bases


def account_settings(account: "Account", *, zone: str) -> dict[str, Any]:
    """The account, its people (no password hash, no session) and its configuration of
    providers (no API key) and tools."""
    users = [
        {
            "email": user.email,
            "is_account_admin": user.is_account_admin,
            "date_joined": user.date_joined,
            "last_login": user.last_login,
        }
        for user in account.users.order_by("email").only(
            "email", "is_account_admin", "date_joined", "last_login"
        )
    ]
    providers = [
        {**row(config), **_flags(config), "provider": config.llm.name}
        for config in without_secrets(AccountLLM).filter(account=account).select_related("llm")
    ]
    tools = [
        {**row(config), "tool": config.tool.slug}
        for config in AccountTool.objects.filter(account=account).select_related("tool")
    ]
    return {
        "id": account.pk,
        "name": account.name,
        "created_at": account.created_at,
        "time_zone": zone,
        "monthly_token_budget": account.monthly_token_budget,
        "settings": account.settings,
        "users": users,
        "providers": providers,
        "tools": tools,
    }
