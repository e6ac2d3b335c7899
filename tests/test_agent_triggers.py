"""What calls an agent (agents.triggers): lines addressing it in its channels, private messages
to it, /ask from the web chat; and what never does (its own lines, other agents', bots')."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from agents.models import Agent, Task
from agents.tasks import query_received
from agents.triggers import addressed_question, on_lines_stored
from channels_app import hooks
from channels_app.models import Channel, Message, Server
from config.celery import app
from tenancy import switch
from tests.factories import UserFactory
from tests.helpers import make_provider


@dataclass
class World:
    user: User
    server: Server
    channel: Channel
    other_channel: Channel
    helper: Agent
    other: Agent


@pytest.fixture
def world(alice: User) -> World:
    provider = make_provider(alice)
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
        other_channel = Channel.objects.create(server=server, name="#ops")
        helper = Agent.objects.create(
            name="Helper", nick="helper", account_llm=provider, model="gpt-4o-mini",
            cooldown_seconds=0,
        )  # fmt: skip
        other = Agent.objects.create(
            name="Other", nick="otherbot", account_llm=provider, model="gpt-4o-mini",
            cooldown_seconds=0,
        )  # fmt: skip
        helper.channels.add(channel, other_channel)
        other.channels.add(channel)
    return World(alice, server, channel, other_channel, helper, other)


def say(channel: Channel, sender: str, text: str, **fields: Any) -> int:
    fields.setdefault("server_time", timezone.now())
    return Message.objects.create(channel=channel, sender=sender, text=text, **fields).pk


def tasks() -> list[tuple[str, str, str, str]]:
    return [
        (t.agent.nick, t.trigger, t.input, t.channel.name if t.channel else "")
        for t in Task.objects.select_related("agent", "channel").order_by("pk")
    ]


def test_the_listener_is_registered_when_django_starts() -> None:
    assert on_lines_stored in hooks._listeners


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ("helper: what is up?", "what is up?"),
        ("helper, what is up?", "what is up?"),
        ("HeLpEr:what", "what"),
        ("  helper:   spaced  ", "spaced"),
        ("helper:", ""),
        ("helpers: no", None),
        ("help: no", None),
        ("hey helper: no", None),
        ("helper what", None),
    ],
)
def test_addressing_forms(text: str, question: str | None) -> None:
    assert addressed_question("helper", text) == question


def test_addressing_compares_nicks_with_rfc1459_casemapping() -> None:
    # {}|~ are the lower case of []\^ under rfc1459.
    assert addressed_question("hel{p}|~", "HEL[P]\\^: hi") == "hi"


def test_a_line_addressing_the_agent_creates_a_mention_task(world: World) -> None:
    with switch(world.user):
        ids = [
            say(world.channel, "bob", "helper: what did carol say?"),
            say(world.channel, "bob", "HELPER, and then?"),
            say(world.channel, "bob", "I think helper knows"),  # not anywhere: ignored
            say(world.channel, "bob", "helper:"),  # nothing asked
            say(world.channel, "bob", "helper: as a notice", kind=Message.Kind.NOTICE),
            say(world.channel, "bob", "helper: waves", kind=Message.Kind.ACTION),
        ]
        on_lines_stored(world.user.account.pk, ids)
        assert tasks() == [
            ("helper", "mention", "what did carol say?", "#palaver"),
            ("helper", "mention", "and then?", "#palaver"),
        ]
        first = Task.objects.order_by("pk").first()
        assert first is not None
        assert first.requested_by == "bob"
        assert first.source_message_id == ids[0]
        assert first.server_id == world.server.pk
        assert first.reply_to == "#palaver"


def test_the_users_own_line_calls_the_agent(world: World) -> None:
    # The user addressing their agent from the web or another client is a trigger.
    with switch(world.user):
        on_lines_stored(world.user.account.pk, [say(world.channel, "alice", "helper: hi")])
        assert tasks() == [("helper", "mention", "hi", "#palaver")]


def test_named_anywhere_only_when_the_agent_is_set_to(world: World) -> None:
    with switch(world.user):
        line = say(world.channel, "bob", "I think Helper knows, helper helper")
        partial = say(world.channel, "bob", "helpers and xhelper and helper_ are others")
        on_lines_stored(world.user.account.pk, [line, partial])
        assert tasks() == []
        Agent.objects.filter(pk=world.helper.pk).update(answer_anywhere=True)
        on_lines_stored(world.user.account.pk, [line, partial])
        # One task for the line, however many times it names the agent.
        assert tasks() == [("helper", "mention", "I think Helper knows, helper helper", "#palaver")]


def test_only_the_agents_channels_and_enabled_agents(world: World) -> None:
    with switch(world.user):
        elsewhere = Channel.objects.create(server=world.server, name="#elsewhere")
        on_lines_stored(world.user.account.pk, [say(elsewhere, "bob", "helper: hi")])
        Agent.objects.filter(pk=world.helper.pk).update(enabled=False)
        on_lines_stored(world.user.account.pk, [say(world.channel, "bob", "helper: hi")])
        assert tasks() == []


@pytest.mark.parametrize(
    ("sender", "tags"),
    [
        ("helper", {}),  # its own line
        ("HELPER", {}),
        ("otherbot", {}),  # another agent of the account
        ("OtherBot", {}),
        ("somebot", {"bot": ""}),  # IRCv3 bot mode
        ("somebot", {"draft/bot": ""}),
        ("alice", {"palaver/agent": "otherbot"}),  # an agent speaking through alice
        ("bob", {"palaver/backfill": "1"}),  # replayed history
    ],
)
def test_no_loops(world: World, sender: str, tags: dict[str, str]) -> None:
    with switch(world.user):
        line = say(world.channel, sender, "helper: otherbot: answer me", tags=tags)
        on_lines_stored(world.user.account.pk, [line])
        assert tasks() == []


def test_a_line_from_long_ago_is_history(world: World) -> None:
    with switch(world.user):
        old = say(
            world.channel, "bob", "helper: hi", server_time=timezone.now() - timedelta(hours=1)
        )
        on_lines_stored(world.user.account.pk, [old])
        assert tasks() == []


def test_two_agents_addressed_on_one_line_each_answer(world: World) -> None:
    with switch(world.user):
        Agent.objects.filter(pk=world.other.pk).update(answer_anywhere=True)
        on_lines_stored(
            world.user.account.pk, [say(world.channel, "bob", "helper: ask otherbot too")]
        )
        assert sorted(tasks()) == [
            ("helper", "mention", "ask otherbot too", "#palaver"),
            ("otherbot", "mention", "helper: ask otherbot too", "#palaver"),
        ]


def test_cool_down_per_agent_and_channel(world: World) -> None:
    with switch(world.user):
        Agent.objects.filter(pk=world.helper.pk).update(cooldown_seconds=60)
        batch = [say(world.channel, "bob", "helper: one"), say(world.channel, "bob", "helper: two")]
        on_lines_stored(world.user.account.pk, batch)
        on_lines_stored(world.user.account.pk, [say(world.channel, "carol", "helper: three")])
        on_lines_stored(world.user.account.pk, [say(world.other_channel, "bob", "helper: four")])
        assert tasks() == [
            ("helper", "mention", "one", "#palaver"),
            ("helper", "mention", "four", "#ops"),
        ]


def test_cool_down_keys_are_per_account(world: World, bob: User) -> None:
    provider = make_provider(bob)
    with switch(bob):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="bob")
        channel = Channel.objects.create(server=server, name="#palaver")
        agent = Agent.objects.create(
            name="Helper", nick="helper", account_llm=provider, model="gpt-4o-mini",
            cooldown_seconds=60,
        )  # fmt: skip
        agent.channels.add(channel)
    with switch(world.user):
        Agent.objects.filter(pk=world.helper.pk).update(cooldown_seconds=60)
        on_lines_stored(world.user.account.pk, [say(world.channel, "x", "helper: alice's")])
        assert len(tasks()) == 1
    with switch(bob):
        on_lines_stored(bob.account.pk, [say(channel, "x", "helper: bob's")])
        assert tasks() == [("helper", "mention", "bob's", "#palaver")]


def test_a_private_conversation_calls_an_agent_speaking_through_the_user(world: World) -> None:
    with switch(world.user):
        query = Channel.objects.create(server=world.server, name="carol", kind=Channel.Kind.QUERY)
        line = say(query, "carol", "helper: can you help?")
        on_lines_stored(world.user.account.pk, [line])
        assert tasks() == []  # its own connection: a query to alice is not for it
        Agent.objects.filter(pk=world.helper.pk).update(presence=Agent.Presence.USER_CONNECTION)
        plain = say(query, "carol", "just chatting about helper")
        on_lines_stored(world.user.account.pk, [line, plain])
        assert tasks() == [("helper", "mention", "can you help?", "carol")]
        task = Task.objects.get()
        assert task.reply_to == "carol"


def test_query_received_creates_a_query_task_with_a_cool_down(world: World) -> None:
    with switch(world.user):
        Agent.objects.filter(pk=world.helper.pk).update(cooldown_seconds=60)
        query_received(world.helper.pk, world.server.pk, "carol", "hello there")
        query_received(world.helper.pk, world.server.pk, "CAROL", "again")  # cooling down
        query_received(world.helper.pk, world.server.pk, "dave", "hi")
        query_received(world.helper.pk, world.server.pk, "OtherBot", "loop?")  # an agent
        query_received(world.helper.pk, world.server.pk, "erin", "   ")  # nothing
        made = list(Task.objects.order_by("pk"))
        assert [(t.trigger, t.input, t.reply_to, t.requested_by) for t in made] == [
            ("query", "hello there", "carol", "carol"),
            ("query", "hi", "dave", "dave"),
        ]
        assert all(t.server_id == world.server.pk and t.channel is None for t in made)
        Agent.objects.filter(pk=world.helper.pk).update(enabled=False)
        query_received(world.helper.pk, world.server.pk, "frank", "hi")
        assert Task.objects.count() == 2


def test_query_received_is_registered_under_its_name() -> None:
    assert app.tasks["agents.query_received"].name == query_received.name == "agents.query_received"


def test_no_agents_costs_one_query_for_any_batch(
    world: World, django_assert_max_num_queries: Any
) -> None:
    with switch(world.user):
        Agent.objects.all().delete()
        ids = list(range(1, 5001))
        with django_assert_max_num_queries(1):
            on_lines_stored(world.user.account.pk, ids)


def test_a_large_batch_costs_a_few_queries(
    world: World, django_assert_max_num_queries: Any
) -> None:
    with switch(world.user):
        now = timezone.now()
        Message.objects.bulk_create(
            Message(channel=world.channel, sender="bob", text=f"line {i}", server_time=now)
            for i in range(3000)
        )
        ids = list(Message.objects.values_list("pk", flat=True))
        # Agents, their channels, the lines: nothing per line.
        with django_assert_max_num_queries(3):
            on_lines_stored(world.user.account.pk, ids)
        assert tasks() == []


def send(client: Client, channel: Channel, text: str) -> Any:
    return client.post(reverse("chat:send", args=[channel.pk]), {"text": text})


def test_ask_from_the_web_chat(world: World, alice_client: Client) -> None:
    response = send(alice_client, world.channel, "/ask helper what is new?")
    assert response.status_code == 204
    response = send(alice_client, world.other_channel, "/ask other: and you?")
    assert response.status_code == 204
    with switch(world.user):
        made = list(Task.objects.select_related("agent", "channel").order_by("pk"))
        assert [(t.agent.nick, t.trigger, t.input, t.channel, t.requested_by) for t in made] == [
            ("helper", "ask", "what is new?", world.channel, "alice"),
            ("otherbot", "ask", "and you?", world.other_channel, "alice"),
        ]


def test_ask_by_a_name_with_spaces(world: World, alice_client: Client) -> None:
    with switch(world.user):
        Agent.objects.filter(pk=world.other.pk).update(name="Release Notes")
    assert send(alice_client, world.channel, "/ask release notes draft them").status_code == 204
    with switch(world.user):
        assert tasks() == [("otherbot", "ask", "draft them", "#palaver")]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("/ask nobody hello", "No agent is called “nobody”. Your agents: helper, otherbot."),
        ("/ask helper", "Ask helper something. Usage: /ask agent question"),
        ("/ask helper   ", "Ask helper something"),
        ("/ask", "Usage: /ask agent question"),
    ],
)
def test_ask_errors(world: World, alice_client: Client, text: str, error: str) -> None:
    response = send(alice_client, world.channel, text)
    assert response.status_code == 400
    assert error in response.content.decode()
    with switch(world.user):
        assert Task.objects.count() == 0


def test_ask_a_disabled_agent(world: World, alice_client: Client) -> None:
    with switch(world.user):
        Agent.objects.filter(pk=world.helper.pk).update(enabled=False)
    response = send(alice_client, world.channel, "/ask helper hi")
    assert response.status_code == 400
    assert "Helper is disabled" in response.content.decode()


def test_ask_in_the_server_buffer_is_refused(world: World, alice_client: Client) -> None:
    with switch(world.user):
        buffer = Channel.objects.create(
            server=world.server, name="Libera", kind=Channel.Kind.SERVER
        )
    response = send(alice_client, buffer, "/ask helper hi")
    assert response.status_code == 400
    assert "this is the server buffer" in response.content.decode()


@pytest.fixture
def worker(clean_schemas: None) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


def test_stored_lines_reach_the_agent_through_the_hook_task(worker: None) -> None:
    """The path the gateway takes: channels_app.message_stored, enqueued with the account's
    schema, runs the listener agents registered at startup in the worker's process."""
    user = UserFactory(email="alice@example.org")
    provider = make_provider(user)
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
        agent = Agent.objects.create(
            name="Helper", nick="helper", account_llm=provider, model="gpt-4o-mini"
        )
        agent.channels.add(channel)
        ids = [say(channel, "bob", "chatter"), say(channel, "bob", "helper: what did alice say?")]
    hooks.message_stored_on_commit(
        account_id=user.account.pk, schema_name=user.account.schema_name, message_ids=ids
    )
    deadline = time.monotonic() + 20
    made: list[Task] = []
    while not made and time.monotonic() < deadline:
        time.sleep(0.1)
        with switch(user):
            made = list(Task.objects.all())
    assert [(t.trigger, t.input, t.source_message_id) for t in made] == [
        ("mention", "what did alice say?", ids[1])
    ]
