"""How a worker with a hundred runs in flight stays within a few database connections.

The agents worker runs each task in a thread (`celery worker -Q agents -P threads -c 100`):
a run spends almost all its time waiting on an LLM provider, so threads, not processes, are
what keeps a hundred in flight on one process. Django gives every thread its own database
connection and keeps it open for the thread's task; a hundred threads would then hold a
hundred PostgreSQL connections (the server's default max_connections is 100) while they do
nothing but wait on HTTP.

So a run touches the database only inside `database()` blocks, between model calls, and
never while it streams an answer:
- at most AGENT_DB_CONNECTIONS threads of the process are inside such a block at once (a
  semaphore; the others wait for a slot, which is short: a block is a few queries);
- at the end of a block the thread's connection is closed, so the connections a process holds
  are bounded by the semaphore, not by its threads.

The price is one new connection (TCP/socket connect, authentication, `SET search_path`) per
block, i.e. two or three per run; benchmarks/agents.py measures it (`reconnect_ms`). A pool
(Django 5.1's psycopg pool) would save the connect but shares connections across threads under
django-tenants' per-connection search_path cache and tenancy.db_memory's per-connection
accounting; closing is the simple, obviously correct bound.

Inside an atomic block (a caller's transaction, a test's) the connection cannot be closed:
it is kept, and the block is just a block.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

_slots_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


def _semaphore() -> threading.BoundedSemaphore:
    """The process's semaphore, sized by the setting (made again if a test changes it)."""
    global _slots
    size = max(1, settings.AGENT_DB_CONNECTIONS)
    with _slots_lock:
        if _slots is None or _slots[0] != size:
            _slots = (size, threading.BoundedSemaphore(size))
        return _slots[1]


@contextmanager
def database() -> Iterator[None]:
    """A stretch of database work of a run; the connection is released at its end."""
    slots = _semaphore()
    slots.acquire()
    try:
        yield
    finally:
        try:
            release_connection()
        finally:
            slots.release()


def release_connection() -> None:
    """Close this thread's connection unless a transaction holds it. The tenant stays set on
    the wrapper: the next query reconnects and django-tenants sets the search_path again."""
    if not connection.in_atomic_block:
        connection.close()
