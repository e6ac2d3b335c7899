"""Account-app migrations that would stop a busy account: found at lint time, decided by a person.

An account schema is migrated while its account is in use (tenancy.replay, or Django's migrate),
and some DDL holds an ACCESS EXCLUSIVE lock on a table (no reads, no writes) for as long as
PostgreSQL needs to rewrite or scan the whole table. `check()` finds those statements in every
migration of the account apps (settings.TENANT_APPS), so that the author either changes the
migration (README, "Migrations on a busy fleet") or acknowledges it on the Migration class:

    class Migration(migrations.Migration):
        palaver_locks_reviewed = "why the lock is acceptable (e.g. the table is new and empty)"

How: the migrations are applied, in the order Django would, in a scratch schema created inside a
transaction that is always rolled back (nothing is left behind). Each account-app migration's
SQL is collected with the schema editor exactly as tenancy.replay captures it and sqlmigrate
prints it, then run statement by statement, so the judgement is on the SQL Django really emits,
not on the operations (a Python `default=` becomes a constant DEFAULT then DROP DEFAULT; Now()
becomes STATEMENT_TIMESTAMP(), which is stable; a db_index=True field becomes a CREATE INDEX):

- nothing is guessed from the operation: PostgreSQL says what it did. A table, or an index, gets
  a new relfilenode when, and only when, it is rewritten or rebuilt, so every relation's
  relfilenode is compared before and after each statement: that catches a volatile default
  (gen_random_uuid(), random(), clock_timestamp()) and every type change PostgreSQL cannot make
  in place, and lets through those it can (varchar(n) to a larger n or to text, a numeric's
  precision raised: the "binary coercible" exception on PostgreSQL's ALTER TABLE page). A full
  scan is counted by PostgreSQL's own per-transaction counter of sequential scans
  (pg_stat_get_xact_numscans), which ALTER TABLE's checking pass, a constraint's validation and
  an index build all increase, on empty tables too: SET NOT NULL, a CHECK or FOREIGN KEY added
  without NOT VALID (a CHECK inline on ADD COLUMN too: Django emits one for every
  Positive*Field), a UNIQUE, PRIMARY KEY or EXCLUDE constraint. What does not scan is not
  flagged: a constant or stable default (Now() is STATEMENT_TIMESTAMP()), a foreign key on a
  new NULL column (PostgreSQL skips its validation), VALIDATE CONSTRAINT (it scans under SHARE
  UPDATE EXCLUSIVE, which blocks neither reads nor writes);
- CREATE INDEX without CONCURRENTLY blocks writes, not reads, for the build: a warning, which
  does not fail the lint;
- RunSQL and RunPython cannot be judged from here: flagged for review.

A statement on a table created by the same migration is harmless (no rows can exist yet), and
so is every statement of the migration that creates the table.

`make lint` judges every migration. `check(base=prepare())` judges only the migrations added
after `prepare()` ran (the tests add one at run time, tests/extra_migrations.py): the prepared
migrations' SQL is run in one go and their project state reused, which is what makes a test
cost a fraction of a second instead of the whole tree's state rendering; the new migrations are
judged on a schema where every prepared migration is applied, as after a deploy.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.migrations import operations as migration_operations
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration as DjangoMigration
from django.db.migrations.state import ProjectState
from django_tenants.utils import quote_schema_name

from tenancy.context import connection
from tenancy.provisioning import account_app_labels

# The Migration class attribute that acknowledges its findings: a non-empty reason.
ACKNOWLEDGEMENT = "palaver_locks_reviewed"

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    migration: str  # "app.name"
    level: str  # ERROR or WARNING
    what: str  # why the statement holds the lock
    statement: str
    acknowledged: bool = False

    def describe(self) -> str:
        return f"{self.migration}: {self.what}\n    {_one_line(self.statement)}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    # Migrations whose acknowledgement is malformed or acknowledges nothing.
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR and not f.acknowledged]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING and not f.acknowledged]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems


class _Rolledback(Exception):
    pass


@dataclass(frozen=True)
class Base:
    """Every migration of the graph as it was when `prepare()` ran, built and not judged: the
    starting point of `check(base=...)`, which then judges only the migrations added since (a
    test's extra migration, as after a deploy), on a schema where all of these are applied."""

    nodes: frozenset[tuple[str, str]]
    sql: str  # every account-app migration's SQL, in plan order (CONCURRENTLY run plainly)
    state: ProjectState  # the project state after all of them (never mutated: cloned per use)


def check(*, base: Base | None = None) -> Report:
    """Every account-app migration, judged on its SQL in a throw-away schema. With `base`
    (from `prepare()`), its migrations are built in one go and only the others are judged."""
    report = Report()
    _in_scratch_schema(lambda scratch: _check_in(scratch, report, base))
    return report


def prepare() -> Base:
    """The graph's migrations as a `Base`: each account-app migration's SQL collected in a
    throw-away schema where it is then run (so what the schema editor inspects is there)."""
    built: list[Base] = []
    _in_scratch_schema(lambda _scratch: built.append(_prepare_in()))
    return built[0]


def _in_scratch_schema(work: Any) -> None:
    scratch = f"palaver_migration_lint_{uuid.uuid4().hex[:12]}"
    previous = connection.tenant
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE SCHEMA {quote_schema_name(scratch)}")
            # A non-public schema, so that the router lets the account apps' operations run.
            connection.set_schema(scratch)
            work(scratch)
            raise _Rolledback
    except _Rolledback:
        pass
    finally:
        connection.set_tenant(previous)


def _prepare_in() -> Base:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes(), clean_start=True)
    labels = account_app_labels()
    state = ProjectState(real_apps=executor.loader.unmigrated_apps)
    parts = []
    for migration, _backwards in plan:
        if migration.app_label not in labels:
            state = migration.mutate_state(state, preserve=False)
            continue
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            state = _collect(migration, state, editor)
        sql = "\n".join(_runnable(s) for s in editor.collected_sql if not _is_comment(s))
        if sql:
            with connection.cursor() as cursor:
                cursor.execute(sql)
            parts.append(sql)
    return Base(
        nodes=frozenset((m.app_label, m.name) for m, _ in plan),
        sql="\n".join(parts),
        state=state,
    )


def _runnable(statement: str) -> str:
    # A non-atomic migration's CREATE INDEX CONCURRENTLY cannot run in the scratch schema's
    # transaction; it is what the lint recommends, so it is run plainly.
    return re.sub(r"\bCONCURRENTLY\b", "", statement, flags=re.IGNORECASE)


def _check_in(scratch: str, report: Report, base: Base | None) -> None:
    executor = MigrationExecutor(connection)
    graph = executor.loader.graph
    plan = executor.migration_plan(graph.leaf_nodes(), clean_start=True)
    labels = account_app_labels()
    with connection.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", [scratch])
        namespace = cursor.fetchone()[0]
        cursor.execute("SELECT current_setting('track_counts')::boolean")
        if not cursor.fetchone()[0]:
            # Without it the scan counter stays at zero and every scan would pass unseen.
            raise RuntimeError("the migration lint needs track_counts = on (the default)")
    if base is None:
        state = ProjectState(real_apps=executor.loader.unmigrated_apps)
    else:
        _require_base_of(base, graph)
        if base.sql:
            with connection.cursor() as cursor:
                cursor.execute(base.sql)
        state = base.state.clone()
        plan = [(m, b) for m, b in plan if (m.app_label, m.name) not in base.nodes]
    for migration, _backwards in plan:
        if migration.app_label not in labels:
            # A shared app: the router makes its operations no-ops in an account schema.
            state = migration.mutate_state(state, preserve=False)
            continue
        report.checked += 1
        before = _relations(namespace)
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            state = _collect(migration, state, editor)
        statements = [s for s in editor.collected_sql if not _is_comment(s)]
        findings = _review_operations(migration)
        for statement in statements:
            findings.extend(_run_and_judge(migration, statement, namespace, set(before)))
        _acknowledge(migration, findings, report)


def _require_base_of(base: Base, graph: Any) -> None:
    """The base must be part of this graph and closed under its dependencies: no migration of
    the base depends on one that is not in it (which would then run after it)."""
    missing = sorted(base.nodes - set(graph.nodes))
    if missing:
        raise ValueError(f"the base has migrations this graph does not: {missing[:5]}")
    for node in base.nodes:
        outside = sorted({p.key for p in graph.node_map[node].parents} - base.nodes)
        if outside:
            raise ValueError(f"{node} in the base depends on {outside}, which is not")


def _collect(migration: DjangoMigration, state: ProjectState, editor: Any) -> ProjectState:
    """The migration's SQL into `editor.collected_sql`. A non-atomic migration's operations
    (AddIndexConcurrently) refuse to run inside a transaction, which this scratch schema always
    is; collecting executes none of their SQL, so for them the block is not shown."""
    if migration.atomic:
        return migration.apply(state, editor, collect_sql=True)
    in_atomic_block = connection.in_atomic_block
    connection.in_atomic_block = False
    try:
        return migration.apply(state, editor, collect_sql=True)
    finally:
        connection.in_atomic_block = in_atomic_block


def _review_operations(migration: DjangoMigration) -> list[Finding]:
    name = f"{migration.app_label}.{migration.name}"
    found = []
    for operation in _flatten(migration.operations):
        if isinstance(operation, (migration_operations.RunSQL, migration_operations.RunPython)):
            kind = type(operation).__name__
            found.append(
                Finding(
                    name,
                    ERROR,
                    f"{kind} cannot be judged by the lint: review its locks and its cost per "
                    "schema (a backfill belongs in a task, README)",
                    str(getattr(operation, "sql", "") or operation.describe()),
                )
            )
    return found


def _flatten(operations: Iterable[Any]) -> Iterable[Any]:
    for operation in operations:
        if isinstance(operation, migration_operations.SeparateDatabaseAndState):
            yield from _flatten(operation.database_operations)
        else:
            yield operation


def _acknowledge(migration: DjangoMigration, findings: list[Finding], report: Report) -> None:
    name = f"{migration.app_label}.{migration.name}"
    reason = getattr(migration, ACKNOWLEDGEMENT, None)
    if reason is None:
        report.findings.extend(findings)
        return
    if not isinstance(reason, str) or not reason.strip():
        report.problems.append(
            f"{name}: {ACKNOWLEDGEMENT} must be a non-empty string saying why the locks are "
            "acceptable"
        )
        report.findings.extend(findings)
        return
    if not findings:
        report.problems.append(
            f"{name}: {ACKNOWLEDGEMENT} acknowledges nothing (the lint finds no statement to "
            "review): remove it"
        )
        return
    report.findings.extend(
        Finding(f.migration, f.level, f.what, f.statement, acknowledged=True) for f in findings
    )


# --- one statement ------------------------------------------------------------------------------


def _relations(namespace: int) -> dict[int, tuple[str, int]]:
    """oid -> (name, relfilenode) of every table and index in the scratch schema."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oid, relname, relfilenode FROM pg_class "
            "WHERE relnamespace = %s AND relkind IN ('r', 'p', 'i', 'I', 'm')",
            [namespace],
        )
        return {oid: (name, node) for oid, name, node in cursor.fetchall()}


def _scans(oids: Iterable[int]) -> dict[int, int]:
    """Sequential scans of each table so far in this transaction (PostgreSQL's own counter:
    ALTER TABLE's checking pass, a constraint's validation and an index build all count)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oid, pg_stat_get_xact_numscans(oid) FROM unnest(%s::oid[]) AS t(oid)",
            [list(oids)],
        )
        return dict(cursor.fetchall())


def _run_and_judge(
    migration: DjangoMigration, statement: str, namespace: int, existing: set[int]
) -> list[Finding]:
    """Run the statement in the scratch schema; what it did to the tables and indexes that
    existed before the migration (`existing`): rewrote them, or scanned them."""
    name = f"{migration.app_label}.{migration.name}"
    text = _without_literals(statement)
    before = _relations(namespace)
    scans_before = _scans(existing)
    with connection.cursor() as cursor:
        # CONCURRENTLY is what the lint recommends: run plainly (_runnable) and not judged.
        cursor.execute(_runnable(statement))
    if re.search(r"\bCONCURRENTLY\b", text):
        return []
    after = _relations(namespace)
    scans_after = _scans(existing)
    still = existing & before.keys() & after.keys()
    rewritten = [before[oid][0] for oid in sorted(still) if before[oid][1] != after[oid][1]]
    if rewritten:
        return [
            Finding(
                name,
                ERROR,
                f"PostgreSQL rewrites {', '.join(rewritten)} under an ACCESS EXCLUSIVE lock "
                "(a volatile default, or a type change it cannot make in place)",
                statement,
            )
        ]
    scanned = [
        before[oid][0]
        for oid in sorted(still)
        if (scans_after.get(oid) or 0) > (scans_before.get(oid) or 0)
    ]
    if not scanned or re.match(r"\s*ALTER\s+TABLE\s+\S+\s+VALIDATE\s+CONSTRAINT\b", text):
        # VALIDATE CONSTRAINT scans under SHARE UPDATE EXCLUSIVE: reads and writes go on.
        return []
    tables = ", ".join(scanned)
    if re.match(r"\s*CREATE\s+(UNIQUE\s+)?INDEX\b", text):
        return [
            Finding(
                name,
                WARNING,
                f"CREATE INDEX without CONCURRENTLY blocks writes to {tables} while it builds",
                statement,
            )
        ]
    return [Finding(name, ERROR, f"{_scan_cause(text)}: a full scan of {tables}", statement)]


def _scan_cause(text: str) -> str:
    if re.search(r"\bSET\s+NOT\s+NULL\b", text):
        return (
            "SET NOT NULL checks every row under an ACCESS EXCLUSIVE lock (add a CHECK "
            "(col IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL skips the scan)"
        )
    if re.search(r"\b(UNIQUE|PRIMARY\s+KEY|EXCLUDE)\b", text):
        return (
            "the constraint's index is built under an ACCESS EXCLUSIVE lock (build the index "
            "CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX)"
        )
    if re.search(r"\b(CHECK|FOREIGN\s+KEY|REFERENCES)\b", text):
        return (
            "the constraint is checked on every row under the ALTER TABLE's lock (add it NOT "
            "VALID, then VALIDATE CONSTRAINT in a later migration)"
        )
    return "every row is read under the ALTER TABLE's lock"


def _without_literals(statement: str) -> str:
    """The statement with its string literals and quoted identifiers blanked, upper-cased, so a
    column named "check" or a default 'NOT NULL' is not read as a keyword."""
    text = re.sub(r"'(?:[^']|'')*'", "''", statement)
    text = re.sub(r'"(?:[^"]|"")*"', '""', text)
    return text.upper()


def _is_comment(statement: str) -> bool:
    return all(
        not line.strip() or line.lstrip().startswith("--") for line in statement.splitlines()
    )


def _one_line(statement: str, limit: int = 240) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_report(report: Report, *, verbose: bool = False) -> str:
    lines = []
    for finding in report.errors:
        lines.append(f"ERROR {finding.describe()}")
    for problem in report.problems:
        lines.append(f"ERROR {problem}")
    for finding in report.warnings:
        lines.append(f"warning {finding.describe()}")
    if verbose:
        for finding in report.findings:
            if finding.acknowledged:
                lines.append(f"acknowledged {finding.describe()}")
    acknowledged = sum(1 for f in report.findings if f.acknowledged)
    lines.append(
        f"Checked {report.checked} account-app migrations: {len(report.errors)} unacknowledged "
        f"statements that lock a whole table, {len(report.problems)} bad acknowledgements, "
        f"{len(report.warnings)} warnings, {acknowledged} acknowledged."
    )
    if not report.ok:
        lines.append(
            f"Change the migration (README: Migrations on a busy fleet), or acknowledge it with "
            f'`{ACKNOWLEDGEMENT} = "why"` on its Migration class.'
        )
    return "\n".join(lines)
