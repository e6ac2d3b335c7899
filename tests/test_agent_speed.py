"""The runner's fast paths: the start statement reads what the ORM would (agents/runner/
queries.py), and tools that need no database stay off the few database threads (db.py)."""

import os
import threading
import time
from collections.abc import Iterator

import pytest
from django.test.utils import override_settings
from django.utils import timezone

from accounts.models import User
from agents.models import Agent, ModelCall, Task, ToolCall
from agents.runner import queries, run
from agents.runner.context import recent_lines
from agents.runner.db import shutdown_database_threads, without_database
from agents.runner.providers import reset_clients
from agents.selectors import tokens_used_this_month
from channels_app.models import Channel, Message, Server
from llms.models import Tool
from llms.services import configure_tool
from llms.tools import TOOLS_BY_SLUG, agent_tools
from tenancy import switch
from tests.factories import UserFactory
from tests.helpers import loopback_provider
from tests.llm_servers import LLMServer, ProviderProcess, Reply, ToolCallScript
from tests.sites import SiteHandler, base_url, serve


def _tool(slug: str) -> Tool:
    return Tool.objects.get(slug=slug)


def test_the_start_statement_reads_what_the_orm_does(alice: User) -> None:
    provider = loopback_provider(alice, "http://127.0.0.1:9/v1")
    account = alice.account
    # Chosen and enabled (one with settings), chosen but off, enabled but not chosen, chosen
    # and enabled but retired from the catalog.
    configure_tool(
        account=account,
        tool=_tool("current_time"),
        enabled=True,
        settings={"timezone": "Asia/Tokyo"},
    )
    configure_tool(account=account, tool=_tool("channel_history"), enabled=True, settings={})
    configure_tool(account=account, tool=_tool("fetch_url"), enabled=False, settings={})
    configure_tool(account=account, tool=_tool("search_history"), enabled=True, settings={})
    retired = _tool("channel_info")
    configure_tool(account=account, tool=retired, enabled=True, settings={})
    Tool.objects.filter(pk=retired.pk).update(is_available=False)
    with switch(alice):
        server = Server.objects.create(
            name="Libera", host="irc.libera.chat", nick="alice", password="irc-secret"
        )
        channel = Channel.objects.create(server=server, name="#palaver", topic="Palaver", key="k")
        agent = Agent.objects.create(
            name="Helper",
            nick="helperbot",
            account_llm=provider,
            model="test-model",
            context_tokens=60,
            monthly_token_budget=10_000,
        )
        agent.tools.add(
            _tool("current_time"), _tool("channel_history"), _tool("fetch_url"), retired
        )
        now = timezone.now()
        for n in range(30):
            Message.objects.create(
                channel=channel,
                sender=f"user{n % 3}",
                text=f"line {n} of the channel",
                kind=Message.Kind.ACTION if n % 5 == 0 else Message.Kind.MESSAGE,
                server_time=now,
            )
        Message.objects.create(channel=channel, sender="x", kind=Message.Kind.JOIN, server_time=now)
        asked = Message.objects.create(channel=channel, sender="alice", text="q", server_time=now)
        ModelCall.objects.create(
            agent=agent, agent_name="Helper", input_tokens=100, output_tokens=20, outcome="ok"
        )
        ModelCall.objects.create(agent_name="Gone", input_tokens=7, output_tokens=1, outcome="ok")
        task = Task.objects.create(
            agent=agent,
            trigger=Task.Trigger.MENTION,
            input="hello",
            channel=channel,
            server=server,
            reply_to="#palaver",
            source_message_id=asked.pk,
        )
        start = queries.start(task_id=task.pk, account_id=account.pk, now=timezone.now())
        assert start is not None
        assert start.task.pk == task.pk and start.task.input == "hello"
        assert start.task.agent is start.agent and start.agent.nick == "helperbot"
        assert start.task.channel is not None and start.task.channel.topic == "Palaver"
        assert start.task.server is not None and start.task.server.name == "Libera"
        # The IRC secrets are neither read nor decrypted.
        assert "key" not in start.task.channel.__dict__
        assert "password" not in start.task.server.__dict__
        assert "sasl_password" not in start.task.server.__dict__
        assert start.config is not None and start.config.pk == provider.pk
        assert start.config.api_key == provider.api_key
        assert start.config.llm.name == provider.llm.name
        assert start.account.pk == account.pk
        assert start.account.monthly_token_budget == account.monthly_token_budget
        assert start.tools == agent_tools(account=account, agent=agent)
        assert [spec.slug for spec, _ in start.tools] == ["channel_history", "current_time"]
        assert start.used_by_account == tokens_used_this_month() == 128
        assert start.used_by_agent == tokens_used_this_month(agent=agent) == 120
        from agents.runner.context import within_budget

        assert within_budget(start.recent, start.agent) == recent_lines(task, agent)
        assert 0 < len(recent_lines(task, agent)) < 30

        # No budget for the agent: not summed. Not queued any more: nothing.
        Agent.objects.filter(pk=agent.pk).update(monthly_token_budget=0)
        again = queries.start(task_id=task.pk, account_id=account.pk, now=timezone.now())
        assert again is not None and again.used_by_agent is None
        assert queries.claim(task_id=task.pk, started_at=timezone.now(), context=[{"a": 1}])
        assert not queries.claim(task_id=task.pk, started_at=timezone.now(), context=[])
        assert queries.start(task_id=task.pk, account_id=account.pk, now=timezone.now()) is None
        task.refresh_from_db()
        assert task.status == Task.Status.RUNNING and task.context == [{"a": 1}]


def test_the_start_statement_without_channel_or_provider(alice: User) -> None:
    provider = loopback_provider(alice, "http://127.0.0.1:9/v1")
    with switch(alice):
        agent = Agent.objects.create(
            name="Helper", nick="helperbot", account_llm=provider, model="m"
        )
        task = Task.objects.create(agent=agent, trigger=Task.Trigger.MANUAL, input="hi")
        start = queries.start(task_id=task.pk, account_id=alice.account.pk, now=timezone.now())
        assert start is not None
        assert start.task.channel is None and start.task.server is None and start.recent == []
    # A provider of another account is none of this agent's.
    other = UserFactory(email="bob@example.org")
    with switch(alice):
        start = queries.start(task_id=task.pk, account_id=other.account.pk, now=timezone.now())
        assert start is not None and start.config is None


def test_only_tools_declared_so_run_off_the_database_threads(alice: User) -> None:
    assert TOOLS_BY_SLUG["fetch_url"].needs_database is False
    database_tools = [slug for slug, spec in TOOLS_BY_SLUG.items() if spec.needs_database]
    assert "current_time" in database_tools  # it reads the account's time zone
    assert "channel_history" in database_tools and "schedule_task" in database_tools
    with switch(alice), pytest.raises(RuntimeError, match="need no database"):
        without_database(lambda: Task.objects.count())
    assert without_database(lambda: 42) == 42


class _SlowPage(SiteHandler):
    arrived = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        _SlowPage.arrived.set()
        _SlowPage.release.wait(timeout=20)
        body = b"<html><head><title>Slow</title></head><body>At last.</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def slow_page() -> Iterator[str]:
    _SlowPage.arrived.clear()
    _SlowPage.release.clear()
    with serve(_SlowPage) as server:
        yield f"{base_url(server)}/slow"
        _SlowPage.release.set()


@override_settings(AGENT_DB_CONNECTIONS=1)
def test_a_slow_fetch_does_not_hold_a_database_thread(clean_schemas: None, slow_page: str) -> None:
    """With ONE database thread: a run waits on a fetch while another run starts, answers
    and finishes; before needs_database the fetch held the only database thread."""
    reset_clients()
    user = UserFactory(email="alice@example.org")
    fetching = LLMServer()
    quick = LLMServer(default=Reply(chunks=["Quick answer."]))
    fetching.script(
        Reply(tool_calls=[ToolCallScript("fetch_url", f'{{"url": "{slow_page}"}}')]),
        Reply(chunks=["Fetched it."]),
    )
    with fetching, quick:
        fetcher_llm = loopback_provider(user, fetching.openai_url, kind="openai")
        quick_llm = loopback_provider(user, quick.anthropic_url, kind="anthropic")
        configure_tool(account=user.account, tool=_tool("fetch_url"), enabled=True, settings={})
        with switch(user):
            server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
            channel = Channel.objects.create(server=server, name="#palaver")
            fetcher = Agent.objects.create(
                name="Fetcher", nick="fetchbot", account_llm=fetcher_llm, model="m"
            )
            fetcher.tools.add(_tool("fetch_url"))
            answerer = Agent.objects.create(
                name="Quick", nick="quickbot", account_llm=quick_llm, model="m"
            )
            tasks = [
                Task.objects.create(
                    agent=agent,
                    trigger=Task.Trigger.MENTION,
                    input="go",
                    channel=channel,
                    server=server,
                    reply_to="#palaver",
                )
                for agent in (fetcher, answerer)
            ]

        def run_in_account(task_id: int) -> None:
            with switch(user):
                run(task_id)

        try:
            slow = threading.Thread(target=run_in_account, args=(tasks[0].pk,))
            slow.start()
            assert _SlowPage.arrived.wait(timeout=15), "the fetch never started"
            fast = threading.Thread(target=run_in_account, args=(tasks[1].pk,))
            started = time.monotonic()
            fast.start()
            fast.join(timeout=10)
            assert not fast.is_alive(), "the other run waited for the fetch"
            assert time.monotonic() - started < 10
            with switch(user):
                assert Task.objects.get(pk=tasks[1].pk).status == Task.Status.SUCCEEDED
                assert Task.objects.get(pk=tasks[0].pk).status == Task.Status.RUNNING
            _SlowPage.release.set()
            slow.join(timeout=15)
            assert not slow.is_alive()
            with switch(user):
                done = Task.objects.get(pk=tasks[0].pk)
                assert done.status == Task.Status.SUCCEEDED, done.error
                assert done.output == "Fetched it."
                (call,) = ToolCall.objects.filter(task_id=done.pk)
                assert call.tool == "fetch_url" and call.ok and "At last." in call.result
        finally:
            _SlowPage.release.set()
            reset_clients()
            # The runner's database thread keeps its connection: closed before the flush.
            shutdown_database_threads()


def test_the_provider_in_a_child_process_answers_like_the_loopback_server() -> None:
    import anthropic
    import openai

    with ProviderProcess(default=Reply(chunks=["Hello ", "there."], usage=(5, 2))) as provider:
        assert provider.pid != os.getpid()
        client = openai.OpenAI(base_url=provider.openai_url, api_key="k", max_retries=0)
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "Hello there."
        assert answer.usage is not None and answer.usage.prompt_tokens == 5
        provider.default = Reply(chunks=["Streamed."], delay=0.01)
        with anthropic.Anthropic(
            base_url=provider.anthropic_url, api_key="k", max_retries=0
        ).messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert "".join(stream.text_stream) == "Streamed."
        assert provider.served == 2
        provider.default = None
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        process = provider._process
    assert process is not None and process.poll() is not None


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [("openai", ModelCall.Outcome.ERROR), ("anthropic", ModelCall.Outcome.UNAVAILABLE)],
)
def test_an_error_event_mid_stream_fails_the_run_with_its_message(
    alice: User, kind: str, outcome: str
) -> None:
    reset_clients()
    with LLMServer() as llm:
        llm.script(Reply(chunks=["Partial"], stream_error="Overloaded, try later"))
        provider = loopback_provider(
            alice, llm.anthropic_url if kind == "anthropic" else llm.openai_url, kind=kind
        )
        with switch(alice):
            agent = Agent.objects.create(
                name="Helper", nick="helperbot", account_llm=provider, model="m"
            )
            task = Task.objects.create(agent=agent, trigger=Task.Trigger.MANUAL, input="hi")
            run(task.pk)
            task.refresh_from_db()
            assert task.status == Task.Status.FAILED
            assert task.error == f"Loopback {kind} failed mid-reply: Overloaded, try later"
            (call,) = ModelCall.objects.filter(task=task)
            assert call.outcome == outcome
    reset_clients()


def test_a_model_call_and_the_tasks_end_are_written_in_one_statement(alice: User) -> None:
    provider = loopback_provider(alice, "http://127.0.0.1:9/v1")
    with switch(alice):
        agent = Agent.objects.create(
            name="Helper", nick="helperbot", account_llm=provider, model="m"
        )
        task = Task.objects.create(agent=agent, trigger=Task.Trigger.MANUAL, input="hi")
        finished = timezone.now()
        call = {
            "task_id": task.pk,
            "agent_id": agent.pk,
            "agent_name": "Helper",
            "step": 1,
            "provider": "Loopback",
            "model": "m",
            "input_tokens": 12,
            "output_tokens": 3,
            "latency_ms": 40,
            "first_token_ms": None,
            "outcome": ModelCall.Outcome.OK,
            "error": "",
            "created_at": finished,
        }
        queries.record(
            call=call,
            task_id=task.pk,
            task={"status": Task.Status.SUCCEEDED, "output": "Hello.", "finished_at": finished},
        )
        (row,) = ModelCall.objects.filter(task=task).values(*call)
        assert dict(row) == call
        task.refresh_from_db()
        assert (task.status, task.output, task.finished_at) == ("succeeded", "Hello.", finished)
        queries.record(call={**call, "step": 2}, task_id=task.pk, task=None)
        assert ModelCall.objects.filter(task=task).count() == 2
        with pytest.raises(ValueError, match="no field"):
            queries.record(call={**call, "tokens": 1}, task_id=task.pk, task=None)
