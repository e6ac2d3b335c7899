from datetime import UTC, datetime, timedelta
from typing import Any

from accounts.models import User
from agents.models import Agent, Task
from channels_app.models import Channel, Message, Server
from knowledge.models import Document, KnowledgeBase
from llms.models import LLM, AccountLLM
from llms.services import save_account_llm
from tenancy import switch


def openai() -> LLM:
    return LLM.objects.get(name="OpenAI")


def make_provider(user: User, **overrides: Any) -> AccountLLM:
    fields: dict[str, Any] = {
        "llm": openai(),
        "api_key": "sk-test-0123456789",
        "enabled_models": ["gpt-4o-mini", "gpt-4o"],
        "default_model": "gpt-4o-mini",
    }
    fields.update(overrides)
    return save_account_llm(account=user.account, **fields)


def populate(user: User) -> dict[str, Any]:
    """One of everything an account owns, for isolation tests."""
    provider = make_provider(user)
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#palaver")
        kb = KnowledgeBase.objects.create(name="Handbook")
        document = Document.objects.create(
            knowledge_base=kb, title="Rules", source=Document.Source.PASTED, text="Be kind."
        )
        agent = Agent.objects.create(
            name="Helper", nick="helperbot", account_llm=provider, model="gpt-4o-mini"
        )
        agent.channels.add(channel)
        agent.knowledge_bases.add(kb)
        task = Task.objects.create(agent=agent, input="What is new?", channel=channel)
    return {
        "provider": provider,
        "server": server,
        "channel": channel,
        "kb": kb,
        "document": document,
        "agent": agent,
        "task": task,
    }


def loopback_provider(
    user: User, base_url: str, *, kind: str = "openai", **overrides: Any
) -> AccountLLM:
    """A provider of the catalog pointing at a loopback server (tests.llm_servers), configured
    for the user's account."""
    llm, _ = LLM.objects.update_or_create(
        name=f"Loopback {kind}", defaults={"kind": kind, "base_url": base_url}
    )
    fields: dict[str, Any] = {
        "llm": llm,
        "api_key": f"sk-loopback-{kind}-secret-4242",
        "enabled_models": ["test-model"],
        "default_model": "test-model",
    }
    fields.update(overrides)
    return save_account_llm(account=user.account, **fields)


# Lines said in a channel at known times: T0 plus `minutes`.
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def say(
    channel: Channel,
    text: str,
    *,
    sender: str = "carol",
    minutes: int = 0,
    kind: str = Message.Kind.MESSAGE,
) -> Message:
    return Message.objects.create(
        channel=channel,
        text=text,
        sender=sender,
        kind=kind,
        server_time=T0 + timedelta(minutes=minutes),
    )
