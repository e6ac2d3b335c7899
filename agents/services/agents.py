from django.db import transaction

from accounts.models import Account
from agents.forms import AgentForm
from agents.models import Agent
from channels_app.events import ServersChanged, tell_gateway_on_commit


@transaction.atomic
def save_agent(*, account: Account, form: AgentForm) -> Agent:
    """Save an agent with its channels, knowledge bases and tools (validated by the form
    against this account's own choices). The gateway is told after the commit: the agent's
    own connection joins, parts, renames or quits within seconds."""
    agent: Agent = form.save()
    tell_gateway_on_commit(ServersChanged(account_id=str(account.pk)))
    return agent


@transaction.atomic
def delete_agent(*, account: Account, agent: Agent) -> None:
    agent.delete()
    # Its own connections QUIT.
    tell_gateway_on_commit(ServersChanged(account_id=str(account.pk)))
