"""The agents' knowledge_search tool (llms/tools.py), the short links it cites
(knowledge/links.py, knowledge.views.passage_link), how an agent gets the tool (by having a
knowledge base) and what its system prompt then says. Real PostgreSQL: passages are stored by
knowledge.services.replace_chunks and found by knowledge.retrieval.retrieve."""

from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from agents.forms import AgentForm
from agents.models import Agent, Task
from agents.runner import queries
from agents.runner.context import system_prompt
from knowledge.chunking import ChunkText
from knowledge.models import Document, KnowledgeBase
from knowledge.services import replace_chunks
from llms.models import AccountLLM, Tool
from llms.services import configure_tool
from llms.tools import (
    KNOWLEDGE_TOOL,
    TOOLS_BY_SLUG,
    ToolContext,
    ToolResult,
    agent_tools,
    execute_tool,
    trim_passage,
)
from tenancy import switch
from tests.helpers import loopback_provider

DEPLOYS = (
    "Deploys happen on Fridays, after the database upgrade. Announce them in #ops an hour "
    "before, and keep the rollback script at hand."
)
COFFEE = "The coffee machine on the third floor is descaled every Monday."


def passage(ordinal: int, text: str, *headings: str, page: int | None = None) -> ChunkText:
    return ChunkText(
        text=text, heading_path=headings, page=page, tokens=len(text.split()), ordinal=ordinal
    )


def document(kb: KnowledgeBase, title: str, *passages: ChunkText) -> Document:
    doc = Document.objects.create(
        knowledge_base=kb,
        title=title,
        source=Document.Source.PASTED,
        text="\n\n".join(p.text for p in passages),
        status=Document.Status.INDEXED,
    )
    replace_chunks(document=doc, chunks=list(passages))
    return doc


def make_agent(user: User, *knowledge_bases: KnowledgeBase, nick: str = "helper") -> Agent:
    provider = AccountLLM.objects.filter(account=user.account).first() or loopback_provider(
        user, "http://127.0.0.1:9/v1"
    )
    with switch(user):
        agent = Agent.objects.create(
            name=nick.title(), nick=nick, account_llm=provider, model="test-model"
        )
        agent.knowledge_bases.add(*knowledge_bases)
    return agent


def world(user: User, *, words: str = "") -> dict[str, Any]:
    """A "Handbook" (the agent's) with two documents, and a "Private" knowledge base the agent
    was not given, whose passage matches the same words."""
    with switch(user):
        handbook = KnowledgeBase.objects.create(name="Handbook")
        private = KnowledgeBase.objects.create(name="Private")
        releases = document(
            handbook,
            "Operations guide",
            passage(0, "Welcome to the operations guide.", "Operations"),
            passage(1, DEPLOYS + words, "Operations", "Releases", page=3),
        )
        office = document(handbook, "Office", passage(0, COFFEE, "Office"))
        secret = document(
            private, "Board minutes", passage(0, "Deploys on Fridays are to be abolished.")
        )
    agent = make_agent(user, handbook)
    return {
        "handbook": handbook,
        "private": private,
        "releases": releases,
        "office": office,
        "secret": secret,
        "agent": agent,
    }


def search(user: User, agent: Agent, arguments: Any, **tool_settings: Any) -> ToolResult:
    """Call knowledge_search as the runner does: inside the account, with its settings."""
    spec = TOOLS_BY_SLUG[KNOWLEDGE_TOOL]
    context = ToolContext(
        account=user.account,
        agent=agent,
        task=None,
        settings={**spec.default_settings(), **tool_settings},
    )
    with switch(user):
        return execute_tool(context=context, spec=spec, arguments=arguments)


def link(doc: Document, ordinal: int) -> str:
    return f"{settings.PUBLIC_URL}/k/{doc.pk}/{ordinal}"


# --- the tool ----------------------------------------------------------------------------------


def test_it_returns_the_passage_with_its_document_section_page_and_link(alice: User) -> None:
    w = world(alice)
    result = search(alice, w["agent"], '{"query": "when are deploys?"}')
    assert result.ok, result.content
    assert result.arguments == {"query": "when are deploys?"}
    text = result.content
    assert text.startswith("1 passage, best first.")
    assert "[1] “Operations guide” > Operations > Releases, page 3\n" in text
    assert f"Link: {link(w['releases'], 1)}\n{DEPLOYS}" in text
    # Not the knowledge base the agent was not given, nor passages that do not match.
    assert "abolished" not in text and "coffee" not in text
    # The link is short: an IRC line holds ~400 bytes.
    assert len(link(w["releases"], 1)) - len(settings.PUBLIC_URL) <= len("/k/123456/1234")


def test_passages_come_best_first_numbered_and_within_the_settings(alice: User) -> None:
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Handbook")
        doc = document(
            kb,
            "Deploy notes",
            passage(0, "A deploy. " + "Filler words about nothing in particular. " * 40),
            passage(1, "Deploy, deploy, deploy: the deploy checklist for every deploy."),
            passage(2, "One more deploy note."),
        )
    agent = make_agent(alice, kb)
    result = search(alice, agent, {"query": "deploy"}, max_passages=2, max_characters=300)
    assert result.ok
    blocks = result.content.split("\n\n")
    assert blocks[0].startswith("2 passages, best first.")
    assert [b.split(" ", 1)[0] for b in blocks[1:]] == ["[1]", "[2]"]
    assert f"Link: {settings.PUBLIC_URL}/k/{doc.pk}/1\n" in blocks[1]
    # The model may ask for fewer, never for more than the account allows.
    capped = search(alice, agent, {"query": "deploy", "limit": 20}, max_passages=1).content
    assert capped.count("Link: ") == 1
    one = search(alice, agent, {"query": "deploy", "limit": 1}, max_passages=5).content
    assert one.count("Link: ") == 1
    # A long passage is cut after its last whole sentence that fits, and says so.
    long = search(alice, agent, {"query": "filler"}, max_characters=300).content
    body = long.split(f"/k/{doc.pk}/0\n", 1)[1]
    assert body.endswith("particular. […]") and len(body) <= 300 + len(" […]")


def test_trim_passage() -> None:
    assert trim_passage("  short text \n", 100) == "short text"
    assert trim_passage("a\n\n\n\n\nb", 100) == "a\n\nb"
    # At a sentence when one ends late enough, else at a word, else where the limit falls.
    assert trim_passage("One two three. Four five six seven", 20) == "One two three. […]"
    assert trim_passage("One. Two three four five six seven", 20) == "One. Two three four […]"
    assert trim_passage("x" * 50, 10) == "x" * 10 + " […]"
    code = "def f():\n    return 1\n"
    assert trim_passage(code, 100) == code.strip()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{}", "Invalid arguments: 'query' is a required property"),
        ('{"query": ""}', "Invalid arguments at query: '' should be non-empty"),
        ('{"query": "x", "kb": 1}', "Additional properties are not allowed"),
        ('{"query": "x", "limit": 0}', "Invalid arguments at limit"),
        ('{"query": "' + "x" * 501 + '"}', "Invalid arguments at query"),
        ("{not json", "The arguments are not valid JSON"),
    ],
)
def test_bad_calls_are_error_results(alice: User, arguments: str, message: str) -> None:
    w = world(alice)
    result = search(alice, w["agent"], arguments)
    assert not result.ok
    assert message in result.content


def test_nothing_found_says_how_to_search_better(alice: User) -> None:
    w = world(alice)
    for query in ("zeppelin", "the and of", "!!!"):
        result = search(alice, w["agent"], {"query": query})
        assert result.ok
        assert result.content.startswith("No passage matches."), result.content


def test_an_agent_without_knowledge_bases_is_told_so(alice: User) -> None:
    world(alice)
    agent = make_agent(alice, nick="bare")
    result = search(alice, agent, {"query": "deploys"})
    assert not result.ok
    assert result.content == "This agent has no knowledge base to search."


def test_several_knowledge_bases_are_named(alice: User) -> None:
    w = world(alice)
    with switch(alice):
        w["agent"].knowledge_bases.add(w["private"])
    text = search(alice, w["agent"], {"query": "deploys fridays"}).content
    assert "(knowledge base Handbook)" in text and "(knowledge base Private)" in text


# --- isolation ---------------------------------------------------------------------------------


def test_two_accounts_with_identical_knowledge_bases_never_see_each_others_passages(
    alice: User, bob: User
) -> None:
    a = world(alice, words=" Alice's rollback script is in alicevault.")
    b = world(bob, words=" Bob's rollback script is in bobvault.")
    # Same names, same titles, same ids in their own schemas.
    assert a["handbook"].pk == b["handbook"].pk and a["releases"].pk == b["releases"].pk
    for user, agent, own, other in (
        (alice, a["agent"], "alicevault", "bobvault"),
        (bob, b["agent"], "bobvault", "alicevault"),
    ):
        for query in (other, "rollback script", "alicevault OR bobvault", "deploys fridays"):
            content = search(user, agent, {"query": query}).content
            assert other not in content, (user, query, content)
        assert own in search(user, agent, {"query": "rollback script"}).content
    # Alice's tool, called in Bob's schema (or in public), is refused before it reads anything.
    spec = TOOLS_BY_SLUG[KNOWLEDGE_TOOL]
    context = ToolContext(
        account=alice.account, agent=a["agent"], task=None, settings=spec.default_settings()
    )
    with switch(bob):
        refused = execute_tool(context=context, spec=spec, arguments={"query": "rollback"})
    assert not refused.ok and refused.content == "The tool knowledge_search is not available here."
    assert not execute_tool(context=context, spec=spec, arguments={"query": "rollback"}).ok


# --- how an agent gets it ----------------------------------------------------------------------


def test_an_agent_with_a_knowledge_base_has_the_tool_without_choosing_it(alice: User) -> None:
    w = world(alice)
    bare = make_agent(alice, nick="bare")
    account = alice.account
    tool = Tool.objects.get(slug=KNOWLEDGE_TOOL)
    with switch(alice):
        given = agent_tools(account=account, agent=w["agent"])
        assert [(spec.slug, conf) for spec, conf in given] == [
            (KNOWLEDGE_TOOL, {"max_passages": 5, "max_characters": 1500})
        ]
        assert agent_tools(account=account, agent=bare) == []
        # Chosen on an agent without a knowledge base (through the admin, say): still not given.
        bare.tools.add(tool)
        assert agent_tools(account=account, agent=bare) == []
    # The account's settings apply; its on/off switch does not (there is none on the page).
    configure_tool(account=account, tool=tool, enabled=False, settings={"max_passages": 3})
    with switch(alice):
        given = agent_tools(account=account, agent=w["agent"])
        assert given[0][1] == {"max_passages": 3, "max_characters": 1500}
        # The runner's one statement reads the same.
        for agent in (w["agent"], bare):
            task = Task.objects.create(agent=agent, input="when do we deploy?")
            start = queries.start(task_id=task.pk, account_id=account.pk, now=timezone.now())
            assert start is not None
            assert start.tools == agent_tools(account=account, agent=agent)


def test_the_system_prompt_asks_for_cited_passages_only_with_knowledge(alice: User) -> None:
    w = world(alice)
    with switch(alice):
        task = Task.objects.create(agent=w["agent"], input="when do we deploy?")
        with_kb = system_prompt(task, w["agent"], knowledge=True)
        without = system_prompt(task, w["agent"])
    assert "call knowledge_search first" in with_kb and "Cite each passage" in with_kb
    assert "knowledge_search" not in without


def test_the_agent_form_does_not_offer_the_knowledge_tool(alice: User) -> None:
    for tool in Tool.objects.all():
        configure_tool(account=alice.account, tool=tool, enabled=True, settings={})
    with switch(alice):
        form = AgentForm(account=alice.account)
        offered = {tool.slug for tool in form.fields["tools"].queryset}  # type: ignore[attr-defined]
    assert KNOWLEDGE_TOOL not in offered and "search_history" in offered
    assert "cites" in str(form.fields["knowledge_bases"].help_text)


def test_the_tools_page_shows_it_comes_with_knowledge_bases(alice_client: Client) -> None:
    page = alice_client.get(reverse("llms:tool_list")).content.decode()
    assert "With knowledge bases" in page and "Every agent given a knowledge base has it." in page
    edit = alice_client.get(reverse("llms:tool_edit", args=[KNOWLEDGE_TOOL])).content.decode()
    assert 'name="enabled"' not in edit and 'name="setting_max_passages"' in edit
    saved = alice_client.post(
        reverse("llms:tool_edit", args=[KNOWLEDGE_TOOL]),
        {"setting_max_passages": "7", "setting_max_characters": "800"},
    )
    assert saved.status_code == 302
    wrong = alice_client.post(
        reverse("llms:tool_edit", args=[KNOWLEDGE_TOOL]),
        {"setting_max_passages": "99", "setting_max_characters": "800"},
    )
    assert wrong.status_code == 400


# --- the short link ----------------------------------------------------------------------------


def test_the_short_link_opens_the_passage_for_its_account_only(
    alice: User, bob: User, alice_client: Client, bob_client: Client
) -> None:
    w = world(alice, words=" Alice's rollback script is in alicevault.")
    path = f"/k/{w['releases'].pk}/1"
    assert link(w["releases"], 1) == settings.PUBLIC_URL + path
    response = alice_client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/knowledge/documents/{w['releases'].pk}/#chunk-1"
    page = alice_client.get(response["Location"])
    assert page.status_code == 200 and "Operations guide" in page.content.decode()
    # Signed out: to the sign-in page. Another account: not found.
    anonymous = Client().get(path)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("accounts:sign_in"))
    assert bob_client.get(path).status_code == 404
    assert alice_client.get(f"/k/{w['releases'].pk + 1000}/1").status_code == 404
    # Bob has a document with the same id (ids are per account): the link opens his own, and
    # nothing of Alice's.
    world(bob, words=" Bob's rollback script is in bobvault.")
    followed = bob_client.get(path, follow=True)
    assert followed.status_code == 200
    assert "bobvault" in followed.content.decode()
    assert "Operations guide" in followed.content.decode()  # Bob's own guide, same title
    assert "alicevault" not in followed.content.decode()
