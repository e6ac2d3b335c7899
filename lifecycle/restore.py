"""Restoring an account from its archive (lifecycle.archive): as the same account (moved to this
database, or brought back after a deletion), as a new account next to others, or over an
existing account (replace).

The account's schema is built and loaded under a scratch name (`restore_<hex>`) and only put in
place, with the public rows, in one last transaction: until then the account that is replaced
(if any) is untouched, and a failure at any step drops the scratch schema and changes nothing.

1. The schema is created the way provisioning creates one (tenancy.provisioning), at the
   archive's migration state; its data is loaded with COPY FROM, with the foreign keys and the
   indexes that back no constraint dropped during the load and made again after it (as
   pg_dump's output does: a GIN index built once is far cheaper than kept up row by row); the
   sequences are set to the archive's values.
2. An archive made at an older migration state is then migrated forward the way
   migrate_accounts migrates a lagging schema: its pending migrations' SQL replayed
   (tenancy.replay), or Django's migrate where that cannot be replayed.
3. One transaction: the public rows are inserted (new ids where they must be unique, below),
   the replaced account's schema and public rows go, the scratch schema is renamed into place;
   after it commits the gateway is told (it connects the account's servers as before) and the
   uploaded files are written to the `uploads` storage.

Ids. A restore as the same account keeps the account's id, its schema name and its users' ids
(people sign in as before; their sessions are not in archives, so they sign in again). A
restore under another id (`new_name`, or replacing account B with A's archive) gives every
public row a new id (the account, its users, its AccountLLMs...; references from the schema to
them are rewritten), its uploads new tokens (a file's token is what finds it, across accounts),
and refuses when one of its users' emails is taken (emails are unique across the deployment)
unless `without_users=True`, which restores no users (add one with the admin). Integer ids of
public rows (AccountTool, schedule entries...) are always drawn afresh: another database's
sequences have handed them out to other accounts.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import psycopg
from django.apps import apps
from django.conf import settings
from django.db import models, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder
from django_tenants.utils import schema_exists
from psycopg import sql

from config.database import connection_params
from core.crypto import key_fingerprints
from lifecycle.archive import (
    CHUNK,
    ArchiveError,
    ArchiveReader,
    CorruptArchive,
    NewerMigrations,
    OtherKeySet,
    OwnedModel,
    RestoreRefused,
    account_filter_path,
    catalog_key,
    catalog_references,
    owned_public_models,
)
from media import uploads
from tenancy import provisioning
from tenancy.context import connection, public_schema, tenant_model, user_model
from tenancy.migration_state import expected_migrations, schema_states

if TYPE_CHECKING:
    from accounts.models import Account

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
SCRATCH_PREFIX = "restore_"
CATALOG_MAP_PREFIX = "_restore_catalog_"
# Memory for each index build of a restore: a GIN index over 1,000,000 lines is built about
# twice as fast with 1 GB as with 256 MB (docs/benchmarks.md, issue 12).
REMAKE_MEMORY = "1GB"


def restore_backup(
    *,
    source: str | os.PathLike[str] | BinaryIO | IO[bytes],
    account: Account | None = None,
    new_name: str | None = None,
    replace: bool = False,
    progress: Progress | None = None,
    without_users: bool = False,
) -> Account:
    """Restore the archive at `source` (a path or a binary file) and return the account.

    - neither `account` nor `new_name`: as the account it was made from, same id (that account
      must not exist here: this is how an account moves to another database);
    - `account` and `replace=True`: that account's data is replaced by the archive's;
    - `new_name`: as a new account of that name, next to the others.

    Raises lifecycle.archive.ArchiveError (a subclass saying which: corrupt, newer format, newer
    migrations, other key set, refused) and changes nothing when it does. Runs its own
    transactions: it must not be called inside one."""
    if connection.in_atomic_block:
        # The scratch schema is committed between the steps and indexed over connections of
        # their own: inside the caller's transaction they would not see it.
        raise RuntimeError(
            "restore_backup runs its own transactions: call it outside transaction.atomic() "
            "(tests: the transactional_db fixture)."
        )
    if account is not None and not replace:
        raise RestoreRefused("An existing account is only restored over with replace=True.")
    if replace and account is None:
        raise RestoreRefused("replace=True needs the account to replace.")
    if account is not None and new_name is not None:
        raise RestoreRefused("Give either an account to replace or a new name, not both.")
    report = progress or (lambda done, total: None)
    with ArchiveReader(source) as reader, public_schema():
        manifest = reader.manifest
        _check_keys(manifest)
        applied = _check_migrations(manifest)
        plan = _plan(manifest, account=account, new_name=new_name, without_users=without_users)
        scratch = f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"
        files = Path(tempfile.mkdtemp(prefix="palaver-restore-"))
        committed_scratch = False
        handed_over = False  # the spool of files belongs to the on-commit writer from then on
        try:
            with transaction.atomic():
                public_data, remake = _load(reader, manifest, scratch, applied, files, report)
            committed_scratch = True
            _remake(scratch, remake, manifest)
            if applied != expected_migrations():
                _migrate_forward(scratch)
            with transaction.atomic():
                restored = _finish(plan, manifest, scratch, public_data, files)
                handed_over = True
                return restored
        except BaseException:
            handed_over = False
            if committed_scratch:
                drop_scratch(scratch)
            raise
        finally:
            if not handed_over:
                shutil.rmtree(files, ignore_errors=True)


# --- checks --------------------------------------------------------------------------------------


def _check_keys(manifest: dict[str, Any]) -> None:
    theirs = list(manifest.get("key_fingerprints") or [])
    ours = set(key_fingerprints())
    missing = [fingerprint for fingerprint in theirs if fingerprint not in ours]
    if missing:
        raise OtherKeySet(
            f"The archive was made with a different encryption key set: {len(missing)} of its "
            f"{len(theirs)} keys (fingerprints {', '.join(missing)}) are not in "
            "SECRET_ENCRYPTION_KEYS here, so its provider keys and passwords would not decrypt. "
            "Add those keys (after the current ones) and restore again."
        )


def _check_migrations(manifest: dict[str, Any]) -> frozenset[tuple[str, str]]:
    applied = frozenset((str(app), str(name)) for app, name in manifest.get("migrations") or [])
    if not applied:
        raise CorruptArchive("The archive is corrupt: its manifest lists no migrations.")
    unknown = sorted(applied - expected_migrations())
    if unknown:
        names = ", ".join(f"{app}.{name}" for app, name in unknown[:5])
        raise NewerMigrations(
            f"The archive's schema has migrations this code does not know ({names}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            + "): it was made by a newer Palaver. Restore it with that version or newer."
        )
    return applied


class _Plan:
    def __init__(
        self,
        *,
        archive_id: uuid.UUID,
        target_id: uuid.UUID,
        name: str,
        replacing: Account | None,
        without_users: bool,
    ) -> None:
        self.archive_id = archive_id
        self.target_id = target_id
        self.name = name
        self.replacing = replacing
        self.without_users = without_users

    @property
    def same_id(self) -> bool:
        return self.archive_id == self.target_id

    @property
    def schema_name(self) -> str:
        from accounts.models import schema_name_for

        return schema_name_for(self.target_id)


def _plan(
    manifest: dict[str, Any], *, account: Account | None, new_name: str | None, without_users: bool
) -> _Plan:
    try:
        archive_id = uuid.UUID(str(manifest["account"]["id"]))
        archive_name = str(manifest["account"]["name"])
    except (KeyError, TypeError, ValueError):
        raise CorruptArchive("The archive is corrupt: its manifest names no account.") from None
    accounts = tenant_model().objects
    if account is not None:
        return _Plan(
            archive_id=archive_id,
            target_id=account.pk,
            name=account.name,
            replacing=account,
            without_users=without_users,
        )
    if new_name is not None:
        name = new_name.strip()
        if not name:
            raise RestoreRefused("The new account's name is empty.")
        if accounts.filter(name__iexact=name).exists():
            raise RestoreRefused(f"An account named {name!r} already exists: choose another name.")
        return _Plan(
            archive_id=archive_id,
            target_id=uuid.uuid4(),
            name=name,
            replacing=None,
            without_users=without_users,
        )
    if accounts.filter(pk=archive_id).exists():
        raise RestoreRefused(
            f"Account {archive_name!r} ({archive_id}) exists here: replace it (restore_account "
            "--replace) or restore the archive as a new account (--as-new NAME)."
        )
    target = _Plan(
        archive_id=archive_id,
        target_id=archive_id,
        name=archive_name,
        replacing=None,
        without_users=without_users,
    )
    if schema_exists(target.schema_name):
        raise RestoreRefused(
            f"A schema {target.schema_name} exists here without its account (left by a "
            "failed deletion?): look at it, drop it, then restore again."
        )
    if accounts.filter(name__iexact=archive_name).exists():
        raise RestoreRefused(
            f"Another account is named {archive_name!r}: restore the archive as a new account "
            "with another name (--as-new NAME)."
        )
    return target


# --- step 1: the schema, at the archive's migration state, loaded ---------------------------------


def _ddl_at(applied: frozenset[tuple[str, str]]) -> provisioning.AccountSchemaDDL:
    """The DDL of an account schema with exactly `applied` migrations: provisioning's own when
    that is every migration, else the same collection restricted to them."""
    full = provisioning.account_schema_ddl()
    if frozenset(full.migrations) == applied:
        return full
    previous = connection.tenant
    connection.set_schema(provisioning._COLLECT_SCHEMA)
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes(), clean_start=True)
        plan = [(m, backwards) for m, backwards in plan if (m.app_label, m.name) in applied]
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            editor.create_model(MigrationRecorder.Migration)
            recorder_sql = list(editor.collected_sql)
        statements = recorder_sql + provisioning._collect_sql(executor, plan)
    finally:
        connection.set_tenant(previous)
    return provisioning.AccountSchemaDDL(
        statements=tuple(statements), migrations=tuple((m.app_label, m.name) for m, _ in plan)
    )


def _create_scratch(scratch: str, manifest: dict[str, Any], applied: frozenset[Any]) -> None:
    ddl = _ddl_at(applied)
    migrations = [(str(app), str(name)) for app, name in manifest["migrations"]]
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)).as_string())
        cursor.execute(
            sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(scratch)).as_string()
        )
        cursor.execute(ddl.sql)
        cursor.execute(
            "INSERT INTO django_migrations (app, name, applied) "
            "SELECT app, name, now() FROM unnest(%s::text[], %s::text[]) AS m(app, name)",
            [[app for app, _ in migrations], [name for _, name in migrations]],
        )
        cursor.execute("SET LOCAL search_path = public")


def _raw() -> Any:
    """The psycopg connection under Django's (COPY needs it), in Django's transaction."""
    connection.ensure_connection()
    return connection.connection


def _drop_for_load(scratch: str) -> list[str]:
    """Drop the scratch schema's foreign keys and the indexes that back no constraint; return
    the statements that make them again."""
    raw = _raw()
    with raw.cursor() as cur:
        cur.execute(
            "SELECT format('ALTER TABLE %%I.%%I ADD CONSTRAINT %%I %%s', n.nspname, t.relname, "
            "c.conname, pg_get_constraintdef(c.oid)), "
            "format('ALTER TABLE %%I.%%I DROP CONSTRAINT %%I', n.nspname, t.relname, c.conname) "
            "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = %s AND c.contype = 'f' ORDER BY c.conname",
            [scratch],
        )
        foreign_keys = cur.fetchall()
        cur.execute(
            "SELECT pg_get_indexdef(i.indexrelid) || ';', "
            "format('DROP INDEX %%I.%%I', n.nspname, ic.relname) "
            "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = ic.relnamespace "
            "WHERE n.nspname = %s AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) "
            "ORDER BY ic.relname",
            [scratch],
        )
        indexes = cur.fetchall()
        for _create, drop in [*foreign_keys, *indexes]:
            cur.execute(drop)
    return [create for create, _drop in indexes] + [create for create, _drop in foreign_keys]


def _load(
    reader: ArchiveReader,
    manifest: dict[str, Any],
    scratch: str,
    applied: frozenset[Any],
    files: Path,
    report: Progress,
) -> tuple[dict[str, bytes], list[str]]:
    """Create the scratch schema and load every member: the schema's tables with COPY, the
    public rows kept (they are small) for step 3, the uploads spooled to `files`. Returns those
    public rows and the statements that make the dropped indexes and foreign keys again."""
    started = time.monotonic()
    _create_scratch(scratch, manifest, applied)
    remake = _drop_for_load(scratch)
    built = time.monotonic()
    total = int(manifest.get("rows") or 0)
    done = 0
    public: dict[str, bytes] = {}
    raw = _raw()
    # The rows are written frozen (no later pass sets their hint bits or freezes them), which
    # PostgreSQL allows for a table created in the same transaction, not in a savepoint.
    freeze = sql.SQL("" if connection.savepoint_ids else "(FREEZE)")
    report(0, total)
    with raw.cursor() as cur:
        for entry, handle in reader.members():
            member = entry["member"]
            if "table" not in entry:  # an uploaded file
                path = files / f"file-{len(os.listdir(files))}"
                with open(path, "wb") as out:
                    shutil.copyfileobj(handle, out, CHUNK)
                entry["spooled"] = str(path)
                continue
            if entry["schema"] == "public":
                public[member] = handle.read()
                rows = public[member].count(b"\n")
            else:
                rows = 0
                statement = sql.SQL("COPY {}.{} ({}) FROM STDIN {}").format(
                    sql.Identifier(scratch),
                    sql.Identifier(entry["table"]),
                    sql.SQL(", ").join(map(sql.Identifier, entry["columns"])),
                    freeze,
                )
                try:
                    with cur.copy(statement) as copy:
                        while chunk := handle.read(CHUNK):
                            rows += chunk.count(b"\n")
                            copy.write(chunk)
                            report(done + rows, total)
                except CorruptArchive:
                    raise
                except Exception as exc:
                    raise CorruptArchive(
                        f"The archive does not load: {entry['table']}: {_first_line(exc)}"
                    ) from None
            if rows != entry["rows"]:
                raise CorruptArchive(
                    f"The archive is corrupt: {member} holds {rows} rows, its manifest says "
                    f"{entry['rows']}."
                )
            done += rows
            report(done, total)
        logger.info(
            "restore into %s: schema built in %.2f s, %d rows loaded in %.2f s",
            scratch, built - started, done, time.monotonic() - built,
        )  # fmt: skip
        for sequence in manifest.get("sequences") or []:
            cur.execute(
                "SELECT setval(%s::regclass, %s, %s)",
                [
                    sql.Identifier(scratch, sequence["name"]).as_string(raw),
                    sequence["last_value"],
                    sequence["is_called"],
                ],
            )
    return public, remake


def _remake(scratch: str, remake: list[str], manifest: dict[str, Any]) -> None:
    """Make the dropped indexes and foreign keys again, on two connections of their own (the
    scratch schema is committed by now, invisible to everything else): the GIN index over the
    history's text takes most of the time, and the rest is built beside it."""
    started = time.monotonic()
    params = connection_params(settings.DATABASES["default"])
    # The costliest first, so that the other connection takes everything else meanwhile.
    queue = sorted(remake, key=lambda statement: "USING gin" not in statement)
    lock = threading.Lock()
    failures: list[str] = []

    def work() -> None:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f"SET maintenance_work_mem = '{REMAKE_MEMORY}'")
            while True:
                with lock:
                    if not queue or failures:
                        return
                    statement = queue.pop(0)
                try:
                    conn.execute(statement)
                except psycopg.Error as exc:
                    with lock:
                        failures.append(f"{_first_line(exc)} ({statement[:200]})")

    threads = [threading.Thread(target=work, name=f"restore-remake-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise CorruptArchive(f"The archive's data breaks the schema's rules: {failures[0]}")
    with psycopg.connect(**params, autocommit=True) as conn:
        _make_missing_indexes(conn, scratch, manifest)
    logger.info(
        "restore into %s: indexes and foreign keys made in %.2f s",
        scratch, time.monotonic() - started,
    )  # fmt: skip


def _make_missing_indexes(conn: Any, scratch: str, manifest: dict[str, Any]) -> None:
    """Indexes the archive's schema had that its migrations do not make (knowledge.vectors'
    HNSW index per embedding size). One that cannot be made here (no pgvector) is logged and
    left out: the code that wants it makes it when it is needed."""
    present = {
        name
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'i'",
            [scratch],
        ).fetchall()
    }
    missing = [item for item in manifest.get("indexes") or [] if item["name"] not in present]
    if not missing:
        return
    conn.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(scratch)))
    for item in missing:
        try:
            conn.execute(item["definition"])
        except psycopg.Error as exc:
            logger.warning("index %s not made again: %s", item["name"], _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- step 2: migrated forward --------------------------------------------------------------------


def _migrate_forward(scratch: str) -> None:
    """Bring the scratch schema to this code's migrations, as migrate_accounts does."""
    from tenancy.replay import plan_replay, replay

    state = schema_states([scratch])[scratch]
    if not state.missing:
        return
    (group,) = plan_replay([state])
    if group.replayable:
        result = replay([group], jobs=1, lock_timeout_ms=5000, lock_retries=3)
        if result.failed:
            raise ArchiveError(
                "Migrating the restored schema forward failed: " + result.failed[0].describe()
            )
        return
    from django_tenants.migration_executors.base import run_migrations

    from tenancy.management.commands.migrate_accounts import _migrate_options

    try:
        run_migrations([], _migrate_options(), "restore_account", scratch, allow_atomic=False)
    except Exception as exc:
        raise ArchiveError(
            f"Migrating the restored schema forward failed: {_first_line(exc)}"
        ) from exc


def drop_scratch(schema: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)).as_string()
        )


# --- step 3: public rows, and the schema put in place ---------------------------------------------


def _finish(
    plan: _Plan,
    manifest: dict[str, Any],
    scratch: str,
    public: dict[str, bytes],
    files: Path,
) -> Account:
    owned = owned_public_models()
    by_model = {item.model: item for item in owned}
    replaced_files: list[str] = []
    if plan.replacing is not None:
        replaced_files = _existing_upload_names(plan.replacing.schema_name)
        _delete_public_rows(plan.replacing, owned, by_model)
    remapped = _insert_public_rows(plan, manifest, public, owned)
    _rewrite_schema_references(scratch, remapped)
    new_names = _retoken_uploads(scratch, manifest) if not plan.same_id else {}
    with connection.cursor() as cursor:
        if plan.replacing is not None:
            trash = f"{SCRATCH_PREFIX}old_{uuid.uuid4().hex}"
            cursor.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}")
                .format(sql.Identifier(plan.replacing.schema_name), sql.Identifier(trash))
                .as_string()
            )
            cursor.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(trash)).as_string()
            )
        cursor.execute(
            sql.SQL("ALTER SCHEMA {} RENAME TO {}")
            .format(sql.Identifier(scratch), sql.Identifier(plan.schema_name))
            .as_string()
        )
    account = tenant_model().objects.get(pk=plan.target_id)
    _after_commit(account, manifest, files, new_names, replaced_files)
    return account


def _existing_upload_names(schema: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [f'"{schema}".media_upload'])
        if cursor.fetchone()[0] is None:
            return []
        cursor.execute(
            sql.SQL("SELECT token, name FROM {}.media_upload")
            .format(sql.Identifier(schema))
            .as_string()
        )
        return [uploads.storage_name(token, name) for token, name in cursor.fetchall()]


def _delete_public_rows(
    account: Account, owned: list[OwnedModel], by_model: dict[Any, OwnedModel]
) -> None:
    """The replaced account's public rows but its Account row, through the ORM so that what
    hangs on them (sessions) goes too."""
    for item in reversed(owned[1:]):
        path = account_filter_path(item, by_model)
        item.model._base_manager.filter(**{path: account.pk}).delete()


def _is_integer_auto(field: models.Field[Any, Any]) -> bool:
    return isinstance(field, models.AutoField | models.BigAutoField | models.SmallAutoField)


def _descends_from_user(item: OwnedModel, by_model: dict[Any, OwnedModel]) -> bool:
    user = user_model()
    current: OwnedModel | None = item
    while current is not None:
        if current.model is user:
            return True
        current = by_model.get(current.via.related_model) if current.via is not None else None
    return False


def _insert_public_rows(
    plan: _Plan, manifest: dict[str, Any], public: dict[str, bytes], owned: list[OwnedModel]
) -> dict[type[models.Model], str]:
    """Insert the archive's public rows, with new ids where needed. Returns, for each model
    whose primary keys changed, the temporary table mapping old to new (`old`, `new`)."""
    by_model = {item.model: item for item in owned}
    by_table = {item.table: item for item in owned}
    entries = [entry for entry in manifest["tables"] if entry["schema"] == "public"]
    account_model = tenant_model()
    raw = _raw()
    maps = _catalog_maps(manifest)
    with raw.cursor() as cur:
        for index, entry in enumerate(entries):
            item = by_table.get(entry["table"])
            if item is None:
                raise RestoreRefused(
                    f"The archive holds rows of public table {entry['table']}, which this code "
                    "does not have (or no longer ties to an account)."
                )
            if plan.without_users and _descends_from_user(item, by_model):
                continue
            model = item.model
            columns = entry["columns"]
            known = {field.column for field in model._meta.concrete_fields}
            unknown = [column for column in columns if column not in known]
            if unknown:
                raise RestoreRefused(
                    f"The archive's {entry['table']} has columns this code does not have "
                    f"({', '.join(unknown)}): it was made by a newer Palaver."
                )
            stage = f"_restore_stage_{index}"
            cur.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} (LIKE public.{} INCLUDING DEFAULTS) ON COMMIT DROP"
                ).format(sql.Identifier(stage), sql.Identifier(entry["table"]))
            )
            with cur.copy(
                sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(stage), sql.SQL(", ").join(map(sql.Identifier, columns))
                )
            ) as copy:
                copy.write(public[entry["member"]])
            pk = model._meta.pk
            new_id: sql.Composable | None = None
            if model is account_model:
                if not plan.same_id:
                    new_id = sql.SQL("{}::uuid").format(sql.Literal(str(plan.target_id)))
            elif pk is not None and getattr(pk, "column", None) and _is_integer_auto(pk):
                new_id = sql.SQL("nextval(pg_get_serial_sequence({}, {}))").format(
                    sql.Literal(f"public.{entry['table']}"), sql.Literal(pk.column)
                )
            elif pk is not None and isinstance(pk, models.UUIDField) and not plan.same_id:
                new_id = sql.SQL("gen_random_uuid()")
            # References to rows whose ids changed, first (they point at the old ids).
            for field in model._meta.concrete_fields:
                if isinstance(field, models.ForeignKey) and field.related_model in maps:
                    _refuse_unknown_entries(
                        cur, sql.Identifier(stage), field, maps[field.related_model]
                    )
                    cur.execute(
                        sql.SQL(
                            "UPDATE {s} SET {c} = m.new FROM {m} m WHERE {s}.{c} = m.old"
                        ).format(
                            s=sql.Identifier(stage),
                            c=sql.Identifier(field.column),
                            m=sql.Identifier(maps[field.related_model]),
                        )
                    )
            if new_id is not None and pk is not None:
                mapping = f"_restore_map_{index}"
                cur.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE {m} ON COMMIT DROP AS "
                        "SELECT {pk} AS old, {new} AS new FROM {s}"
                    ).format(
                        m=sql.Identifier(mapping),
                        pk=sql.Identifier(pk.column),
                        new=new_id,
                        s=sql.Identifier(stage),
                    )
                )
                cur.execute(
                    sql.SQL("UPDATE {s} SET {pk} = m.new FROM {m} m WHERE {s}.{pk} = m.old").format(
                        s=sql.Identifier(stage),
                        pk=sql.Identifier(pk.column),
                        m=sql.Identifier(mapping),
                    )
                )
                maps[model] = mapping
            if model is account_model:
                _put_account_row(cur, plan, stage, columns)
                continue
            if model is user_model():
                _check_emails(cur, stage)
            try:
                with transaction.atomic():
                    cur.execute(
                        sql.SQL("INSERT INTO public.{t} ({c}) SELECT {c} FROM {s}").format(
                            t=sql.Identifier(entry["table"]),
                            c=sql.SQL(", ").join(map(sql.Identifier, columns)),
                            s=sql.Identifier(stage),
                        )
                    )
            except psycopg.errors.IntegrityError as exc:
                raise RestoreRefused(
                    f"The archive's {entry['table']} rows clash with rows here: {_first_line(exc)}"
                ) from None
            except Exception as exc:
                raise RestoreRefused(
                    f"The archive's {entry['table']} rows cannot be restored: {_first_line(exc)}"
                ) from None
    return maps


def _catalog_maps(manifest: dict[str, Any]) -> dict[type[models.Model], str]:
    """For each catalog whose entries have other ids here than in the archive's database (an
    account moved between databases), a temporary table mapping the archive's ids to this
    database's, found by natural key; the rows restored after are rewritten through it like
    any other changed id. Refuses when the account refers to an entry this catalog lacks."""
    catalogs = manifest.get("catalogs") or {}
    models_by_table = {model._meta.db_table: model for model in catalog_references()}
    maps: dict[type[models.Model], str] = {}
    raw = _raw()
    with raw.cursor() as cur:
        for index, (table, recorded) in enumerate(sorted(catalogs.items())):
            model = models_by_table.get(table)
            if model is None or catalog_key(model) != recorded["key"]:
                continue
            pk = model._meta.pk
            assert pk is not None
            cur.execute(
                sql.SQL("SELECT {}::text, {}::text FROM public.{}").format(
                    sql.Identifier(pk.column),
                    sql.Identifier(recorded["key"]),
                    sql.Identifier(table),
                )
            )
            here = {key: pk_value for pk_value, key in cur.fetchall()}
            pairs = [(old, here.get(key), key) for old, key in recorded["ids"].items()]
            if all(new == old for old, new, _key in pairs):
                continue
            mapping = f"{CATALOG_MAP_PREFIX}{index}"
            cur.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT old::{t} AS old, "
                    "new::{t} AS new, key FROM unnest(%s::text[], %s::text[], %s::text[]) "
                    "AS m(old, new, key)"
                ).format(sql.Identifier(mapping), t=sql.SQL(pk.db_type(connection) or "text")),
                [[p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]],
            )
            maps[model] = mapping
    return maps


def _refuse_unknown_entries(cur: Any, table: sql.Composable, field: Any, mapping: str) -> None:
    """Refuse when rows of `table` point, through `field`, at a catalog entry (mapped by
    `mapping`) that this database lacks. Only catalog mappings can lack an entry."""
    if not mapping.startswith(CATALOG_MAP_PREFIX):
        return
    cur.execute(
        sql.SQL(
            "SELECT m.key FROM {t} r JOIN {m} m ON m.old = r.{c} WHERE m.new IS NULL LIMIT 1"
        ).format(t=table, m=sql.Identifier(mapping), c=sql.Identifier(field.column))
    )
    row = cur.fetchone()
    if row is not None:
        catalog = field.related_model._meta
        raise RestoreRefused(
            f"The account uses {catalog.verbose_name} {row[0]!r}, which is not in this "
            f"database's catalog ({catalog.db_table}): add it first, then restore again."
        )


def _put_account_row(cur: Any, plan: _Plan, stage: str, columns: list[str]) -> None:
    cur.execute(
        sql.SQL("UPDATE {} SET name = {}, schema_name = {}").format(
            sql.Identifier(stage), sql.Literal(plan.name), sql.Literal(plan.schema_name)
        )
    )
    if plan.replacing is not None:
        kept = [column for column in columns if column not in {"id", "name", "schema_name"}]
        if kept:
            cur.execute(
                sql.SQL("UPDATE public.accounts_account a SET ({c}) = (SELECT {c} FROM {s}) "
                        "WHERE a.id = {id}").format(
                    c=sql.SQL(", ").join(map(sql.Identifier, kept)),
                    s=sql.Identifier(stage),
                    id=sql.Literal(str(plan.target_id)),
                )
            )  # fmt: skip
        return
    cur.execute(
        sql.SQL("INSERT INTO public.accounts_account ({c}) SELECT {c} FROM {s}").format(
            c=sql.SQL(", ").join(map(sql.Identifier, columns)), s=sql.Identifier(stage)
        )
    )


def _check_emails(cur: Any, stage: str) -> None:
    cur.execute(
        sql.SQL(
            "SELECT s.email FROM {} s JOIN public.accounts_user u ON u.email = s.email "
            "ORDER BY s.email"
        ).format(sql.Identifier(stage))
    )
    taken = [email for (email,) in cur.fetchall()]
    if taken:
        shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        raise RestoreRefused(
            f"The archive's users' emails are taken by other accounts here ({shown}); emails "
            "are unique. Restore without its users (--without-users) and add people afterwards, "
            "or delete those users first."
        )


def _rewrite_schema_references(scratch: str, maps: dict[type[models.Model], str]) -> None:
    """Account-schema rows point at public rows with no constraint (an agent's AccountLLM):
    point them at the new ids."""
    if not maps:
        return
    tenant_labels = {app.rsplit(".", 1)[-1] for app in provisioning.account_app_labels()}
    raw = _raw()
    with raw.cursor() as cur:
        for model in apps.get_models(include_auto_created=True):
            if model._meta.app_label not in tenant_labels:
                continue
            for field in model._meta.concrete_fields:
                if isinstance(field, models.ForeignKey) and field.related_model in maps:
                    _refuse_unknown_entries(
                        cur,
                        sql.Identifier(scratch, model._meta.db_table),
                        field,
                        maps[field.related_model],
                    )
                    cur.execute(
                        sql.SQL(
                            "UPDATE {sc}.{t} SET {c} = m.new FROM {m} m WHERE {sc}.{t}.{c} = m.old"
                        ).format(
                            sc=sql.Identifier(scratch),
                            t=sql.Identifier(model._meta.db_table),
                            c=sql.Identifier(field.column),
                            m=sql.Identifier(maps[field.related_model]),
                        )
                    )


def _retoken_uploads(scratch: str, manifest: dict[str, Any]) -> dict[str, str]:
    """New tokens for the uploads of an account restored under another id (the storage is
    shared: the original's files keep theirs). Returns old storage name -> new."""
    if not manifest.get("uploads"):
        return {}
    renamed: dict[str, str] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("SELECT id, token, name FROM {}.media_upload")
            .format(sql.Identifier(scratch))
            .as_string()
        )
        for row_id, token, name in cursor.fetchall():
            fresh = uploads.new_token()
            cursor.execute(
                sql.SQL("UPDATE {}.media_upload SET token = %s WHERE id = %s")
                .format(sql.Identifier(scratch))
                .as_string(),
                [fresh, row_id],
            )
            renamed[uploads.storage_name(token, name)] = uploads.storage_name(fresh, name)
    return renamed


def _after_commit(
    account: Account,
    manifest: dict[str, Any],
    files: Path,
    new_names: dict[str, str],
    replaced_files: list[str],
) -> None:
    """Once the restore commits: the uploaded files written (`files`, the spool, is theirs to
    delete then), the replaced account's files that the archive lacks deleted, the gateway
    told. A file that cannot be written is logged: its row stands, its link answers 404."""
    from channels_app.events import ServersChanged, tell_gateway_on_commit

    kept = [
        (new_names.get(entry["name"], entry["name"]), entry["spooled"])
        for entry in manifest.get("uploads") or []
    ]
    wanted = {name for name, _path in kept}
    stale = [name for name in replaced_files if name not in wanted]

    def write_files() -> None:
        storage = uploads.storage()
        try:
            for name, path in kept:
                try:
                    if storage.exists(name):
                        continue  # replaced by itself: a token names one file
                    with open(path, "rb") as handle:
                        saved = storage.save(name, handle)
                    if saved != name:
                        storage.delete(saved)
                        logger.error("the uploads storage renamed %s to %s; removed", name, saved)
                except Exception:
                    logger.exception("could not write the restored file %s", name)
            for name in stale:
                try:
                    storage.delete(name)
                except Exception:
                    logger.exception("could not delete the replaced file %s", name)
        finally:
            shutil.rmtree(files, ignore_errors=True)

    transaction.on_commit(write_files)
    tell_gateway_on_commit(ServersChanged(account_id=str(account.pk)))
