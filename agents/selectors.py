"""Reads of the agents app that views, the runner and the usage page share."""

from datetime import UTC, datetime

from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import Account
from agents.models import Agent, ModelCall


def month_start(now: datetime | None = None) -> datetime:
    """The start of the calendar month (UTC) that budgets count from."""
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def tokens_used_this_month(*, agent: Agent | None = None, now: datetime | None = None) -> int:
    """Tokens (input + output) the account's agents, or one agent, used since the month began.
    Runs in the account's schema: the schema is the scope."""
    calls = ModelCall.objects.filter(created_at__gte=month_start(now))
    if agent is not None:
        calls = calls.filter(agent=agent)
    total = calls.aggregate(total=Sum(F("input_tokens") + F("output_tokens")))["total"]
    return int(total or 0)


def account_budget(*, account: Account) -> int | None:
    """The account's monthly token budget: the operator's figure for it, else the deployment's
    default; None means no limit (a budget of 0)."""
    budget = account.monthly_token_budget
    if budget is None:
        budget = settings.AGENT_MONTHLY_TOKEN_BUDGET
    return budget or None


def enabled_agent_nicks() -> frozenset[str]:
    """The nicks (lower-cased) of the account's enabled agents: the chat marks them. Runs in
    the account's schema."""
    nicks = Agent.objects.filter(enabled=True).values_list("nick", flat=True)
    return frozenset(nick.lower() for nick in nicks)
