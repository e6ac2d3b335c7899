"""What an account leaves outside its schema, found and removed by tenancy.services.purge_account.

Public rows: not a hand list. Every concrete model outside the account apps (settings.
TENANT_APPS) is introspected; a row goes when a foreign key of it (or one-to-one, or an
auto-created many-to-many table's) points at the account or at one of its users, when a UUID
column named account_id or user_id holds their id without a foreign key (the gateway's journal
positions), or when it names the account or a user through a content type and an object id
(Django admin's log). A model with `outlives_account = True` (the backup registry) is left to
remove its own rows.

Redis: every key whose name holds the account's id (hyphenated or hex), its schema name, one of
its users' ids, or a fragment a receiver of account_deleting adds, in every Redis database the
project uses (REDIS_URL: server states and errors, channel lists, the live streams' keys; the
cache: send, preview, cooldown and budget counters, throttles; the Celery broker and result
backend). The project's keys by who writes them:

    palaver:server-state:<account>:<server>, palaver:server-error:<account>:<server>
        (gateway.manager), palaver:channel-list:<account>:<server> (gateway.lists)
    palaver:sign-in-generation:<user>, palaver:sse-streams:<user> (channels_app.sse)
    cache (prefix palaver:1:): sent-per-minute:<account> (channels_app.services.chat),
        link-previews-per-minute:<account> (media.services.previews), agent-cooldown:<account>:..
        (agents.triggers), agents:budget-said:<account>:.. (agents.runner), agent-tool-lines:
        <account>:<task> (llms.tools)
    cache, without the account id: sign-in:pair:<client>:<email hash> and password-reset:email:
        <email hash> (accounts.throttle): found by the users' email hashes, the fragments
        accounts adds; sign-in:client:<client>, sign-up:client:<client> and password-reset:
        client:<client> count a network address, not an account, and stay until they expire
    broker: the queues (lists) and `unacked` hash hold messages whose headers carry the
        account's schema name (tenant-schemas-celery's _schema_name): those messages are
        removed (drop_queued_tasks); one already handed to a worker finds the account gone and
        ends quietly (tenancy.tasks.AccountTask)
    result backend: celery-task-meta-<task id>, keyed by task id alone; results carry no
        account data (counts), and expire after a day (Celery's result_expires).

Pub/sub channels (palaver:events:<account>) are not keys: nothing stays in them.
"""

import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import redis
from django.apps import apps
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import models

from tenancy.context import tenant_model, user_model
from tenancy.provisioning import account_app_labels

if TYPE_CHECKING:  # see tenancy/context.py: tenancy never imports accounts at run time
    from accounts.models import Account

logger = logging.getLogger(__name__)

SCAN_COUNT = 10_000
_BATCH = 500


def key_fragments(
    *, account_id: uuid.UUID, schema_name: str, user_ids: Iterable[uuid.UUID]
) -> set[str]:
    fragments = {str(account_id), account_id.hex, schema_name}
    for user_id in user_ids:
        fragments |= {str(user_id), user_id.hex}
    return fragments


# --- public rows --------------------------------------------------------------------------------


def public_models() -> list[type[models.Model]]:
    """Every model whose table is in the public schema (auto-created m2m tables included)."""
    account_apps = account_app_labels()
    return [
        model
        for model in apps.get_models(include_auto_created=True)
        if model._meta.app_label not in account_apps
        and model._meta.managed
        and not model._meta.proxy
    ]


# A plain UUID column named so holds an account's or a user's id without a foreign key (the
# gateway's journal positions: a batch must not fail for an account deleted meanwhile).
_ID_COLUMNS = {"account_id": "account", "user_id": "user"}


def relations_to(
    targets: tuple[type[models.Model], ...],
) -> Iterator[tuple[type[models.Model], str, type[models.Model]]]:
    """(model, field name, target) for each field of a public model that refers to one of
    `targets`: a foreign key or one-to-one field, or a UUID field named account_id / user_id."""
    by_role: dict[str, type[models.Model]] = {"account": tenant_model(), "user": user_model()}
    for model in public_models():
        for model_field in model._meta.concrete_fields:
            related = getattr(model_field, "related_model", None)
            if model_field.is_relation and related in targets:
                yield model, model_field.name, related
            elif isinstance(model_field, models.UUIDField) and not model_field.primary_key:
                role = _ID_COLUMNS.get(model_field.name)
                if role is not None and by_role[role] in targets:
                    yield model, model_field.name, by_role[role]


def _generic_references(model: type[models.Model]) -> tuple[str, str] | None:
    """(content type field, object id field) when the model names rows by content type and id
    (a GenericForeignKey, or Django admin's LogEntry, which has the two columns without one)."""
    for private in model._meta.private_fields:
        if hasattr(private, "ct_field") and hasattr(private, "fk_field"):
            return private.ct_field, private.fk_field
    names = {f.name: f for f in model._meta.concrete_fields}
    content_type = names.get("content_type")
    if getattr(content_type, "related_model", None) is ContentType and "object_id" in names:
        return "content_type", "object_id"
    return None


def delete_public_rows(*, account: "Account", user_ids: list[uuid.UUID]) -> dict[str, int]:
    """Delete every public row of the account and its users, the account's row last. Returns
    rows deleted per table. Runs in the caller's transaction, on the public schema."""
    account_model, user = tenant_model(), user_model()
    deleted: dict[str, int] = {}

    def note(result: tuple[int, dict[str, int]]) -> None:
        for label, count in result[1].items():
            if count:
                table = apps.get_model(label)._meta.db_table
                deleted[table] = deleted.get(table, 0) + count

    ids: dict[type[models.Model], list[uuid.UUID]] = {account_model: [account.pk], user: user_ids}
    # Rows that name the account or its users by content type and id, before the rows.
    for model in public_models():
        generic = _generic_references(model)
        if generic is None:
            continue
        ct_field, id_field = generic
        for target, pks in ids.items():
            if pks:
                content_type = ContentType.objects.get_for_model(target)
                note(
                    model._default_manager.filter(
                        **{ct_field: content_type, f"{id_field}__in": [str(pk) for pk in pks]}
                    ).delete()
                )
    # Rows pointing at the users, then at the account (whatever their on_delete says: a
    # SET_NULL row would otherwise stay, still describing them), then the users, the account.
    for target in (user, account_model):
        for model, name, _ in relations_to((target,)):
            if model in (user, account_model) or not ids[target]:
                continue
            # A registry that outlives the account on purpose (lifecycle.Backup: backups kept
            # within retention after a purge) removes its rows itself.
            if getattr(model, "outlives_account", False):
                continue
            note(model._default_manager.filter(**{f"{name}__in": ids[target]}).delete())
    note(user._default_manager.filter(pk__in=user_ids).delete())
    note(account_model._default_manager.filter(pk=account.pk).delete())
    return deleted


# --- Redis --------------------------------------------------------------------------------------


def redis_urls() -> list[str]:
    """Every Redis database the project writes to, each once."""
    urls = [
        settings.REDIS_URL,
        *(c.get("LOCATION") for c in settings.CACHES.values() if "redis" in c.get("BACKEND", "")),
        getattr(settings, "CELERY_BROKER_URL", ""),
        getattr(settings, "CELERY_RESULT_BACKEND", ""),
    ]
    seen: dict[tuple[Any, ...], str] = {}
    for url in urls:
        if isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
            kwargs = redis.connection.parse_url(url)
            where = (
                kwargs.get("host"),
                kwargs.get("port"),
                kwargs.get("path"),
                kwargs.get("db", 0),
            )
            seen.setdefault(where, url)
    return list(seen.values())


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def delete_redis_keys(fragments: Iterable[str]) -> int:
    """UNLINK every key whose name holds one of `fragments`, in every database of redis_urls().
    One SCAN of each database, whatever the number of fragments. Returns how many went."""
    wanted = tuple(f.encode() for f in fragments if f)
    removed = 0
    for url in redis_urls():
        client = _client(url)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(count=SCAN_COUNT):
                if any(f in key for f in wanted):
                    batch.append(key)
                    if len(batch) >= _BATCH:
                        removed += int(client.unlink(*batch))
                        batch.clear()
            if batch:
                removed += int(client.unlink(*batch))
        finally:
            client.close()
    return removed


def drop_queued_tasks(schema_name: str) -> int:
    """Remove from the broker every message enqueued for the account (its headers carry the
    schema name): in every queue (Redis lists) and among the unacknowledged ones. Returns how
    many were removed."""
    url = getattr(settings, "CELERY_BROKER_URL", "")
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        return 0
    needle = schema_name.encode()
    client = _client(url)
    removed = 0
    try:
        for key in client.scan_iter(count=SCAN_COUNT, _type="list"):
            length = int(client.llen(key))
            doomed = {
                item
                for start in range(0, length, _BATCH)
                for item in client.lrange(key, start, start + _BATCH - 1)
                if needle in item
            }
            for item in doomed:
                removed += int(client.lrem(key, 0, item))  # type: ignore[arg-type]
        for key in client.scan_iter(count=SCAN_COUNT, _type="hash"):
            # kombu's `unacked`: delivery tag -> [message, exchange, routing key]
            tags = [tag for tag, value in client.hscan_iter(key) if needle in value]
            if tags:
                removed += int(client.hdel(key, *tags))
                for index in client.scan_iter(match=key + b"_index", _type="zset"):
                    client.zrem(index, *tags)
    finally:
        client.close()
    return removed


def forget_tenant(schema_name: str) -> None:
    """Drop the account from tenant-schemas-celery's tenant cache in this process (a worker
    purging it would otherwise switch a later task into the dropped schema)."""
    from tenant_schemas_celery.task import _shared_storage

    _shared_storage.pop(schema_name, None)
