"""Agents present in IRC (issue 8): their own gateway connections against a real InspIRCd, their
speech (AgentSay) through their own connection or the user's, and private messages to them
starting runs (the Celery task agents.query_received, read off the real broker)."""

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import transaction

from accounts.models import User
from agents.forms import AgentForm
from agents.models import Agent
from agents.services import delete_agent, save_agent
from channels_app.models import Channel, ChannelUser, Message, Server
from gateway.agents import AGENT_USERNAME, agent_server_config
from gateway.connection import AGENT_TAG, ServerConfig
from gateway.manager import QUERY_TASK
from llms.models import AccountLLM
from tenancy import switch
from tests.factories import UserFactory
from tests.gateway_support import GatewayThread, messages, wait_until
from tests.helpers import make_provider
from tests.ircd import InspIRCd, IrcBot, IrcServer, unique_channel

# InspIRCd's bot mode (user mode B, ISUPPORT BOT=B, the tag inspircd.org/bot on a bot's lines).
BOTMODE = '<module name="botmode">'


@pytest.fixture
def alice(clean_schemas: None) -> User:
    return UserFactory(email="alice@example.org")


@pytest.fixture
def bob(clean_schemas: None) -> User:
    return UserFactory(email="bob@example.org")


@pytest.fixture
def ircd(inspircd_factory: Callable[..., InspIRCd]) -> InspIRCd:
    return inspircd_factory(extra_config=BOTMODE, tls=False)


def add_server(user: User, ircd: IrcServer, *channels: str, **fields: Any) -> int:
    values: dict[str, Any] = {
        "name": "Test net", "host": "127.0.0.1", "port": ircd.port, "tls": False,
        "nick": "alice_p", **fields,
    }  # fmt: skip
    with switch(user), transaction.atomic():
        server = Server.objects.create(**values)
        for name in channels:
            Channel.objects.create(server=server, name=name, autojoin=True)
        return server.pk


def add_agent(user: User, nick: str, *channels: str, **fields: Any) -> int:
    """An agent in `channels` (created before the gateway reads the account)."""
    provider = AccountLLM.objects.filter(account=user.account).first() or make_provider(user)
    with switch(user), transaction.atomic():
        agent = Agent.objects.create(
            name=fields.pop("name", nick.title()), nick=nick, account_llm=provider,
            model="gpt-4o-mini", **fields,
        )  # fmt: skip
        agent.channels.set(Channel.objects.filter(name__in=channels))
        return agent.pk


def edit_agent(user: User, agent_id: int, **changes: Any) -> None:
    """Change an agent as the web does: the form (filled with what the agent has) and
    agents.services.save_agent, which tells the gateway after the commit."""
    with switch(user):
        agent = Agent.objects.get(pk=agent_id)
        form = AgentForm(instance=agent, account=user.account)
        data: dict[str, Any] = {}
        for name, field in form.fields.items():
            value = form.initial.get(name, field.initial)
            if isinstance(value, list | tuple):
                value = [getattr(v, "pk", v) for v in value]
            data[name] = "" if value is None else value
        if "channels" in changes:
            changes["channels"] = list(
                Channel.objects.filter(name__in=changes["channels"]).values_list("pk", flat=True)
            )
        data.update(changes)
        form = AgentForm(data, instance=agent, account=user.account)
        assert form.is_valid(), form.errors
        save_agent(account=user.account, form=form)


def say(gateway: GatewayThread, user: User, server_id: int, agent_id: int, **fields: Any) -> None:
    assert gateway.gateway is not None
    command = {"op": "agent_say", "account_id": str(user.account.pk), "server_id": server_id,
               "agent_id": agent_id, **fields}  # fmt: skip
    gateway.call(gateway.gateway.handle_command(command))


def agent_connection(gateway: GatewayThread, user: User, server_id: int, agent_id: int) -> Any:
    assert gateway.gateway is not None
    return gateway.gateway.agent_connections.get((user.account.pk, server_id, agent_id))


def names(bot: IrcBot, channel: str) -> set[str]:
    mark = bot.mark()
    bot.send_raw(f"NAMES {channel}")
    bot.wait_for(lambda line: line.command == "366", since=mark)
    entries: set[str] = set()
    for line in bot.lines[mark:]:
        if line.command == "353" and line.params[-2].lower() == channel.lower():
            entries |= {e.lstrip("~&@%+") for e in line.params[-1].split()}
    return entries


def queued_queries() -> list[tuple[list[Any], dict[str, Any]]]:
    """(args, headers) of every agents.query_received message waiting on the broker."""
    from config.celery import app

    queue = app.amqp.router.route({}, QUERY_TASK)["queue"].name
    found = []
    for raw in redis.Redis.from_url(settings.CELERY_BROKER_URL).lrange(queue, 0, -1):
        message = json.loads(raw)
        headers = message["headers"]
        if headers.get("task") != QUERY_TASK:
            continue
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((args, headers))
    return found


@pytest.fixture
def broker_queue() -> None:
    from config.celery import app

    queue = app.amqp.router.route({}, QUERY_TASK)["queue"].name
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)


# --- presence --------------------------------------------------------------------------------


def test_an_enabled_agent_joins_its_channel_under_its_own_nick_as_a_bot(
    alice: User, ircd: InspIRCd, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel, other = unique_channel(), unique_channel()
    server_id = add_server(alice, ircd, channel, other, sasl_username="alice",
                           sasl_password="s3cret-sasl", password="")  # fmt: skip
    helper = add_agent(alice, "helper", channel)
    add_agent(alice, "sleepy", channel, enabled=False)
    carol = irc_bot(ircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    join = carol.wait_for(r":helper!\S+ JOIN", timeout=15)
    assert join.source is not None and f"!{AGENT_USERNAME}@" in join.source
    wait_until(lambda: {"alice_p", "helper"} <= names(carol, channel), what="both in NAMES")
    assert "sleepy" not in names(carol, channel)

    # Only its own channel, bot mode set on itself (ISUPPORT BOT=B), registered as an agent.
    conn = agent_connection(gateway, alice, server_id, helper)
    wait_until(lambda: set(conn.joined) == {channel.lower()}, what="only its own channel")

    def whois_as_bot() -> list[Any] | None:
        mark = carol.mark()
        carol.send_raw("WHOIS helper")
        carol.wait_for(lambda line: line.command == "318", since=mark)
        lines = carol.lines[mark:]
        return lines if any(line.command == "335" for line in lines) else None  # 335: a bot

    lines = wait_until(whois_as_bot, what="helper shown as a bot")
    realname = next(line for line in lines if line.command == "311").params[-1]
    assert realname == "Palaver agent Helper"
    # None of the user's credentials: they identify the user, not the agent.
    assert (conn.config.password, conn.config.sasl_username, conn.config.sasl_password) == (
        "", "", "",
    )  # fmt: skip

    # Its connection stores nothing: the channel's lines once (the user's connection), its
    # private messages never, no server-buffer line of its own.
    carol.say(channel, "one line for everyone")
    carol.say("helper", "a private word")
    carol.notice("helper", "a notice")
    wait_until(lambda: messages(alice, text="one line for everyone"), what="the channel line")
    time.sleep(1)
    assert len(messages(alice, text="one line for everyone")) == 1
    assert messages(alice, text__in=["a private word", "a notice"]) == []
    with switch(alice):
        assert not Channel.objects.filter(name__in=["carol", "helper"]).exists()
        server_lines = list(
            Message.objects.filter(channel__kind=Channel.Kind.SERVER).values_list("text", flat=True)
        )
    assert not any("helper" in text for text in server_lines)


def test_agent_connection_config_copies_the_address_not_the_credentials() -> None:
    user = ServerConfig(
        account_id=uuid.uuid4(), server_id=3, name="Net", host="irc.example.org", port=6697,
        tls=True, tls_verify=False, nick="alice", alt_nicks=["alice_"], username="al",
        realname="Alice", password="server-pass", sasl_username="alice",
        sasl_password="sasl-pass", autojoin={"#users": ""},
    )  # fmt: skip
    config = agent_server_config(user, agent_name="Helper", nick="helper",
                                 channels={"#ops": "key"})  # fmt: skip
    assert (config.host, config.port, config.tls, config.tls_verify) == (
        "irc.example.org", 6697, True, False,
    )  # fmt: skip
    assert (config.nick, config.alt_nicks) == ("helper", ["helper_", "helper__"])
    assert (config.password, config.sasl_username, config.sasl_password) == ("", "", "")
    assert config.autojoin == {"#ops": "key"}
    assert config.username == AGENT_USERNAME and "agent" in config.realname.lower()


def test_nick_collision_takes_the_alternative(
    alice: User, ircd: InspIRCd, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel = unique_channel()
    irc_bot(ircd, "helper")  # a person already holds the nick
    add_server(alice, ircd, channel)
    add_agent(alice, "helper", channel)
    carol = irc_bot(ircd, "carol")
    carol.join(channel)
    run_gateway()
    carol.wait_for(r":helper_!\S+ JOIN", timeout=15)


def test_web_changes_to_an_agent_reach_irc_within_seconds(
    alice: User, ircd: InspIRCd, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel, second = unique_channel(), unique_channel()
    server_id = add_server(alice, ircd, channel)
    with switch(alice):
        # A keyed channel: the agent's JOIN carries the key.
        Channel.objects.create(server_id=server_id, name=second, key="sesame", autojoin=False)
    helper = add_agent(alice, "helper", channel)
    carol = irc_bot(ircd, "carol")
    carol.join(channel)
    carol.join(second)
    gateway = run_gateway()
    carol.wait_for(r":helper!\S+ JOIN", timeout=15)

    def within(seconds: float, match: str) -> None:
        started = time.monotonic()
        carol.wait_for(match, timeout=seconds)
        assert time.monotonic() - started < seconds

    edit_agent(alice, helper, nick="helpbot")
    within(5, r":helper!\S+ NICK :?helpbot")
    edit_agent(alice, helper, channels=[channel, second])
    within(5, rf":helpbot!\S+ JOIN :?{second}")
    assert agent_connection(gateway, alice, server_id, helper).config.autojoin == {
        channel: "", second: "sesame",
    }  # fmt: skip
    edit_agent(alice, helper, channels=[second])
    within(5, rf":helpbot!\S+ PART :?{channel}")

    def members() -> set[str]:
        with switch(alice):
            return set(
                ChannelUser.objects.filter(channel__name=channel).values_list("nick", flat=True)
            )

    # The member list is the user's connection's: the agent's leaving removes the agent, it
    # does not clear the list as the user's own PART would.
    wait_until(lambda: members() == {"alice_p", "carol"}, what="the members without helpbot")
    edit_agent(alice, helper, enabled=False)
    within(5, r":helpbot!\S+ QUIT")
    wait_until(lambda: agent_connection(gateway, alice, server_id, helper) is None)

    edit_agent(alice, helper, enabled=True)
    within(10, rf":helpbot!\S+ JOIN :?{second}")
    with switch(alice), transaction.atomic():
        delete_agent(account=alice.account, agent=Agent.objects.get(pk=helper))
    within(5, r":helpbot!\S+ QUIT")
    # The user's own connection stayed where it was all along.
    assert gateway.connection(alice, server_id).state == "connected"
    with switch(alice):
        assert Channel.objects.get(name=channel).autojoin  # the agent's PART is not the user's


def test_the_agent_reconnects_rejoins_and_follows_the_address_policy(
    settings: Any, alice: User, ircd: InspIRCd, run_gateway: Callable
) -> None:
    settings.GATEWAY_RECONNECT_FIRST_SECONDS = 0.3
    channel = unique_channel()
    server_id = add_server(alice, ircd, channel)
    helper = add_agent(alice, "helper", channel)
    gateway = run_gateway()

    def in_channel() -> bool:
        conn = agent_connection(gateway, alice, server_id, helper)
        return bool(conn.state == "connected" and channel.lower() in conn.joined)

    wait_until(in_channel, 20, "the agent in its channel")
    ircd.stop(graceful=False)
    ircd.start()
    wait_until(in_channel, 30, "the agent back in its channel")

    # Every connect goes through the address policy: once loopback is refused, it stays out.
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    ircd.stop(graceful=False)
    ircd.start()
    conn = agent_connection(gateway, alice, server_id, helper)
    wait_until(lambda: "loopback" in conn.last_error, 20, "the refusal")
    time.sleep(1.0)  # more attempts at this backoff: all refused
    assert conn.state != "connected" and "loopback" in conn.last_error


def test_the_periodic_resync_covers_agents(
    alice: User, ircd: InspIRCd, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    """A change the gateway was not told of (a lost command) is picked up by the resync."""
    channel = unique_channel()
    server_id = add_server(alice, ircd, channel)
    carol = irc_bot(ircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    helper = add_agent(alice, "helper", channel)  # no ServersChanged: the ORM directly
    carol.assert_no(r":helper!\S+ JOIN", within=1)
    assert gateway.gateway is not None
    gateway.call(gateway.gateway.sync_all())
    carol.wait_for(r":helper!\S+ JOIN", timeout=10)
    with switch(alice):
        Agent.objects.filter(pk=helper).update(enabled=False)
    gateway.call(gateway.gateway.sync_all())
    carol.wait_for(r":helper!\S+ QUIT", timeout=5)
    assert agent_connection(gateway, alice, server_id, helper) is None


# --- speech ----------------------------------------------------------------------------------


def test_agent_say_through_its_own_connection_and_through_the_users(
    alice: User, ircd: InspIRCd, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel = unique_channel()
    server_id = add_server(alice, ircd, channel)
    helper = add_agent(alice, "helper", channel)
    scribe = add_agent(alice, "scribe", channel, presence=Agent.Presence.USER_CONNECTION)
    carol = irc_bot(ircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":helper!\S+ JOIN", timeout=15)
    wait_until(lambda: "alice_p" in names(carol, channel))
    wait_until(lambda: agent_connection(gateway, alice, server_id, helper).registered)
    assert agent_connection(gateway, alice, server_id, scribe) is None  # it has none

    say(gateway, alice, server_id, helper, target=channel, text="hello from the agent")
    say(gateway, alice, server_id, helper, target=channel, text="nods", kind="action")
    say(gateway, alice, server_id, helper, target="carol", text="just for you")
    carol.wait_for(rf":helper!\S+ PRIVMSG {channel} :hello from the agent")
    carol.wait_for(rf":helper!\S+ PRIVMSG {channel} :\x01ACTION nods\x01")
    carol.wait_for(r":helper!\S+ PRIVMSG carol :just for you")
    # The user's connection stores what it sees in the channel, once, as helper's.
    stored = wait_until(lambda: messages(alice, text="hello from the agent"))
    time.sleep(0.5)
    assert [(m.sender, m.tags.get(AGENT_TAG)) for m in stored] == [("helper", None)]
    assert messages(alice, text="just for you") == []

    say(gateway, alice, server_id, scribe, target=channel, text="minutes are up")
    carol.wait_for(rf":alice_p!\S+ PRIVMSG {channel} :\[scribe\] minutes are up")
    line = wait_until(lambda: messages(alice, text="[scribe] minutes are up"))[0]
    assert line.sender == "alice_p" and line.tags[AGENT_TAG] == "scribe"
    assert line.msgid  # the echo of the server, marked as the agent's
    # What the user types is not marked.
    assert gateway.gateway is not None
    gateway.call(gateway.gateway.handle_command({
        "op": "send", "account_id": str(alice.account.pk), "server_id": server_id,
        "target": channel, "text": "my own words",
    }))  # fmt: skip
    mine = wait_until(lambda: messages(alice, text="my own words"))[0]
    assert AGENT_TAG not in mine.tags

    # An agent's line is one line: nothing it says can carry a second command.
    mark = carol.mark()
    say(gateway, alice, server_id, helper, target=channel, text="two\r\nQUIT :smuggled")
    say(gateway, alice, server_id, scribe, target=channel, text="three\nQUIT")
    say(gateway, alice, server_id, helper, target=f"{channel} QUIT", text="four")
    say(gateway, alice, server_id, helper, target=channel, text="still here")
    carol.wait_for(rf":helper!\S+ PRIVMSG {channel} :still here", since=mark)
    carol.assert_no(r"QUIT|:(two|three|four)", since=mark)
    refused = {"channel__kind": Channel.Kind.SERVER, "text__startswith": "Not sent by agent"}
    wait_until(lambda: len(messages(alice, **refused)) == 3, what="three refusals")


def test_agent_say_without_its_connection_is_refused_in_the_server_buffer(
    alice: User, ircd: InspIRCd, run_gateway: Callable
) -> None:
    server_id = add_server(alice, ircd, unique_channel())
    lonely = add_agent(alice, "lonely")  # in no channel of this server: no connection
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).state == "connected")
    say(gateway, alice, server_id, lonely, target="#anywhere", text="anyone?")
    refused = {"channel__kind": Channel.Kind.SERVER, "text__startswith": "Not sent by agent"}
    line = wait_until(lambda: messages(alice, **refused), what="the refusal")[0]
    assert line.text == "Not sent by agent lonely: its connection to this server is not up yet"


def test_agent_say_naming_another_accounts_agent_or_server_is_ignored(
    alice: User, bob: User, ircd: InspIRCd, irc_bot: Callable[..., IrcBot],
    run_gateway: Callable,
) -> None:  # fmt: skip
    channel = unique_channel()
    alice_server = add_server(alice, ircd, channel)
    # Bob's ids: his server (a second one, so its id is not also one of alice's) and agent.
    add_server(bob, ircd, name="Other", nick="bob_p")
    bob_server = add_server(bob, ircd, channel, nick="bob_q")
    bob_agent = add_agent(bob, "bobsbot", channel)
    helper = add_agent(alice, "helper", channel)
    with switch(alice):
        assert not Agent.objects.filter(pk=bob_agent).exclude(pk=helper).exists()
        assert not Server.objects.filter(pk=bob_server).exists()
    carol = irc_bot(ircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":helper!\S+ JOIN", timeout=15)
    carol.wait_for(r":bobsbot!\S+ JOIN", timeout=15, since=0)
    wait_until(lambda: {"alice_p", "bob_q"} <= names(carol, channel))

    if bob_agent != helper:
        say(gateway, alice, alice_server, bob_agent, target=channel, text="bob's agent via alice")
    say(gateway, alice, bob_server, helper, target=channel, text="alice's agent, bob's server")
    # Alice's command carrying bob's server and agent ids both.
    say(gateway, alice, bob_server, bob_agent, target=channel, text="bob's ids in alice's name")
    carol.assert_no(lambda line: line.command == "PRIVMSG", within=1.5)
    # The same command in bob's name is his agent's to say.
    say(gateway, bob, bob_server, bob_agent, target=channel, text="bob's agent speaks")
    carol.wait_for(rf":bobsbot!\S+ PRIVMSG {channel} :bob's agent speaks")


# --- queries ---------------------------------------------------------------------------------


def test_a_query_to_the_agent_enqueues_a_run_but_not_from_a_bot_or_another_agent(
    alice: User, ircd: InspIRCd, irc_bot: Callable[..., IrcBot], run_gateway: Callable,
    broker_queue: None,
) -> None:  # fmt: skip
    channel = unique_channel()
    server_id = add_server(alice, ircd, channel)
    helper = add_agent(alice, "helper", channel)
    other = add_agent(alice, "other", channel)
    carol, dave = irc_bot.many(ircd, ["carol", "dave"])  # type: ignore[attr-defined]
    carol.join(channel)
    dave.send_raw("MODE dave +B")  # dave is a bot: its lines carry the server's bot tag
    dave.wait_for(r"MODE dave :?\+B")
    gateway = run_gateway()
    carol.wait_for(r":helper!\S+ JOIN", timeout=15)
    carol.wait_for(r":other!\S+ JOIN", timeout=15, since=0)
    wait_until(lambda: agent_connection(gateway, alice, server_id, other).registered)

    dave.say("helper", "i am a bot asking")
    say(gateway, alice, server_id, other, target="helper", text="agent to agent")
    carol.say("helper", "  what is the plan?  ")
    carol.say(channel, "helper: a channel line is not a query")
    queued = wait_until(queued_queries, what="the query on the broker")
    time.sleep(1.5)  # the others, had they been enqueued, arrive meanwhile
    queued = queued_queries()
    assert [args for args, _ in queued] == [[helper, server_id, "carol", "what is the plan?"]]
    assert queued[0][1]["_schema_name"] == alice.account.schema_name

    # CTCP: VERSION and PING answered, the rest ignored, none of it a query.
    mark = carol.mark()
    carol.say("helper", "\x01VERSION\x01")
    carol.say("helper", "\x01PING 12345\x01")
    carol.say("helper", "\x01TIME\x01")
    carol.wait_for(r":helper!\S+ NOTICE carol :\x01VERSION Palaver", since=mark)
    carol.wait_for(r":helper!\S+ NOTICE carol :\x01PING 12345\x01", since=mark)
    carol.assert_no(r"NOTICE carol :\x01TIME", within=1, since=mark)
    assert len(queued_queries()) == 1


def test_another_agent_of_the_account_never_starts_a_run(
    alice: User, inspircd: InspIRCd, irc_bot: Callable[..., IrcBot], run_gateway: Callable,
    broker_queue: None,
) -> None:  # fmt: skip
    """On a server without a bot mode (no ISUPPORT BOT, so no bot tag on the agents' lines),
    an agent's words to another agent of the account are still not a query."""
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channel)
    helper = add_agent(alice, "helper", channel)
    other = add_agent(alice, "other", channel)
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()

    def registered(agent_id: int) -> bool:
        conn = agent_connection(gateway, alice, server_id, agent_id)
        return conn is not None and conn.registered

    wait_until(lambda: registered(helper) and registered(other), what="both agents")
    assert "BOT" not in agent_connection(gateway, alice, server_id, helper).isupport
    say(gateway, alice, server_id, other, target="helper", text="agent to agent")
    say(gateway, alice, server_id, helper, target="other", text="and back")
    carol.say("helper", "from a person")
    wait_until(queued_queries, what="the person's query")
    time.sleep(1.5)
    assert [args for args, _ in queued_queries()] == [[helper, server_id, "carol", "from a person"]]


def test_agent_connections_per_account_are_capped(
    alice: User, inspircd: InspIRCd, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import manager

    channel = unique_channel()
    server_id = add_server(alice, inspircd, channel)
    first = add_agent(alice, "first", channel)
    second = add_agent(alice, "second", channel)
    add_agent(alice, "through", channel, presence=Agent.Presence.USER_CONNECTION)
    loaded = manager.load_account_config(alice.account)
    assert set(loaded.agents) == {(server_id, first), (server_id, second)}
    assert set(loaded.agent_nicks.values()) == {"first", "second", "through"}
    monkeypatch.setattr(manager, "MAX_AGENT_CONNECTIONS_PER_ACCOUNT", 1)
    assert set(manager.load_account_config(alice.account).agents) == {(server_id, first)}
