"""Agent runs end to end: the real openai and anthropic SDKs talk to loopback servers speaking
their wire formats (tests/llm_servers.py); the lines the agent says are read back from the
real Redis channel the gateway listens on."""

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test.utils import override_settings
from django.utils import timezone

from accounts.models import Account, User
from agents.models import Agent, ModelCall, Task, ToolCall
from agents.runner import run
from agents.runner.providers import reset_clients
from agents.services.tasks import create_task
from channels_app.events import (
    GATEWAY_COMMANDS,
    AgentSay,
    open_command,
    parse_command,
    redis_client,
)
from channels_app.models import Channel, Message, Server
from llms.models import LLM, AccountLLM, Tool
from llms.services import configure_tool, save_account_llm
from tenancy import switch
from tests.helpers import loopback_provider
from tests.llm_servers import LLMServer, Reply, ToolCallScript

PROVIDERS = ["openai", "anthropic"]


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    # The SDK clients are cached per process with the timeout and retries they were built with.
    reset_clients()
    yield
    reset_clients()


class Said:
    """The AgentSay commands published to the gateway while it listens."""

    def __init__(self) -> None:
        self._client = redis_client()
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(GATEWAY_COMMANDS)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.5)
            if message and message["type"] == "subscribe":
                break
        self.commands: list[AgentSay] = []

    def wait(self, timeout: float = 5.0) -> AgentSay | None:
        """The next AgentSay, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.05)
            if not message or message["type"] != "message":
                continue
            payload = open_command(message["data"])
            command = parse_command(payload) if payload else None
            if isinstance(command, AgentSay):
                self.commands.append(command)
                return command
        return None

    def lines(self, quiet: float = 0.3) -> list[str]:
        while self.wait(quiet) is not None:
            pass
        return [command.text for command in self.commands]

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()


@pytest.fixture
def said() -> Iterator[Said]:
    listener = Said()
    yield listener
    listener.close()


@dataclass
class Scene:
    user: User
    account: Account
    provider: AccountLLM
    server: Server
    channel: Channel
    agent: Agent


def make_scene(user: User, llm: LLMServer, kind: str = "openai", **agent_fields: Any) -> Scene:
    base_url = llm.anthropic_url if kind == "anthropic" else llm.openai_url
    provider = loopback_provider(user, base_url, kind=kind)
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver", topic="All about Palaver")
        fields: dict[str, Any] = {"system_prompt": "You are terse and kind."}
        fields.update(agent_fields)
        agent = Agent.objects.create(
            name="Helper", nick="helperbot", account_llm=provider, model="test-model", **fields
        )
        agent.channels.add(channel)
    return Scene(user, user.account, provider, server, channel, agent)


def ask(scene: Scene, question: str = "what is Palaver?", **fields: Any) -> Task:
    """Create the task as a mention would and run it here (create_task's queueing waits for a
    commit that a `db` test never makes)."""
    with switch(scene.user):
        options: dict[str, Any] = {"channel": scene.channel, "requested_by": "alice"}
        options.update(fields)
        task = create_task(
            agent=scene.agent, trigger=Task.Trigger.MENTION, input=question, **options
        )
        run(task.pk)
        task.refresh_from_db()
    return task


def calls_of(scene: Scene, task: Task) -> list[ModelCall]:
    with switch(scene.user):
        return list(ModelCall.objects.filter(task_id=task.pk).order_by("step"))


# --- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_streamed_answer_is_said_line_by_line(
    alice: User, llm: LLMServer, said: Said, kind: str
) -> None:
    scene = make_scene(alice, llm, kind)
    with switch(alice):
        Message.objects.create(
            channel=scene.channel,
            sender="bob",
            text="anyone tried Palaver?",
            server_time=timezone.now() - timedelta(minutes=2),
        )
    llm.script(Reply(chunks=["Palaver is ", "an IRC client.\nIt has ", "agents."], usage=(30, 9)))

    task = ask(scene)

    assert said.lines() == ["Palaver is an IRC client.", "It has agents."]
    command = said.commands[0]
    assert (command.account_id, command.server_id, command.agent_id, command.target) == (
        str(alice.account.pk),
        scene.server.pk,
        scene.agent.pk,
        "#palaver",
    )
    assert task.status == Task.Status.SUCCEEDED, task.error
    assert task.output == "Palaver is an IRC client.\nIt has agents."
    assert (task.prompt_tokens, task.completion_tokens) == (30, 9)
    assert task.reply_lines_sent == 2
    assert task.started_at and task.first_line_at and task.finished_at
    assert task.started_at <= task.first_line_at <= task.finished_at

    (request,) = llm.requests
    body = request.body
    assert body["model"] == "test-model" and body["stream"] is True
    if kind == "openai":
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-loopback-openai-secret-4242"
        assert body["stream_options"] == {"include_usage": True}
        system = body["messages"][0]["content"]
        user_text = body["messages"][1]["content"]
        assert body["messages"][0]["role"] == "system"
    else:
        assert request.path == "/v1/messages"
        # anthropic 2.x sends the key as a bearer token; older releases as x-api-key.
        key = request.headers.get("x-api-key") or request.headers["authorization"][7:]
        assert key == "sk-loopback-anthropic-secret-4242"
        assert body["max_tokens"] == settings.AGENT_MAX_OUTPUT_TOKENS
        system = body["system"]
        user_text = body["messages"][0]["content"]
    assert "tools" not in body  # none configured
    assert "helperbot" in system and "#palaver" in system and "Libera" in system
    assert "plain text" in system and "You are terse and kind." in system
    assert "All about Palaver" in system
    assert "<bob> anyone tried Palaver?" in user_text
    assert user_text.endswith("alice asks you: what is Palaver?")
    assert task.context[0] == {"role": "system", "content": system}

    (call,) = calls_of(scene, task)
    assert (call.step, call.provider, call.model, call.outcome) == (
        1,
        f"Loopback {kind}",
        "test-model",
        ModelCall.Outcome.OK,
    )
    assert (call.input_tokens, call.output_tokens) == (30, 9)
    assert call.agent_id == scene.agent.pk and call.agent_name == "Helper"
    assert call.first_token_ms is not None and call.latency_ms >= call.first_token_ms


@pytest.mark.parametrize("kind", PROVIDERS)
def test_the_first_line_leaves_before_the_model_finishes(
    alice: User, llm: LLMServer, said: Said, kind: str
) -> None:
    scene = make_scene(alice, llm, kind)
    release = threading.Event()
    llm.script(Reply(chunks=["First line.\n", "Second line."], hold=release, hold_after=1))
    seen_while_held: list[str] = []

    def watch() -> None:
        # The model holds its second chunk until a line has been said (or 5 s have passed).
        command = said.wait(timeout=5)
        if command is not None and not release.is_set():
            seen_while_held.append(command.text)
        release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    task = ask(scene)
    watcher.join()

    assert seen_while_held == ["First line."]
    assert said.lines() == ["First line.", "Second line."]
    assert task.status == Task.Status.SUCCEEDED


def test_the_context_is_the_newest_lines_within_the_budget(
    alice: User, llm: LLMServer, said: Said
) -> None:
    # 100 tokens ≈ 400 characters: about 11 lines of 36 characters, the newest ones.
    scene = make_scene(alice, llm, context_tokens=100)
    start = timezone.now() - timedelta(hours=1)
    with switch(alice):
        for number in range(40):
            Message.objects.create(
                channel=scene.channel,
                sender="bob",
                text=f"line number {number:03d} ....",
                server_time=start + timedelta(seconds=number),
            )
        question = Message.objects.create(
            channel=scene.channel,
            sender="alice",
            text="helperbot: sum up",
            server_time=start + timedelta(minutes=5),
        )
    llm.script(Reply(chunks=["ok"]))

    ask(scene, "sum up", source_message_id=question.pk)

    text = llm.requests[0].body["messages"][1]["content"]
    shown = [line for line in text.splitlines() if "line number" in line]
    assert shown[-1].endswith("line number 039 ....")  # newest kept, oldest first
    assert "line number 000" not in text
    assert 5 <= len(shown) <= 12
    assert sum(len(line) + 1 for line in shown) <= 400
    assert "helperbot: sum up" not in text  # the question is not repeated as context


def test_a_run_without_a_channel_keeps_its_answer_and_says_nothing(
    alice: User, llm: LLMServer, said: Said
) -> None:
    scene = make_scene(alice, llm)
    llm.script(Reply(chunks=["Done: ", "all good."]))
    with switch(alice):
        task = create_task(agent=scene.agent, trigger=Task.Trigger.MANUAL, input="check")
        run(task.pk)
        task.refresh_from_db()
    assert said.lines() == []
    assert task.status == Task.Status.SUCCEEDED
    assert task.output == "Done: all good."
    assert task.reply_lines_sent == 0 and task.first_line_at is None


def test_a_task_already_taken_is_not_run_twice(alice: User, llm: LLMServer, said: Said) -> None:
    scene = make_scene(alice, llm)
    llm.script(Reply(chunks=["once"]))
    task = ask(scene)
    with switch(alice):
        run(task.pk)  # a redelivered message
    assert len(llm.requests) == 1
    assert said.lines() == ["once"]


# --- lines -----------------------------------------------------------------------------------


def test_a_long_answer_is_cut_at_the_line_cap_with_a_link(
    alice: User, llm: LLMServer, said: Said
) -> None:
    scene = make_scene(alice, llm, reply_max_lines=3)
    answer = "\n".join(f"Point {n}: something worth saying." for n in range(1, 8))
    llm.script(Reply(chunks=[answer[i : i + 7] for i in range(0, len(answer), 7)]))

    task = ask(scene)

    lines = said.lines()
    link = f"{settings.PUBLIC_URL}/agents/tasks/{task.pk}/"
    assert lines == [
        "Point 1: something worth saying.",
        "Point 2: something worth saying.",
        f"Point 3: something worth saying. … full answer: {link}",
    ]
    assert task.output == answer and task.reply_lines_sent == 3


def test_an_answer_of_exactly_the_cap_has_no_link(alice: User, llm: LLMServer, said: Said) -> None:
    scene = make_scene(alice, llm, reply_max_lines=2)
    llm.script(Reply(chunks=["One.\n", "Two.\n"]))
    ask(scene)
    assert said.lines() == ["One.", "Two."]


def test_a_long_paragraph_is_wrapped_at_words_under_400_bytes(
    alice: User, llm: LLMServer, said: Said
) -> None:
    scene = make_scene(alice, llm, reply_max_lines=10)
    words = [f"wörd{n}" for n in range(300)]  # multi-byte: bytes, not characters, count
    paragraph = " ".join(words)
    llm.script(Reply(chunks=[paragraph[i : i + 5] for i in range(0, len(paragraph), 5)]))

    ask(scene)

    lines = said.lines()
    assert len(lines) > 3
    assert all(len(line.encode()) <= 400 for line in lines)
    assert " ".join(lines).split() == words  # no word split, none lost


# --- tools -----------------------------------------------------------------------------------


def give_current_time(scene: Scene, timezone_name: str = "Europe/Paris") -> None:
    tool = Tool.objects.get(slug="current_time")
    configure_tool(
        account=scene.account, tool=tool, enabled=True, settings={"timezone": timezone_name}
    )
    with switch(scene.user):
        scene.agent.tools.add(tool)


@pytest.mark.parametrize("kind", PROVIDERS)
def test_the_model_calls_a_tool_and_reads_its_result(
    alice: User, llm: LLMServer, said: Said, kind: str
) -> None:
    scene = make_scene(alice, llm, kind)
    give_current_time(scene)
    llm.script(
        Reply(chunks=["Let me look."], tool_calls=[ToolCallScript("current_time", "{}")]),
        Reply(chunks=["It is tea time in Paris."]),
    )

    task = ask(scene, "what time is it?")

    assert task.status == Task.Status.SUCCEEDED, task.error
    assert said.lines() == ["Let me look.", "It is tea time in Paris."]
    first, second = llm.requests
    if kind == "openai":
        (offered,) = first.body["tools"]
        assert offered["type"] == "function"
        assert offered["function"]["name"] == "current_time"
        assert offered["function"]["parameters"]["type"] == "object"
        tool_message = second.body["messages"][-1]
        assert tool_message["role"] == "tool"
        assert tool_message["tool_call_id"] == second.body["messages"][-2]["tool_calls"][0]["id"]
        result = tool_message["content"]
    else:
        (offered,) = first.body["tools"]
        assert offered["name"] == "current_time" and offered["input_schema"]["type"] == "object"
        (block,) = second.body["messages"][-1]["content"]
        assert block["type"] == "tool_result" and block["is_error"] is False
        assert second.body["messages"][-2]["content"][-1]["type"] == "tool_use"
        result = block["content"]
    assert str(timezone.now().year) in result and "Europe/Paris" in result

    with switch(alice):
        (row,) = ToolCall.objects.filter(task_id=task.pk)
    assert (row.tool, row.step, row.ok, row.arguments) == ("current_time", 1, True, {})
    assert row.result == result
    assert [call.step for call in calls_of(scene, task)] == [1, 2]
    assert task.prompt_tokens == 22 and task.completion_tokens == 14


def test_malformed_tool_arguments_go_back_to_the_model(
    alice: User, llm: LLMServer, said: Said
) -> None:
    scene = make_scene(alice, llm)
    give_current_time(scene)
    llm.script(
        Reply(tool_calls=[ToolCallScript("current_time", '{"zone": "Eur')]),
        Reply(tool_calls=[ToolCallScript("launch_rockets", "{}")]),
        Reply(chunks=["Sorry, I could not tell."]),
    )

    task = ask(scene)

    assert task.status == Task.Status.SUCCEEDED
    assert said.lines() == ["Sorry, I could not tell."]
    assert "not valid JSON" in llm.requests[1].body["messages"][-1]["content"]
    assert "no tool named 'launch_rockets'" in llm.requests[2].body["messages"][-1]["content"]
    with switch(alice):
        rows = list(ToolCall.objects.filter(task_id=task.pk))
    assert [(row.tool, row.ok, row.raw_arguments) for row in rows] == [
        ("current_time", False, '{"zone": "Eur'),
        ("launch_rockets", False, "{}"),
    ]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_the_run_stops_at_max_steps(alice: User, llm: LLMServer, said: Said, kind: str) -> None:
    scene = make_scene(alice, llm, kind, max_steps=2)
    give_current_time(scene)
    llm.script(
        Reply(tool_calls=[ToolCallScript("current_time")]),
        Reply(tool_calls=[ToolCallScript("current_time")]),
        Reply(chunks=["never asked for"]),
    )

    task = ask(scene)

    assert len(llm.requests) == 2
    first, last = (request.body["tool_choice"] for request in llm.requests)
    if kind == "openai":
        assert (first, last) == ("auto", "none")
    else:
        assert (first, last) == ({"type": "auto"}, {"type": "none"})
    assert task.status == Task.Status.FAILED
    assert task.error.startswith("Stopped after 2 model calls")
    assert said.lines() == []
    with switch(alice):
        assert ToolCall.objects.filter(task_id=task.pk).count() == 1


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_rejected_key_is_noted_and_said_once(
    alice: User, llm: LLMServer, said: Said, kind: str
) -> None:
    scene = make_scene(alice, llm, kind)
    llm.script(Reply.error(401, "Incorrect API key provided"), Reply.error(401, "still wrong"))

    first = ask(scene)
    second = ask(scene)

    assert len(llm.requests) == 2  # a 401 is not retried
    for task in (first, second):
        assert task.status == Task.Status.FAILED
        assert task.error == f"Loopback {kind} rejected the API key (401)"
    lines = said.lines()
    assert len(lines) == 1 and "rejected this account's API key" in lines[0]
    scene.provider.refresh_from_db()
    assert scene.provider.key_rejected_at is not None
    assert [c.outcome for c in calls_of(scene, first)] == [ModelCall.Outcome.AUTH]

    # A new key clears the mark: the next rejection is said again.
    save_account_llm(
        account=alice.account,
        llm=scene.provider.llm,
        api_key="sk-a-new-one",
        enabled_models=["test-model"],
        default_model="test-model",
        instance=scene.provider,
    )
    scene.provider.refresh_from_db()
    assert scene.provider.key_rejected_at is None


def test_a_rate_limit_with_retry_after_is_retried(alice: User, llm: LLMServer, said: Said) -> None:
    scene = make_scene(alice, llm)
    llm.script(
        Reply.error(429, "Rate limit reached", headers={"Retry-After": "1"}),
        Reply(chunks=["Made it."]),
    )

    task = ask(scene)

    assert task.status == Task.Status.SUCCEEDED
    assert said.lines() == ["Made it."]
    first, second = llm.requests
    assert second.at - first.at >= 0.9  # the SDK waited as told
    assert second.headers.get("x-stainless-retry-count") == "1"
    assert [c.outcome for c in calls_of(scene, task)] == [ModelCall.Outcome.OK]


@override_settings(AGENT_LLM_MAX_RETRIES=1)
@pytest.mark.parametrize("kind", PROVIDERS)
def test_rate_limited_after_the_retries(alice: User, llm: LLMServer, said: Said, kind: str) -> None:
    scene = make_scene(alice, llm, kind)
    llm.script(*[Reply.error(429, "slow down", headers={"Retry-After": "0.1"})] * 2)

    task = ask(scene)

    assert len(llm.requests) == 2
    assert task.status == Task.Status.FAILED
    assert "rate limiting" in task.error and "\n" not in task.error
    assert [c.outcome for c in calls_of(scene, task)] == [ModelCall.Outcome.RATE_LIMITED]
    assert said.lines() == []


@override_settings(AGENT_LLM_TIMEOUT_SECONDS=0.3, AGENT_LLM_MAX_RETRIES=0)
def test_a_provider_that_does_not_answer_in_time(alice: User, llm: LLMServer) -> None:
    scene = make_scene(alice, llm)
    llm.script(Reply(chunks=["too late"], delay=3))
    started = time.monotonic()
    task = ask(scene)
    assert time.monotonic() - started < 2.5
    assert task.status == Task.Status.FAILED
    (call,) = calls_of(scene, task)
    assert call.outcome == ModelCall.Outcome.TIMEOUT
    assert task.error in (
        "Loopback openai did not answer in time",
        "Loopback openai stopped answering mid-reply",
    )


@pytest.mark.parametrize("kind", PROVIDERS)
def test_an_unknown_model_is_named(alice: User, llm: LLMServer, kind: str) -> None:
    scene = make_scene(alice, llm, kind)
    llm.script(Reply.error(404, "The model `test-model` does not exist", code="model_not_found"))
    task = ask(scene)
    assert task.status == Task.Status.FAILED
    assert task.error == f"Loopback {kind} does not know the model “test-model” (404)"
    assert calls_of(scene, task)[0].outcome == ModelCall.Outcome.NOT_FOUND


@override_settings(AGENT_LLM_MAX_RETRIES=0)
@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_provider_that_is_down(alice: User, kind: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    provider = loopback_provider(alice, base, kind=kind)
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
        agent = Agent.objects.create(name="H", nick="h", account_llm=provider, model="test-model")
    scene = Scene(alice, alice.account, provider, server, channel, agent)
    task = ask(scene)
    assert task.status == Task.Status.FAILED
    assert task.error == f"could not reach Loopback {kind}"
    assert calls_of(scene, task)[0].outcome == ModelCall.Outcome.UNAVAILABLE


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_refused_request(alice: User, llm: LLMServer, kind: str) -> None:
    scene = make_scene(alice, llm, kind)
    llm.script(Reply.error(400, "messages: too long\nfor this model"))
    task = ask(scene)
    assert task.status == Task.Status.FAILED
    assert (
        task.error
        == f"Loopback {kind} refused the request (400): messages: too long for this model"
    )
    assert calls_of(scene, task)[0].outcome == ModelCall.Outcome.BAD_REQUEST


def test_no_key_in_any_log(alice: User, llm: LLMServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    scene = make_scene(alice, llm)
    llm.script(Reply(chunks=["fine"]), Reply.error(401, "bad key"))
    ask(scene)
    ask(scene)
    assert "sk-loopback-openai-secret-4242" in json.dumps(llm.requests[0].headers)
    assert caplog.records  # the SDK and the runner did log
    assert "secret-4242" not in caplog.text
    for record in caplog.records:
        assert "secret-4242" not in repr(record.args) and "secret-4242" not in str(record.msg)


# --- budgets ---------------------------------------------------------------------------------


def spent(scene: Scene, tokens: int, *, agent: Agent | None = None) -> None:
    with switch(scene.user):
        ModelCall.objects.create(
            agent=agent,
            agent_name=agent.name if agent else "Old",
            provider="x",
            model="m",
            input_tokens=tokens,
            output_tokens=0,
            outcome=ModelCall.Outcome.OK,
        )


def test_the_accounts_budget_stops_runs_and_is_said_once(
    alice: User, llm: LLMServer, said: Said
) -> None:
    scene = make_scene(alice, llm)
    Account.objects.filter(pk=alice.account.pk).update(monthly_token_budget=1000)
    spent(scene, 999)
    llm.script(Reply(chunks=["one"], usage=(10, 5)), Reply(chunks=["two"]))

    under = ask(scene)
    over = ask(scene)
    again = ask(scene)

    assert under.status == Task.Status.SUCCEEDED
    assert len(llm.requests) == 1  # the over-budget runs never called the provider
    for task in (over, again):
        assert task.status == Task.Status.FAILED
        assert task.error == "The account's monthly token budget is used up."
    lines = said.lines()
    assert lines[0] == "one"
    assert lines[1:] == [
        "I cannot answer: this account's agents have used their monthly token budget."
    ]


def test_last_months_tokens_do_not_count(alice: User, llm: LLMServer, said: Said) -> None:
    scene = make_scene(alice, llm)
    Account.objects.filter(pk=alice.account.pk).update(monthly_token_budget=1000)
    spent(scene, 5000)
    with switch(alice):
        ModelCall.objects.update(created_at=timezone.now() - timedelta(days=40))
    llm.script(Reply(chunks=["fine"]))
    assert ask(scene).status == Task.Status.SUCCEEDED


def test_the_agents_budget_stops_it_and_is_said_once(
    alice: User, llm: LLMServer, said: Said
) -> None:
    scene = make_scene(alice, llm, monthly_token_budget=100)
    spent(scene, 5000)  # another agent's: not this one's budget
    spent(scene, 100, agent=scene.agent)

    first = ask(scene)
    second = ask(scene)

    assert llm.requests == []
    assert first.error == second.error == "Helper's monthly token budget is used up."
    assert said.lines() == ["I cannot answer: I have used my monthly token budget."]


def test_the_budget_is_checked_before_each_model_call(
    alice: User, llm: LLMServer, said: Said
) -> None:
    scene = make_scene(alice, llm, monthly_token_budget=100)
    give_current_time(scene)
    llm.script(
        Reply(tool_calls=[ToolCallScript("current_time")], usage=(90, 20)),
        Reply(chunks=["never"]),
    )
    task = ask(scene)
    assert len(llm.requests) == 1
    assert task.status == Task.Status.FAILED
    assert task.prompt_tokens == 90 and task.completion_tokens == 20


def test_a_gateway_that_cannot_be_reached_fails_the_run(alice: User, llm: LLMServer) -> None:
    scene = make_scene(alice, llm)
    llm.script(Reply(chunks=["An answer nobody will read."]))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{port}/0"):
        task = ask(scene)
    assert task.status == Task.Status.FAILED
    assert task.error == "The answer could not be handed to the IRC gateway."
    assert task.output == "An answer nobody will read."
    (call,) = calls_of(scene, task)
    assert call.outcome == ModelCall.Outcome.OK and call.output_tokens == 7


@pytest.mark.parametrize("kind", PROVIDERS)
def test_the_loopback_server_answers_without_streaming_too(llm: LLMServer, kind: str) -> None:
    """What the runner does not use but other callers of tests.llm_servers may: plain JSON."""
    import anthropic
    import openai

    llm.script(Reply(chunks=["Hello", " there"], tool_calls=[ToolCallScript("current_time", "{}")]))
    if kind == "openai":
        client = openai.OpenAI(base_url=llm.openai_url, api_key="k", max_retries=0)
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        message = answer.choices[0].message
        assert message.content == "Hello there"
        assert message.tool_calls
        call = message.tool_calls[0]
        assert isinstance(call, openai.types.chat.ChatCompletionMessageFunctionToolCall)
        assert call.function.name == "current_time"
        assert answer.usage and answer.usage.prompt_tokens == 11
    else:
        other = anthropic.Anthropic(base_url=llm.anthropic_url, api_key="k", max_retries=0)
        reply = other.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert [block.type for block in reply.content] == ["text", "tool_use"]
        assert reply.stop_reason == "tool_use" and reply.usage.output_tokens == 7


def test_a_turned_off_agent_does_not_run(alice: User, llm: LLMServer, said: Said) -> None:
    scene = make_scene(alice, llm, enabled=False)
    task = ask(scene)
    assert llm.requests == [] and said.lines() == []
    assert task.status == Task.Status.FAILED and task.error == "Helper is turned off."
    assert task.finished_at is not None


def test_an_inactive_provider_is_not_called(alice: User, llm: LLMServer) -> None:
    scene = make_scene(alice, llm)
    LLM.objects.filter(pk=scene.provider.llm_id).update(is_active=False)
    task = ask(scene)
    assert llm.requests == []
    assert task.error == "The LLM provider Loopback openai is not offered any more."


@override_settings(AGENT_LLM_MAX_RETRIES=1)
@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_provider_failing_with_5xx_is_retried_then_unavailable(
    alice: User, llm: LLMServer, kind: str
) -> None:
    scene = make_scene(alice, llm, kind)
    llm.script(*[Reply.error(503, "overloaded", headers={"Retry-After": "0.1"})] * 2)
    task = ask(scene)
    assert len(llm.requests) == 2
    assert task.error == f"Loopback {kind} failed (503), retries exhausted"
    assert calls_of(scene, task)[0].outcome == ModelCall.Outcome.UNAVAILABLE
