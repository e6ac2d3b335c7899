"""How a worker with a hundred runs in flight stays within a few database connections.

The agents worker runs each task in a thread (`celery worker -Q agents -P threads -c 100`):
a run spends almost all its time waiting on an LLM provider, so threads, not processes, keep a
hundred in flight in one process. But Django gives every thread its own database connection
and keeps it for the thread's task: a hundred threads would hold a hundred PostgreSQL
connections (the server's default max_connections is 100) while doing nothing but wait on HTTP.

So a run's threads never touch the database themselves. Its database work (load and claim
the task, build the context, record a model call, run the tools that need the database,
finish) is handed, a few queries at a time, to a small executor: AGENT_DB_CONNECTIONS
threads per process, each holding one persistent connection, switched to the run's account
for the job (`SET search_path` when the schema differs). A run waits for its job's result; it
never holds a connection while it streams an answer.

Why not close the run thread's connection between stretches instead (the first design, which
also bounds connections): each stretch then opens a connection, a PostgreSQL backend forked
with cold catalog caches. benchmarks/agent_runs.py measured a query on a fresh connection at
3.3-9 ms more than on an open one (`reconnect_ms`), two per run, with the server's CPU for the
fork on top; the hand-off to a database thread costs 0.1-0.35 ms (`handoff_ms`), and the first
line of an answer came 2x sooner (p50 45 -> 21 ms on a loaded 2-core machine).

The executor threads' connections are bounded in what they accumulate across accounts by
tenancy.db_memory (`maybe_recycle` after every job), and closed after a job that failed, so a
broken connection is not handed to the next run.

Inside an atomic block (a caller's transaction, a test's) the job runs on the caller's thread
and connection: another connection could not see the transaction's rows.
"""

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from django.conf import settings

from tenancy.context import connection
from tenancy.db_memory import maybe_recycle

T = TypeVar("T")

_Job = tuple[Callable[[], Any], Any, "Future[Any]"]


class DatabaseThreads:
    """`size` threads, each with its own connection, running jobs from one queue."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"agents-db-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[[], T], tenant: Any) -> T:
        future: Future[T] = Future()
        self._jobs.put((fn, tenant, future))
        return future.result()

    def shutdown(self) -> None:
        """Stop the threads, each closing its connection (tests; a process exiting does not
        need it)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def _serve(self) -> None:
        _inside.active = True
        while True:
            job = self._jobs.get()
            if job is None:
                connection.close()
                return
            fn, tenant, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if connection.schema_name != tenant.schema_name:
                    connection.set_tenant(tenant)
                result = fn()
            except BaseException as exc:
                # Whatever failed may have left the connection unusable: the next job gets a
                # fresh one.
                connection.close()
                future.set_exception(exc)
                continue
            try:
                maybe_recycle(connection)
            except Exception:
                connection.close()
            future.set_result(result)


_lock = threading.Lock()
_threads: DatabaseThreads | None = None
# Set on the database threads: a job that asks for the database again runs inline, instead of
# waiting for a thread that may be itself.
_inside = threading.local()


def database_threads() -> DatabaseThreads:
    """The process's executor, sized by AGENT_DB_CONNECTIONS (made again if a test changes it)."""
    global _threads
    size = max(1, settings.AGENT_DB_CONNECTIONS)
    with _lock:
        if _threads is None or _threads.size != size:
            if _threads is not None:
                _threads.shutdown()
            _threads = DatabaseThreads(size)
        return _threads


def shutdown_database_threads() -> None:
    global _threads
    with _lock:
        if _threads is not None:
            _threads.shutdown()
            _threads = None


def on_database(fn: Callable[[], T]) -> T:
    """Run `fn` (database work of a run) on one of the process's few connections, in the
    caller's account schema; its result or its exception comes back."""
    if connection.in_atomic_block or getattr(_inside, "active", False):
        return fn()
    return database_threads().run(fn, connection.tenant)


def release_connection() -> None:
    """Close this thread's own connection, unless a transaction holds it: a run thread keeps
    none (tenant-schemas-celery's account lookup before the task may have opened one)."""
    if not connection.in_atomic_block:
        connection.close()


def without_database(fn: Callable[[], T]) -> T:
    """Run `fn` (a tool that needs no database: ToolSpec.needs_database False) on the caller's
    thread, where a run holds no connection. A query there would open one outside the bound:
    it is refused (fn sees an error), and a connection it opened anyway is closed."""

    def refuse(*args: Any) -> Any:
        raise RuntimeError("this work was declared to need no database, yet it sent a query")

    try:
        with connection.execute_wrapper(refuse):
            return fn()
    finally:
        release_connection()
