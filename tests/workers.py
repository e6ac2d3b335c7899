"""Real Celery workers inside a test process."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from celery.contrib.testing.worker import start_worker

from config.celery import app


@contextmanager
def threads_worker(concurrency: int, queues: Sequence[str] = ("agents",)) -> Iterator[None]:
    """A threads-pool worker on `queues`, as scripts/run_all.py starts the agents' one."""
    from agents.runner.db import shutdown_database_threads

    amqp_queues = app.amqp.queues
    # The worker narrows the app's queue selection for the whole process: put it back, or a
    # later test's worker would only listen to these queues.
    saved = amqp_queues._consume_from
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            queues=list(queues),
            perform_ping_check=False,
            shutdown_timeout=30,
        ):
            yield
    finally:
        amqp_queues._consume_from = saved
        # The runner's database threads keep their connections: closed before the test's flush.
        shutdown_database_threads()
