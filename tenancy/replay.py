"""Pending account-app migrations applied at SQL speed: captured once, replayed in every schema.

Django's migrate costs about half a second per schema (it builds the migration graph and the
project state, introspects, and runs each operation), which over 10,000 account schemas is over
an hour per deploy. The schemas that lag behind by the same migrations need the same SQL, so it
is captured once per group (the schema editor's collected SQL, as `sqlmigrate` prints it and as
tenancy.provisioning builds new schemas) and replayed in each schema of the group: one
transaction and one round trip per schema, the SQL and the django_migrations rows together, so
a schema is migrated entirely or not at all.

What the capture can prove equivalent to Django's own migrate is replayed; the rest falls back
to Django's migrate for those schemas, and `plan_replay` says why:

- operations of the account apps that only produce SQL (`reduces_to_sql`) and migrations that
  run in a transaction (`atomic`): RunPython, or a non-atomic migration (CREATE INDEX
  CONCURRENTLY), falls back;
- shared-app migrations are recorded only: in an account schema the tenancy router makes every
  one of their operations a no-op, so there is nothing to run, just the row to record (this is
  what keeps a new public-app migration from costing a migrate per account);
- the SQL is captured by applying the group's migrations for real in its first schema, in a
  transaction that is rolled back, recording each statement the schema editor runs: operations
  that look at the live schema (AlterField dropping a constraint by its introspected name, say)
  see it as migrate would, after the group's earlier migrations. The schemas of a group were
  built by the same SQL, so names agree; where one does not, its statement fails, that schema is
  rolled back and reported, and the others go on. If the capture fails in a schema (its data
  breaks a new constraint, its table is locked) the next one is tried.

A lock held on a schema's table makes its replay wait at most `lock_timeout`: it is retried
after the rest of the fleet rather than stalling it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Event, Lock
from typing import Any

import psycopg
from django.conf import settings
from django.db import transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration as DjangoMigration
from psycopg import sql

from config.database import connection_params
from tenancy.context import connection
from tenancy.migration_state import Migration, SchemaState
from tenancy.provisioning import account_app_labels

# SQLSTATE lock_not_available: lock_timeout expired.
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class ReplayGroup:
    """Schemas lagging by the same migrations, and how they are brought up to date."""

    missing: tuple[Migration, ...]
    schemas: tuple[str, ...]
    # The SQL replayed in each schema, in order (empty when only rows are recorded); None when
    # the group falls back to Django's migrate, with `fallback_reason` saying why.
    statements: tuple[str, ...] | None
    fallback_reason: str = ""

    @property
    def replayable(self) -> bool:
        return self.statements is not None

    def describe_migrations(self) -> str:
        return ", ".join(f"{app}.{name}" for app, name in self.missing)


@dataclass
class SchemaOutcome:
    schema: str
    ok: bool
    locked: bool = False
    statement: str = ""  # the statement that failed, if one did
    error: str = ""
    already: bool = False  # found migrated by another run (or a killed one's backend)

    def describe(self) -> str:
        if self.locked:
            return f"a table stayed locked (lock_timeout): {self.error}"
        if self.statement:
            return f"{self.error} in statement: {_one_line(self.statement)}"
        return self.error


def _one_line(statement: str, limit: int = 300) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- planning ------------------------------------------------------------------------------------


def group_lagging(states: Iterable[SchemaState]) -> dict[tuple[Migration, ...], list[str]]:
    """Lagging schemas grouped by the exact migrations they miss (usually one group)."""
    groups: dict[tuple[Migration, ...], list[str]] = {}
    for state in states:
        if state.exists and state.error is None and state.missing:
            groups.setdefault(state.missing, []).append(state.schema)
    return groups


def plan_replay(states: Iterable[SchemaState], *, lock_timeout_ms: int = 2000) -> list[ReplayGroup]:
    """How each group of lagging schemas is migrated: its captured SQL, or why it cannot be.
    `lock_timeout_ms` bounds the capture's wait for a lock in the schema it runs in."""
    plans = []
    for missing, schemas in group_lagging(states).items():
        plans.append(_plan_group(missing, tuple(schemas), lock_timeout_ms))
    return plans


# How many schemas of a group the capture is tried in before the group falls back to Django's
# migrate: a schema whose statement fails (its data breaks a new constraint) or whose table is
# locked is skipped for the next, and is then reported by its own replay.
CAPTURE_ATTEMPTS = 3


def _plan_group(
    missing: tuple[Migration, ...], schemas: tuple[str, ...], lock_timeout_ms: int = 2000
) -> ReplayGroup:
    executor = MigrationExecutor(connection)
    loader = executor.loader
    graph = loader.graph
    missing_set = set(missing)
    unknown = [key for key in missing if key not in graph.nodes]
    if unknown:
        return ReplayGroup(missing, schemas, None, f"{unknown[0]} is not in the migration graph")
    # What the schemas have: every node not missing. Its state must be closed under
    # dependencies (a migration applied before one it depends on cannot be replayed faithfully).
    applied = [key for key in graph.nodes if key not in missing_set]
    for key in applied:
        lacking = [parent for parent in graph.node_map[key].parents if parent.key in missing_set]
        if lacking:
            return ReplayGroup(
                missing,
                schemas,
                None,
                f"{key[0]}.{key[1]} is applied but depends on {lacking[0].key[0]}."
                f"{lacking[0].key[1]}, which is not (an inconsistent history)",
            )
    labels = account_app_labels()
    migrations = [loader.get_migration(app, name) for app, name in missing]
    reason = _unsafe_reason(migrations, labels)
    if reason:
        return ReplayGroup(missing, schemas, None, reason)
    account_migrations = [m for m in migrations if m.app_label in labels]
    if not account_migrations:
        return ReplayGroup(missing, schemas, ())
    failures = []
    for schema in schemas[:CAPTURE_ATTEMPTS]:
        try:
            statements = _capture(executor, applied, account_migrations, schema, lock_timeout_ms)
        except Exception as exc:
            failures.append(f"in {schema}: {type(exc).__name__}: {_message(exc)}")
            continue
        return ReplayGroup(missing, schemas, tuple(statements))
    return ReplayGroup(
        missing,
        schemas,
        None,
        "capturing the SQL failed " + "; ".join(failures),
    )


def _unsafe_reason(migrations: Sequence[DjangoMigration], labels: set[str]) -> str:
    for migration in migrations:
        if migration.app_label not in labels:
            continue  # shared app: a no-op in an account schema, only recorded
        name = f"{migration.app_label}.{migration.name}"
        if not migration.atomic:
            return f"{name} is not atomic (atomic = False): it cannot be replayed in a transaction"
        for operation in migration.operations:
            if not operation.reduces_to_sql:
                return (
                    f"{name} runs {type(operation).__name__}, whose effect is not SQL that "
                    "can be captured once"
                )
    return ""


def _capture(
    executor: MigrationExecutor,
    applied: list[Migration],
    migrations: list[DjangoMigration],
    schema: str,
    lock_timeout_ms: int,
) -> list[str]:
    """The SQL Django's migrate runs for `migrations` applied after `applied` in `schema`: they
    are applied there for real, as migrate would, in a transaction that is rolled back, and
    every statement the schema editor executes is recorded.

    Collecting the SQL without running it (`sqlmigrate`, collect_sql) is not enough: what the
    schema editor introspects (the name of a constraint to drop, say) would be read from the
    schema as it was before the group's first migration, so an AlterField undoing what an
    earlier pending migration added would find nothing to drop and silently drop nothing."""
    previous = connection.tenant
    connection.set_schema(schema)
    statements: list[str] = []
    try:
        state = executor.loader.graph.make_state(
            nodes=applied, at_end=True, real_apps=executor.loader.unmigrated_apps
        )
        with transaction.atomic(using=connection.alias):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout_ms)}ms"]
                )
            for migration in migrations:
                # Not atomic itself: inside this transaction, and a failing deferred statement
                # must not leave an atomic block of the editor's own open.
                with connection.schema_editor(atomic=False) as editor:
                    _record_statements(editor, statements)
                    state = migration.apply(state, editor)
            transaction.set_rollback(True, using=connection.alias)
        return [statement for statement in statements if not _is_comment(statement)]
    finally:
        connection.set_tenant(previous)


def _record_statements(editor: Any, statements: list[str]) -> None:
    """Make the schema editor append each statement it executes to `statements`, its parameters
    merged in as PostgreSQL's schema editor merges them (and as collect_sql records them)."""
    execute = editor.execute

    def recording(sql: Any, params: Any = ()) -> Any:
        text = str(sql)
        statements.append(
            text if params is None else editor.connection.ops.compose_sql(text, params)
        )
        return execute(sql, params)

    editor.execute = recording


def _is_comment(statement: str) -> bool:
    return all(
        not line.strip() or line.lstrip().startswith("--") for line in statement.splitlines()
    )


# --- replaying -----------------------------------------------------------------------------------


def _record_sql(missing: Sequence[Migration]) -> sql.Composed:
    values = sql.SQL(", ").join(
        sql.SQL("({}, {}, now())").format(sql.Literal(app), sql.Literal(name))
        for app, name in missing
    )
    return sql.SQL("INSERT INTO django_migrations (app, name, applied) VALUES {}").format(values)


def _preamble(schema: str, lock_timeout_ms: int) -> sql.Composed:
    return sql.SQL("SET LOCAL search_path = {}, public; SET LOCAL lock_timeout = {}").format(
        sql.Identifier(schema), sql.Literal(f"{int(lock_timeout_ms)}ms")
    )


# SQLSTATEs the guard raises: every pending migration is already recorded (another run did it),
# or some are (the schema changed since the plan).
ALREADY_APPLIED = "PLR01"
CHANGED_SINCE_PLAN = "PLR02"


def _guard_sql(missing: Sequence[Migration]) -> sql.Composed:
    """Serialise replays of one schema and stop one that would apply its migrations twice.

    A run killed while a schema's script was in flight leaves a backend that still runs it to
    its COMMIT (the whole script was sent); a run resumed at once, or two runs at a time, would
    then replay the same DDL again and fail on "already exists", or record the rows twice. The
    replay takes the schema's django_migrations lock first (self-conflicting, so the second
    waits, bounded by lock_timeout, and is retried), then checks that its migrations are still
    missing."""
    keys = sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(app), sql.Literal(name)) for app, name in missing
    )
    return sql.SQL(
        "LOCK TABLE django_migrations IN SHARE ROW EXCLUSIVE MODE;\n"
        "DO $palaver$ DECLARE found integer; BEGIN "
        "SELECT count(DISTINCT (app, name)) INTO found FROM django_migrations "
        "WHERE (app, name) IN ({keys}); "
        "IF found = {total} THEN RAISE EXCEPTION 'its migrations were applied meanwhile' "
        "USING ERRCODE = {already}; "
        "ELSIF found > 0 THEN RAISE EXCEPTION 'some of its migrations were applied meanwhile' "
        "USING ERRCODE = {changed}; END IF; END $palaver$"
    ).format(
        keys=keys,
        total=sql.Literal(len(missing)),
        already=sql.Literal(ALREADY_APPLIED),
        changed=sql.Literal(CHANGED_SINCE_PLAN),
    )


def replay_script(group: ReplayGroup, schema: str, lock_timeout_ms: int) -> sql.Composed:
    """Everything one schema's replay sends, in one transaction and one round trip."""
    assert group.statements is not None
    body = [sql.SQL(statement.rstrip().rstrip(";")) for statement in group.statements]
    # One statement per line: a statement may end in a comment, which must not swallow the next.
    return sql.SQL(";\n").join(
        [
            sql.SQL("BEGIN"),
            _preamble(schema, lock_timeout_ms),
            _guard_sql(group.missing),
            *body,
            _record_sql(group.missing),
            sql.SQL("COMMIT"),
        ]
    )


def replay_in_schema(
    conn: psycopg.Connection[Any], group: ReplayGroup, schema: str, lock_timeout_ms: int
) -> SchemaOutcome:
    """Replay the group's SQL in one schema (conn in autocommit mode). On failure the schema is
    left as it was, and the outcome names the failing statement."""
    try:
        conn.execute(replay_script(group, schema, lock_timeout_ms).as_string(conn))
    except psycopg.Error as exc:
        _rollback(conn)
        if exc.sqlstate == LOCK_NOT_AVAILABLE:
            return SchemaOutcome(schema, ok=False, locked=True, error=_message(exc))
        if exc.sqlstate == ALREADY_APPLIED:
            return SchemaOutcome(schema, ok=True, already=True)
        if exc.sqlstate == CHANGED_SINCE_PLAN:
            return SchemaOutcome(
                schema, ok=False, error=f"{_message(exc)}: run again to migrate it"
            )
        return _find_failing_statement(conn, group, schema, lock_timeout_ms, exc)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        # The script did not reach its COMMIT: nothing of it may count as applied.
        _rollback(conn)
        return SchemaOutcome(schema, ok=False, error="the replay did not commit; rolled back")
    return SchemaOutcome(schema, ok=True)


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _find_failing_statement(
    conn: psycopg.Connection[Any],
    group: ReplayGroup,
    schema: str,
    lock_timeout_ms: int,
    first: psycopg.Error,
) -> SchemaOutcome:
    """Run the schema's statements one by one in a transaction that is rolled back, to say which
    failed (a multi-statement string's error does not)."""
    assert group.statements is not None
    statements = [*group.statements, _record_sql(group.missing).as_string(conn)]
    try:
        conn.execute("BEGIN")
        conn.execute(_preamble(schema, lock_timeout_ms).as_string(conn))
        for statement in statements:
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                locked = exc.sqlstate == LOCK_NOT_AVAILABLE
                return SchemaOutcome(
                    schema, ok=False, locked=locked, statement=statement, error=_message(exc)
                )
    except psycopg.Error as exc:
        return SchemaOutcome(schema, ok=False, error=_message(exc))
    finally:
        _rollback(conn)
    # It failed together and not one by one (a deferred constraint, a concurrent change).
    return SchemaOutcome(schema, ok=False, error=_message(first))


@dataclass
class ReplayResult:
    migrated: list[str] = field(default_factory=list)
    failed: list[SchemaOutcome] = field(default_factory=list)
    # Schemas found with a table locked at least once and put back in the queue, in order.
    retried: list[str] = field(default_factory=list)
    # Schemas found migrated by another run when their turn came: nothing done to them.
    already: list[str] = field(default_factory=list)


def replay(
    groups: Sequence[ReplayGroup],
    *,
    jobs: int,
    lock_timeout_ms: int,
    lock_retries: int,
    on_done: Callable[[SchemaOutcome], None] = lambda outcome: None,
    retry_pause_seconds: float = 1.0,
) -> ReplayResult:
    """Replay each replayable group in its schemas over `jobs` connections. A schema whose table
    stayed locked goes to the back of the queue, up to `lock_retries` more times; `on_done` is
    called once per schema, when it is finished (migrated or failed for good)."""
    queue: list[tuple[ReplayGroup, str]] = [
        (group, schema) for group in groups if group.replayable for schema in group.schemas
    ]
    result = ReplayResult()
    for attempt in range(lock_retries + 1):
        if not queue:
            break
        if attempt:
            time.sleep(retry_pause_seconds)
        queue = _replay_pass(
            queue,
            result,
            jobs=jobs,
            lock_timeout_ms=lock_timeout_ms,
            final=attempt == lock_retries,
            on_done=on_done,
        )
    return result


def _replay_pass(
    queue: list[tuple[ReplayGroup, str]],
    result: ReplayResult,
    *,
    jobs: int,
    lock_timeout_ms: int,
    final: bool,
    on_done: Callable[[SchemaOutcome], None],
) -> list[tuple[ReplayGroup, str]]:
    """One pass over the queue; returns the schemas to try again (their tables were locked)."""
    params = connection_params(settings.DATABASES["default"])
    lock = Lock()
    locked: list[tuple[ReplayGroup, str]] = []
    work = iter(queue)
    # Set when the main thread is interrupted (Ctrl-C): each worker finishes the schema in hand
    # (atomic either way) and takes no other, instead of draining the queue.
    stop = Event()

    def worker() -> None:
        with psycopg.connect(**params, autocommit=True) as conn:
            while not stop.is_set():
                with lock:
                    item = next(work, None)
                if item is None:
                    return
                group, schema = item
                outcome = replay_in_schema(conn, group, schema, lock_timeout_ms)
                with lock:
                    if outcome.already:
                        result.already.append(schema)
                    elif outcome.ok:
                        result.migrated.append(schema)
                    elif outcome.locked and not final:
                        locked.append(item)
                        if schema not in result.retried:
                            result.retried.append(schema)
                        continue
                    else:
                        result.failed.append(outcome)
                on_done(outcome)

    workers = max(1, min(jobs, len(queue)))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True)
    return locked
