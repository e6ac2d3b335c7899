from django.db import transaction

from agents.forms import AgentForm
from agents.models import Agent


@transaction.atomic
def save_agent(*, form: AgentForm) -> Agent:
    """Save an agent with its channels, knowledge bases and tools (validated by the form
    against this account's own choices)."""
    agent: Agent = form.save()
    return agent


@transaction.atomic
def delete_agent(*, agent: Agent) -> None:
    agent.delete()
