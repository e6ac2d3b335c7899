"""An agent at work, end to end over real sockets: InspIRCd on loopback, the real gateway (the
user's connection and the agent's own), a real Celery worker (the hook task, the trigger, the
run on a threads pool), the real openai SDK talking to a loopback server that speaks its wire
format, and the chat page in Chromium served by uvicorn.

Someone on IRC asks the agent about an earlier line; the model (scripted) calls the history
tool, reads the tool's answer and replies; the reply reaches the channel from the agent's nick
and the browser shows it live, marked as an agent's.
"""

import json
import re
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from django.conf import settings
from django.urls import reverse
from playwright.sync_api import Browser, expect

from accounts.models import User
from agents.models import Agent, Task
from channels_app.models import Channel, ChannelUser
from llms.models import Tool
from llms.services import configure_tool
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.gateway_support import GatewayThread, messages, wait_until
from tests.helpers import loopback_provider
from tests.ircd import BotFactory, InspIRCd, unique_channel
from tests.llm_servers import LLMServer, Reply, ToolCallScript
from tests.test_chat_e2e import DESKTOP, AsgiServer, add_server, asgi_server, chromium
from tests.workers import threads_worker

__all__ = ["asgi_server", "chromium"]  # fixtures, imported for pytest


@pytest.fixture
def worker(clean_schemas: None) -> Iterator[None]:
    """One worker for both queues, on a threads pool as the agents' worker runs."""
    with threads_worker(4, queues=("celery", "agents")):
        yield


def on_irc(user: User, channel_id: int, nick: str) -> bool:
    with switch(user):
        return ChannelUser.objects.filter(channel_id=channel_id, nick__iexact=nick).exists()


@pytest.mark.browser
def test_an_agent_answers_from_history_on_irc_and_in_the_browser(
    asgi_server: AsgiServer,
    chromium: Browser,
    inspircd: InspIRCd,
    irc_bot: BotFactory,
    run_gateway: Callable[..., GatewayThread],
    llm: LLMServer,
    worker: None,
) -> None:
    dana = cast(User, UserFactory(email="dana@example.org", account_name="Dana's place"))
    channel = unique_channel("#ops")
    add_server(dana, inspircd, nick="dana_p", channel=channel)
    provider = loopback_provider(dana, llm.openai_url)
    search = Tool.objects.get(slug="search_history")
    configure_tool(account=dana.account, tool=search, enabled=True, settings={})
    with switch(dana):
        room = Channel.objects.get(name=channel)
        agent = Agent.objects.create(
            name="Helper",
            nick="helper",
            account_llm=provider,
            model="test-model",
            system_prompt="You answer questions about this channel.",
            cooldown_seconds=0,
        )
        agent.channels.add(room)
        agent.tools.add(search)

    alice = irc_bot(inspircd, "alice")
    carol = irc_bot(inspircd, "carol")
    alice.join(channel)
    carol.join(channel)
    run_gateway()
    # The user's connection and the agent's own are both in the channel.
    wait_until(lambda: on_irc(dana, room.pk, "dana_p"), 20, "dana_p joined")
    wait_until(lambda: on_irc(dana, room.pk, "helper"), 20, "the agent joined")

    alice.say(channel, "heads up: the deploy moves to Friday, after the database upgrade")
    wait_until(lambda: messages(dana, text__contains="moves to Friday"), 10, "alice's line stored")

    # The chat page, open on the channel before the question is asked: what follows is live.
    context = chromium.new_context(viewport=DESKTOP, timezone_id="UTC")
    context.set_default_timeout(15_000)
    cookie = settings.SESSION_COOKIE_NAME
    session = signed_in_client(dana).cookies[cookie].value
    context.add_cookies([{"name": cookie, "value": session, "url": asgi_server.url}])
    page = context.new_page()
    page.goto(asgi_server.url + reverse("chat:channel", args=[room.pk]))
    lines = page.locator("#chat-lines")
    expect(lines.locator(".line-message", has_text="moves to Friday")).to_have_count(1)
    expect(page.locator('#chat-member-list [data-nick="helper"]')).to_contain_text("agent")
    page.evaluate("window.__sameDocument = true")

    llm.script(
        Reply(tool_calls=[ToolCallScript("search_history", json.dumps({"query": "deploy"}))]),
        Reply(chunks=["alice said the deploy ", "moves to Friday,\n", "after the DB upgrade."]),
    )
    carol.say(channel, "helper: what did alice say about the deploy?")

    # On IRC, from the agent's own nick, line by line.
    first = carol.wait_for(
        rf":helper!\S+ PRIVMSG {re.escape(channel)} :alice said the deploy moves to Friday,$",
        timeout=20,
    )
    carol.wait_for(rf":helper!\S+ PRIVMSG {re.escape(channel)} :after the DB upgrade\.$")
    assert first is not None

    # The model asked for the tool, and the second request carried the tool's answer: alice's
    # line, found by the account's own full-text search.
    requests = llm.wait_for_requests(2)
    offered = {tool["function"]["name"] for tool in requests[0].body.get("tools", [])}
    assert "search_history" in offered
    tool_messages = [m for m in requests[1].body["messages"] if m.get("role") == "tool"]
    assert tool_messages and "moves to Friday" in str(tool_messages[0]["content"])
    # The question and who asked were in the context of the first request.
    first_context = json.dumps(requests[0].body["messages"])
    assert "what did alice say about the deploy?" in first_context
    assert "carol" in first_context

    # In the browser, live, marked as the agent's.
    answer = lines.locator(".line-message", has_text="alice said the deploy moves to Friday,")
    expect(answer).to_have_count(1)
    expect(answer).to_contain_text("agent")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    context.close()

    # The run, as its page shows it.
    with switch(dana):
        task = Task.objects.get()
        assert task.trigger == Task.Trigger.MENTION
        assert task.status == Task.Status.SUCCEEDED, task.error
        assert task.requested_by == "carol"
        assert task.output == "alice said the deploy moves to Friday,\nafter the DB upgrade."
        assert [(c.tool, c.ok) for c in task.tool_calls.all()] == [("search_history", True)]
        assert task.model_calls.count() == 2
        assert task.first_line_at is not None
    # One answer, not one per line stored: the agent's own lines start nothing.
    wait_until(lambda: messages(dana, text="after the DB upgrade."), 10, "the reply stored")
    with switch(dana):
        assert Task.objects.count() == 1
