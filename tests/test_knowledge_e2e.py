"""An agent answers from its knowledge base with a citation, end to end over real sockets:
InspIRCd on loopback, the real gateway (the user's connection and the agent's own), a real
Celery worker (the hook task, the trigger, the run on a threads pool), the real openai SDK
talking to a loopback server that speaks its wire format, and the cited link followed over HTTP
on uvicorn with the user's session.

The agent was given a knowledge base and no tool: it has knowledge_search because it has a
knowledge base. The model (scripted) searches, reads the passages the tool returned and answers
with the passage's link, which is short and leads to the document, scrolled to the passage.
"""

import json
import re
from collections.abc import Callable
from typing import cast

import httpx
from django.conf import settings

from accounts.models import User
from agents.models import Agent, Task
from channels_app.models import Channel
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.services import index_document_now
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.gateway_support import GatewayThread, messages, wait_until
from tests.helpers import loopback_provider
from tests.ircd import BotFactory, InspIRCd, unique_channel
from tests.llm_servers import LLMServer, Reply, ToolCallScript
from tests.test_agents_e2e import on_irc, worker
from tests.test_chat_e2e import AsgiServer, add_server, asgi_server

__all__ = ["asgi_server", "worker"]  # fixtures, imported for pytest

RELEASE_POLICY = """# Release policy

## Who may deploy

Anyone on the on-call rota may deploy, after a review by a second person. Nobody deploys
alone, and nobody deploys from a laptop that is not enrolled in device management.

## When deploys happen

Deploys happen on Fridays at 14:00 UTC, after the weekly database upgrade has finished.
Announce every deploy in the operations channel an hour before it starts.

## Rolling back

Keep the rollback script at hand. A rollback needs no review: restore first, ask later.
"""

OFFICE = """# Office notes

The coffee machine on the third floor is descaled every Monday. The kitchen closes at 18:00.
"""


def test_an_agent_answers_from_its_knowledge_base_with_a_citation_on_irc(
    asgi_server: AsgiServer,
    inspircd: InspIRCd,
    irc_bot: BotFactory,
    run_gateway: Callable[..., GatewayThread],
    llm: LLMServer,
    worker: None,
) -> None:
    erin = cast(User, UserFactory(email="erin@example.org", account_name="Erin's place"))
    channel = unique_channel("#ops")
    add_server(erin, inspircd, nick="erin_p", channel=channel)
    provider = loopback_provider(erin, llm.openai_url)
    with switch(erin):
        room = Channel.objects.get(name=channel)
        kb = KnowledgeBase.objects.create(name="Ops handbook")
        policy, office = (
            Document.objects.create(
                knowledge_base=kb, title=title, source=Document.Source.PASTED, text=text
            )
            for title, text in (("Release policy", RELEASE_POLICY), ("Office notes", OFFICE))
        )
        for document in (policy, office):
            indexed = index_document_now(document_id=document.pk)
            assert indexed is not None and indexed.status == Document.Status.INDEXED
        # The passage that answers, as the chunker cut the document.
        answer = Chunk.objects.get(document=policy, text__contains="Fridays at 14:00")
        assert answer.heading_path == ["Release policy", "When deploys happen"]
        assert answer.ordinal > 0
        agent = Agent.objects.create(
            name="Helper",
            nick="helper",
            account_llm=provider,
            model="test-model",
            system_prompt="You answer questions about how we work.",
            cooldown_seconds=0,
        )
        agent.channels.add(room)
        agent.knowledge_bases.add(kb)
        assert not agent.tools.exists()
    citation = f"{settings.PUBLIC_URL}/k/{policy.pk}/{answer.ordinal}"

    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    run_gateway()
    wait_until(lambda: on_irc(erin, room.pk, "erin_p"), 20, "erin_p joined")
    wait_until(lambda: on_irc(erin, room.pk, "helper"), 20, "the agent joined")

    llm.script(
        Reply(
            tool_calls=[
                ToolCallScript("knowledge_search", json.dumps({"query": "when do deploys happen"}))
            ]
        ),
        # What a model does with the tool's answer: the fact, then the passage's link.
        Reply(chunks=["Fridays at 14:00 UTC, after the weekly ", f"DB upgrade: {citation}"]),
    )
    carol.say(channel, "helper: when do deploys happen?")

    # On IRC, from the agent's own nick, with the short link.
    line = carol.wait_for(
        rf":helper!\S+ PRIVMSG {re.escape(channel)} :Fridays at 14:00 UTC, after the weekly "
        rf"DB upgrade: {re.escape(citation)}$",
        timeout=30,
    )
    assert line is not None
    said = line.params[-1]
    assert len(said.encode()) < 120, said  # a citation fits in an IRC line with room to spare

    # The model was offered the tool without it being chosen, and told to cite.
    requests = llm.wait_for_requests(2)
    offered = {tool["function"]["name"] for tool in requests[0].body.get("tools", [])}
    assert offered == {"knowledge_search"}
    system = next(m for m in requests[0].body["messages"] if m["role"] == "system")
    assert "call knowledge_search first" in system["content"]
    # The tool's answer, sent back with the second request, held the right passage: its
    # document, section and text, and the link the answer cites, first.
    tool_messages = [m for m in requests[1].body["messages"] if m.get("role") == "tool"]
    assert len(tool_messages) == 1
    result = str(tool_messages[0]["content"])
    first = result.split("\n\n[2]", 1)[0]
    assert "[1] “Release policy” > Release policy > When deploys happen\n" in first
    assert f"Link: {citation}\n" in first
    assert "Deploys happen on Fridays at 14:00 UTC" in first
    assert "coffee" not in result

    # The link resolves for the signed-in user: to the document's page, at the passage.
    session = signed_in_client(erin).cookies[settings.SESSION_COOKIE_NAME].value
    with httpx.Client(
        base_url=asgi_server.url, cookies={settings.SESSION_COOKIE_NAME: session}, timeout=10
    ) as browser:
        path = citation.removeprefix(settings.PUBLIC_URL)
        hop = browser.get(path)
        assert hop.status_code == 302, hop.text[:300]
        target = f"/knowledge/documents/{policy.pk}/#chunk-{answer.ordinal}"
        assert hop.headers["location"] == target
        page = browser.get(target.split("#")[0])
        assert page.status_code == 200
        assert "Release policy" in page.text and "Fridays at 14:00 UTC" in page.text
        # The passage's anchor: the document page gives each passage id="chunk-<ordinal>".
        assert f'id="chunk-{answer.ordinal}"' in page.text
        # Signed out, the link asks to sign in first.
        anonymous = httpx.get(asgi_server.url + path, timeout=10)
        assert anonymous.status_code == 302 and "/sign-in" in anonymous.headers["location"]

    # The run, as its page shows it.
    with switch(erin):
        task = Task.objects.get()
        assert task.status == Task.Status.SUCCEEDED, task.error
        assert [(c.tool, c.ok) for c in task.tool_calls.all()] == [("knowledge_search", True)]
        assert citation in task.tool_calls.get().result
        assert task.output.endswith(citation)
    wait_until(lambda: messages(erin, text__contains=citation), 10, "the reply stored")
