"""Many runs in flight in one worker process: the agents queue served by a threads pool, as
scripts/run_all.py starts it, with runs that wait a second on their provider."""

import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connection as main_connection
from django.test.utils import override_settings

from agents.models import Agent, Task
from agents.runner.db import on_database, shutdown_database_threads
from agents.runner.providers import reset_clients
from agents.services.tasks import create_task
from channels_app.models import Channel, Server
from config.celery import app
from tenancy import switch
from tests.factories import UserFactory
from tests.helpers import loopback_provider
from tests.llm_servers import LLMServer, Reply
from tests.workers import threads_worker

RUNS = 20
DB_CONNECTIONS = 3


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    reset_clients()
    with LLMServer(default=Reply(chunks=["Done after a second."], delay=1.0)) as server:
        yield server
    reset_clients()
    # The runner's database threads keep their connections: closed before the test's flush.
    shutdown_database_threads()


def other_connections() -> int:
    with main_connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


@override_settings(AGENT_DB_CONNECTIONS=DB_CONNECTIONS)
def test_twenty_slow_runs_finish_together_on_few_connections(
    clean_schemas: None, llm: LLMServer
) -> None:
    user = UserFactory(email="alice@example.org")
    provider = loopback_provider(user, llm.openai_url)
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
        agent = Agent.objects.create(
            name="Helper", nick="helperbot", account_llm=provider, model="test-model"
        )
    with app.connection() as conn:
        conn.default_channel.queue_purge("agents")

    # Sessions an earlier test in this process left (a finished worker's threads) are not ours.
    baseline = other_connections()
    with threads_worker(RUNS):
        # One run first: the worker's tenant lookup (tenant-schemas-celery's prerun, cached
        # CELERY_TASK_TENANT_CACHE_SECONDS) happens before the runner's bound applies.
        with switch(user):
            warm = create_task(
                agent=agent, trigger=Task.Trigger.MENTION, input="hi", channel=channel
            )
        deadline = time.monotonic() + 15
        with switch(user):
            while Task.objects.get(pk=warm.pk).status != Task.Status.SUCCEEDED:
                assert time.monotonic() < deadline, "the warm-up run did not finish"
                time.sleep(0.05)

        samples: list[int] = []

        started = time.monotonic()
        with switch(user):
            ids = [
                create_task(
                    agent=agent, trigger=Task.Trigger.MENTION, input=f"q{n}", channel=channel
                ).pk
                for n in range(RUNS)
            ]
        with switch(user):
            while True:
                samples.append(other_connections())
                done = Task.objects.filter(
                    pk__in=ids, status__in=[Task.Status.SUCCEEDED, Task.Status.FAILED]
                ).count()
                if done == RUNS:
                    break
                assert time.monotonic() - started < 15, f"{done}/{RUNS} runs done"
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            statuses = set(Task.objects.filter(pk__in=ids).values_list("status", flat=True))
        peak = max(samples) - baseline

    assert statuses == {Task.Status.SUCCEEDED}
    # In series they would take 20 s; together, about one (slack for a 2-core machine).
    assert elapsed < 6, elapsed
    assert llm.served == RUNS + 1
    # The worker's twenty threads never held more connections than the runner's bound.
    assert peak <= DB_CONNECTIONS, samples


@override_settings(AGENT_DB_CONNECTIONS=1)
def test_the_database_threads_work_in_each_callers_account(clean_schemas: None) -> None:
    alice = UserFactory(email="alice@example.org")
    bob = UserFactory(email="bob@example.org")
    with switch(alice):
        Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
    with switch(bob):
        Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")

    def hosts() -> list[str]:
        return list(Server.objects.values_list("host", flat=True))

    def boom() -> None:
        raise ValueError("a job that fails")

    seen: dict[str, list[str]] = {}
    try:
        # One database thread serves both accounts in turn, from threads of their own (as the
        # worker's run threads are), each outside any transaction.
        def ask(user: object, name: str) -> None:
            with switch(user):  # type: ignore[arg-type]
                seen[name] = on_database(hosts)

        for user, name in [(alice, "alice"), (bob, "bob"), (alice, "alice again")]:
            thread = threading.Thread(target=ask, args=(user, name))
            thread.start()
            thread.join()
        with pytest.raises(ValueError, match="a job that fails"):
            on_database(boom)
        with switch(bob):
            assert on_database(hosts) == ["irc.efnet.org"]  # the thread survived the failure
            # A job asking for the database again runs on its own thread, not after itself.
            assert on_database(lambda: on_database(hosts)) == ["irc.efnet.org"]
    finally:
        shutdown_database_threads()
    assert seen == {
        "alice": ["irc.libera.chat"],
        "bob": ["irc.efnet.org"],
        "alice again": ["irc.libera.chat"],
    }
