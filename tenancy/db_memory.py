"""Bounding the memory a long-lived database connection holds for the schemas it has touched.

A PostgreSQL backend caches the catalog entries (relations, indexes, their attributes, plans)
of every table it uses and never gives them back while it lives. With a schema per account,
a connection that reads the message, channel and server tables of N accounts grows by about
90 KB per account (docs/benchmarks.md, "Database memory"): the gateway's writer touches every
active account, and a web or Celery process keeping its connection (DATABASE_CONN_MAX_AGE > 0)
touches every account it serves. The only way to free that memory is to end the backend.

So a connection is recycled (closed; Django opens a new one on its next use) between units of
work, never inside a transaction, once it has touched DATABASE_RECYCLE_AFTER_SCHEMAS distinct
account schemas since it opened, or once the backend's own memory, read from
`pg_backend_memory_contexts` at most every DATABASE_MEMORY_CHECK_SECONDS, passes
DATABASE_RECYCLE_AFTER_BYTES. Either limit is off at 0.

It lives in tenancy because the growth is the price of a schema per account, and tenancy is
where schemas are entered: django-tenants calls `note_tenant` on every `set_tenant` /
`set_schema` (settings.EXTRA_SET_TENANT_METHOD_PATH), which covers `tenancy.switch`, the
request middleware and provisioning. Code that reaches account tables without switching
(schema-qualified SQL) says which schemas it touched with `note_schemas`.
"""

import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionProxy
from django_tenants.utils import get_public_schema_name

logger = logging.getLogger(__name__)

MEMORY_QUERY = "SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts"
# pg_backend_memory_contexts came with PostgreSQL 14.
MEMORY_VIEW_SERVER_VERSION = 140000
# insufficient_privilege, undefined_table: this server will not tell, on any connection.
UNREADABLE_SQLSTATES = {"42501", "42P01"}


@dataclass(slots=True)
class _State:
    """What one Django connection wrapper did on the database connection it holds now."""

    # The DB-API connection the schemas below were touched on (None: noted before it opened).
    raw: "weakref.ReferenceType[Any] | None" = None
    schemas: set[str] = field(default_factory=set)
    checked_at: float = float("-inf")
    # The server cannot tell (PostgreSQL < 14, or no privilege to read the view).
    memory_unreadable: bool = False
    # A wrapper's own record: the state of the connection it held last.
    last: "_State | None" = None


# Keyed by the DB-API connection a state was counted on, or, before a wrapper opens one, by the
# wrapper (what it noted then is carried over to the connection it opens). A pooled connection
# keeps its count while it waits in the pool and moves from wrapper to wrapper (DATABASE_POOL):
# the count belongs to the backend, whichever thread holds it.
_states: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()
# Recycles since the process started, by reason ("schemas", "memory"): read by benchmarks and
# tests; the log says the same thing line by line.
recycles: dict[str, int] = {"schemas": 0, "memory": 0}


def _wrapper(connection: BaseDatabaseWrapper) -> BaseDatabaseWrapper:
    """This thread's wrapper behind django.db.connection, a proxy that looks the wrapper up
    again on every attribute read: the state belongs to the wrapper, and resolving once keeps
    maybe_recycle cheap enough to call per account."""
    if isinstance(connection, ConnectionProxy):
        return connections[connection._alias]
    return connection


def _state(connection: BaseDatabaseWrapper) -> _State:
    """The state of the database connection this wrapper holds now: started afresh for a
    connection not seen before (Django opened a new one: CONN_MAX_AGE, an error, a test
    teardown), kept for one seen before (taken from the pool again)."""
    own = _states.get(connection)
    if own is None:
        own = _states[connection] = _State()
    raw = connection.connection
    if raw is None:
        return own
    state = own.last
    if state is None or state.raw is None or state.raw() is not raw:
        state = _states.get(raw)
        if state is None:
            # A fresh backend is small: its first memory check can wait for the usual
            # interval from the last one this wrapper made.
            before = own.last or own
            state = _states[raw] = _State(
                raw=weakref.ref(raw),
                checked_at=before.checked_at,
                memory_unreadable=before.memory_unreadable,
            )
        own.last = state
    if own.schemas:
        state.schemas.update(own.schemas)
        own.schemas.clear()
    return state


def note_schemas(connection: BaseDatabaseWrapper, schema_names: Iterable[str]) -> None:
    """Count schemas this connection has read or written (schema-qualified SQL, which does not
    go through set_tenant, must call this)."""
    _state(_wrapper(connection)).schemas.update(schema_names)


def note_tenant(connection: BaseDatabaseWrapper, tenant: Any) -> None:
    """django-tenants' EXTRA_SET_TENANT_METHOD: called on every set_tenant and set_schema."""
    schema_name = tenant.schema_name
    if schema_name != get_public_schema_name():
        _state(_wrapper(connection)).schemas.add(schema_name)


def schemas_touched(connection: BaseDatabaseWrapper) -> int:
    return len(_state(_wrapper(connection)).schemas)


def backend_memory(connection: BaseDatabaseWrapper) -> int | None:
    """Bytes the connection's backend holds in its memory contexts, or None when the server
    cannot say. Opens the connection if it is closed."""
    connection = _wrapper(connection)
    connection.ensure_connection()
    state = _state(connection)
    if state.memory_unreadable:
        return None
    if connection.pg_version < MEMORY_VIEW_SERVER_VERSION:  # type: ignore[attr-defined]
        state.memory_unreadable = True
        return None
    try:
        with connection.cursor() as cursor:
            cursor.execute(MEMORY_QUERY)
            row = cursor.fetchone()
    except DatabaseError as exc:
        # Anything but "not allowed" or "no such view" (a lost connection, say) is the caller's
        # to handle, and says nothing about the next connection; so is any error inside the
        # caller's transaction, which it has aborted.
        refused = getattr(exc.__cause__, "sqlstate", None) in UNREADABLE_SQLSTATES
        if not refused or connection.in_atomic_block:
            raise
        # Reading the view takes superuser or pg_read_all_stats; the schema limit still holds.
        _memory_unreadable(state)
        return None
    return int(row[0]) if row and row[0] is not None else None


def _memory_unreadable(state: _State) -> None:
    """The server refused to show this backend's memory: recycle by schema count only."""
    logger.warning(
        "cannot read pg_backend_memory_contexts (grant pg_read_all_stats to the database "
        "user); connections are recycled by schema count only",
        exc_info=True,
    )
    state.memory_unreadable = True


def _limit_passed(state: _State, read_memory: Callable[[], int | None]) -> str | None:
    """Which recycling limit a connection has passed ("schemas", "memory") or None. Its
    memory is read (`read_memory`) at most every DATABASE_MEMORY_CHECK_SECONDS."""
    after_schemas: int = settings.DATABASE_RECYCLE_AFTER_SCHEMAS
    after_bytes: int = settings.DATABASE_RECYCLE_AFTER_BYTES
    if after_schemas and len(state.schemas) >= after_schemas:
        return "schemas"
    if after_bytes and not state.memory_unreadable:
        now = time.monotonic()
        if now - state.checked_at >= settings.DATABASE_MEMORY_CHECK_SECONDS:
            state.checked_at = now
            used = read_memory()
            if used is not None and used >= after_bytes:
                return "memory"
    return None


def maybe_recycle(connection: BaseDatabaseWrapper) -> str | None:
    """Close the connection if it has touched too many schemas or holds too much memory; the
    reason ("schemas", "memory") or None. Call it between units of work: it does nothing to a
    closed connection or inside a transaction."""
    connection = _wrapper(connection)
    # Open, and between transactions (autocommit is only read while a connection is open).
    if connection.connection is None or connection.in_atomic_block or not connection.autocommit:
        return None
    state = _state(connection)
    reason = _limit_passed(state, lambda: backend_memory(connection))
    if reason is None:
        return None
    logger.info(
        "recycling database connection %s: %d schemas touched (%s limit passed)",
        connection.alias,
        len(state.schemas),
        reason,
    )
    if connection.pool:  # type: ignore[attr-defined]
        # Handed back, a pooled connection would live on in the pool: end its backend first.
        connection.connection.close()
    connection.close()
    recycles[reason] += 1
    return reason


def _raw_backend_memory(raw: Any, state: _State) -> int | None:
    """backend_memory for a pooled connection outside any wrapper (autocommit, so a refused
    read leaves it idle)."""
    import psycopg

    if raw.info.server_version < MEMORY_VIEW_SERVER_VERSION:
        state.memory_unreadable = True
        return None
    try:
        row = raw.execute(MEMORY_QUERY).fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate not in UNREADABLE_SQLSTATES:
            raise
        _memory_unreadable(state)
        return None
    return int(row[0]) if row and row[0] is not None else None


def reset_pooled_connection(raw: Any) -> None:
    """The pool's `reset` (settings.DATABASE_POOL), run on every connection handed back: it
    goes back on the public schema, so that no account's search_path waits in the pool for
    the next request (django-tenants sets the path again before a borrower's first query
    anyway: this is the second lock), and a connection past either limit is retired (the pool
    replaces it). Runs on the pool's own thread, never in a request's time."""
    from django_tenants.utils import get_public_schema_name
    from psycopg import sql

    state = _states.get(raw)
    reason = None
    if state is not None:
        reason = _limit_passed(state, lambda: _raw_backend_memory(raw, state))
    if reason is not None:
        logger.info(
            "recycling pooled database connection: %d schemas touched (%s limit passed)",
            len(state.schemas) if state else 0,
            reason,
        )
        recycles[reason] += 1
        # Expired, the pool closes it quietly and opens another; a closed one it would also
        # replace, with a warning.
        if hasattr(raw, "_expire_at"):
            raw._expire_at = 0.0
        else:
            raw.close()
        return
    raw.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(get_public_schema_name())))


def recycle_connections(**_signal_kwargs: Any) -> None:
    """request_finished / task_postrun receiver: every connection this thread has opened."""
    for connection in connections.all(initialized_only=True):
        try:
            maybe_recycle(connection)
        except DatabaseError:
            # The response has gone or the task has run; a broken connection is closed, not
            # raised into the signal's sender.
            logger.warning("database connection broken; closing it", exc_info=True)
            connection.close()
