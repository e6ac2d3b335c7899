"""Backing up one account: its schema, its public rows and its uploaded files, in one archive
(lifecycle.archive describes the format).

Everything read from the database is read in one REPEATABLE READ, READ ONLY transaction on a
connection of its own, with COPY ... TO STDOUT: one snapshot, so a line stored while the backup
runs is either wholly in it (with its channel, notifications...) or not at all, and the account
keeps working meanwhile (a reader blocks no writer). pg_dump would need a client of the server's
major version (the embedded PostgreSQL 16 and Debian's 15 differ); COPY does not.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import psycopg
from django.conf import settings
from psycopg import sql

from config.database import connection_params
from core.crypto import key_fingerprints
from lifecycle.archive import (
    FORMAT,
    FORMAT_VERSION,
    ArchiveError,
    OwnedModel,
    Spool,
    catalog_key,
    catalog_references,
    owned_public_models,
    seal_manifest,
    write_tar,
)
from media import uploads

if TYPE_CHECKING:
    from accounts.models import Account

Progress = Callable[[int, int], None]
# Rows of COPY output gathered before they go to the compressor: one call per row costs more
# than the compression itself.
WRITE_BATCH = 1 << 20
UPLOAD_TABLE = "media_upload"


def _connect() -> psycopg.Connection[Any]:
    conn = psycopg.connect(**connection_params(settings.DATABASES["default"]))
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def schema_tables(cur: psycopg.Cursor[Any], schema: str) -> list[tuple[str, list[str]]]:
    """The schema's tables (django_migrations aside: the manifest carries it) and the columns a
    COPY writes (generated columns are computed again when loaded), in a stable order."""
    cur.execute(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "AND a.attgenerated = '' "
        "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname <> 'django_migrations' "
        "GROUP BY c.relname ORDER BY c.relname",
        [schema],
    )
    return [(name, list(columns)) for name, columns in cur.fetchall()]


def _public_where(
    owned: OwnedModel, by_model: dict[Any, OwnedModel], account_id: Any
) -> sql.Composable:
    """`owned`'s rows of the account, as a condition on its table (a chain of IN subqueries up
    the foreign keys to the account)."""
    if owned.via is None:
        return sql.SQL("{} = {}").format(
            sql.Identifier(owned.model._meta.pk.column), sql.Literal(account_id)
        )
    parent = by_model[owned.via.related_model]
    target = owned.via.target_field.column
    return sql.SQL("{} IN (SELECT {} FROM {} WHERE {})").format(
        sql.Identifier(owned.via.column),
        sql.Identifier(target),
        sql.Identifier(parent.table),
        _public_where(parent, by_model, account_id),
    )


def _public_columns(owned: OwnedModel) -> list[str]:
    return [field.column for field in owned.model._meta.concrete_fields if not field.generated]


def write_backup(
    *, account: Account, output: str | os.PathLike[str] | BinaryIO | IO[bytes],
    progress: Progress | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write `account`'s archive to `output` (a path, or a binary file open for writing) and
    return its manifest. `progress(done_rows, total_rows)` is called as rows are written.
    It reads on a connection of its own: what the caller's open transaction has not committed
    is not in the archive."""
    started = time.monotonic()
    schema = account.schema_name
    spool = Spool()
    try:
        manifest = _dump(account, schema, spool, progress or (lambda done, total: None))
        manifest["seconds_reading"] = round(time.monotonic() - started, 3)
        # As read_manifest will return it: sealed with its checksum.
        manifest = json.loads(seal_manifest(manifest))
        if isinstance(output, str | os.PathLike):
            path = os.fspath(output)
            try:
                handle = open(path + ".partial", "wb")  # noqa: SIM115 (closed below)
            except OSError as exc:
                raise ArchiveError(f"Cannot write {path}: {exc.strerror}.") from None
            try:
                with handle:
                    write_tar(handle, manifest, spool.members)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(path + ".partial", path)
            except BaseException:
                with _suppress():
                    os.unlink(path + ".partial")
                raise
        else:
            write_tar(output, manifest, spool.members)  # type: ignore[arg-type]
    finally:
        spool.cleanup()
    return manifest


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _dump(account: Account, schema: str, spool: Spool, progress: Progress) -> dict[str, Any]:
    owned = owned_public_models()
    by_model = {item.model: item for item in owned}
    tables: list[dict[str, Any]] = []
    with _connect() as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        if cur.fetchone() is None:
            raise ArchiveError(
                f"The schema {schema} of account {account.name!r} does not exist: nothing to back "
                "up."
            )
        cur.execute(
            sql.SQL("SELECT app, name FROM {}.django_migrations ORDER BY id").format(
                sql.Identifier(schema)
            )
        )
        migrations = [[app, name] for app, name in cur.fetchall()]
        cur.execute("SELECT current_setting('server_version_num')::int")
        server_version = cur.fetchone()[0]  # type: ignore[index]

        jobs: list[tuple[str, str, str, list[str], sql.Composed]] = []
        for table, columns in schema_tables(cur, schema):
            source = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            jobs.append(("account", table, f"schema/{table}.copy.gz", columns, source))
        for item in owned:
            columns = _public_columns(item)
            query = sql.SQL("(SELECT {} FROM public.{} WHERE {})").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(item.table),
                _public_where(item, by_model, account.pk),
            )
            jobs.append(("public", item.table, f"public/{item.table}.copy.gz", columns, query))

        counts = _counts(cur, jobs)
        total = sum(counts)
        done = 0
        progress(0, total)
        for (where, table, member, columns, source), expected in zip(jobs, counts, strict=True):
            writer = spool.data_member(member)
            copy_sql: sql.Composed = sql.SQL("COPY {} ({}) TO STDOUT").format(
                source, sql.SQL(", ").join(map(sql.Identifier, columns))
            )
            if where == "public":
                copy_sql = sql.SQL("COPY {} TO STDOUT").format(source)
            batch = bytearray()
            rows_before = 0
            with cur.copy(copy_sql) as copy:
                for data in copy:
                    batch += data
                    if len(batch) >= WRITE_BATCH:
                        writer.write(bytes(batch))
                        batch.clear()
                        progress(done + writer.rows, total)
                if batch:
                    writer.write(bytes(batch))
            written = writer.close()
            spool.add(written)
            rows_before = written.rows or 0
            if rows_before != expected:
                raise ArchiveError(
                    f"{table}: COPY wrote {rows_before} rows where the snapshot counted "
                    f"{expected}; nothing was written."
                )
            done += rows_before
            progress(done, total)
            entry = {
                "member": member,
                "schema": where,
                "table": table,
                "columns": columns,
                "rows": rows_before,
                "bytes": written.bytes,
                "sha256": written.sha256,
            }
            if where == "public":
                entry["model"] = next(i.label for i in owned if i.table == table)
            tables.append(entry)

        sequences = _sequences(cur, schema)
        indexes = _indexes(cur, schema)
        catalogs = _catalogs(cur)
        upload_names = _upload_names(cur, schema)

    uploads_entries, missing = _spool_uploads(spool, upload_names)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "account": {
            "id": str(account.pk),
            "name": account.name,
            "schema_name": schema,
        },
        "postgresql_version": server_version,
        "migrations": migrations,
        "key_fingerprints": key_fingerprints(),
        "tables": tables,
        "sequences": sequences,
        "indexes": indexes,
        "catalogs": catalogs,
        "uploads": uploads_entries,
        "uploads_missing": missing,
        "rows": sum(entry["rows"] for entry in tables),
    }


def _counts(
    cur: psycopg.Cursor[Any], jobs: list[tuple[str, str, str, list[str], sql.Composed]]
) -> list[int]:
    if not jobs:
        return []
    branches = [
        sql.SQL("SELECT {}::int AS i, count(*) FROM {} AS t").format(sql.Literal(index), job[4])
        for index, job in enumerate(jobs)
    ]
    cur.execute(sql.SQL(" UNION ALL ").join(branches))
    counts = dict(cur.fetchall())
    return [int(counts[index]) for index in range(len(jobs))]


def _sequences(cur: psycopg.Cursor[Any], schema: str) -> list[dict[str, Any]]:
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'S' ORDER BY c.relname",
        [schema],
    )
    names = [name for (name,) in cur.fetchall()]
    result = []
    for name in names:
        cur.execute(
            sql.SQL("SELECT last_value, is_called FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name)
            )
        )
        last_value, is_called = cur.fetchone()  # type: ignore[misc]
        result.append({"name": name, "last_value": int(last_value), "is_called": bool(is_called)})
    return result


def _catalogs(cur: psycopg.Cursor[Any]) -> dict[str, dict[str, Any]]:
    """Each catalog the account's rows point at: its natural key's column and every row's
    id -> key (catalogs are small), so a restore into another database finds the same entries
    under its own ids."""
    result: dict[str, dict[str, Any]] = {}
    for model in catalog_references():
        key = catalog_key(model)
        if key is None:
            continue
        table = str(model._meta.db_table)
        cur.execute(
            sql.SQL("SELECT {}::text, {}::text FROM public.{}").format(
                sql.Identifier(model._meta.pk.column), sql.Identifier(key), sql.Identifier(table)
            )
        )
        result[table] = {"key": key, "ids": dict(cur.fetchall())}
    return result


def _indexes(cur: psycopg.Cursor[Any], schema: str) -> list[dict[str, str]]:
    """Every index of the schema, its definition with the schema's name left out: those made
    outside migrations (knowledge.vectors' HNSW index per embedding size) are made again when
    restored."""
    cur.execute(
        "SELECT ic.relname, t.relname, pg_get_indexdef(i.indexrelid) "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = ic.relnamespace "
        "WHERE n.nspname = %s ORDER BY ic.relname",
        [schema],
    )
    qualified = sql.Identifier(schema).as_string(cur) + "."
    return [
        {"name": name, "table": table, "definition": definition.replace(qualified, "", 1)}
        for name, table, definition in cur.fetchall()
    ]


def _upload_names(cur: psycopg.Cursor[Any], schema: str) -> list[str]:
    cur.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        [schema, UPLOAD_TABLE],
    )
    if cur.fetchone() is None:
        return []
    cur.execute(
        sql.SQL("SELECT token, name FROM {}.{} ORDER BY id").format(
            sql.Identifier(schema), sql.Identifier(UPLOAD_TABLE)
        )
    )
    return [uploads.storage_name(token, name) for token, name in cur.fetchall()]


def _spool_uploads(spool: Spool, names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Copy each uploaded file into the spool. A file deleted since the snapshot (its row went
    after it) is listed as missing, not an error."""
    storage = uploads.storage()
    entries: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in names:
        try:
            handle = storage.open(name, "rb")
        except (FileNotFoundError, OSError):
            missing.append(name)
            continue
        with handle:
            member = spool.raw_member(f"uploads/{name}", handle)
        entries.append(
            {"member": member.name, "name": name, "bytes": member.bytes, "sha256": member.sha256}
        )
    return entries, missing
