from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from llms.models import LLM, AccountLLM, AccountTool, Tool
from llms.tools import TOOLS


class ProviderInUseError(ValueError):
    def __init__(self, agent_names: list[str]) -> None:
        super().__init__(
            "used by agent" + ("s " if len(agent_names) > 1 else " ") + ", ".join(agent_names)
        )
        self.agent_names = agent_names


@transaction.atomic
def sync_tool_catalog() -> None:
    """Mirror the tools defined in code into the catalog; retired ones become unavailable."""
    slugs = []
    for spec in TOOLS:
        Tool.objects.update_or_create(
            slug=spec.slug,
            defaults={
                "name": spec.name,
                "description": spec.description,
                "parameters": spec.parameters,
                "is_available": True,
            },
        )
        slugs.append(spec.slug)
    Tool.objects.exclude(slug__in=slugs).update(is_available=False)


@transaction.atomic
def save_account_llm(
    *,
    account: Account,
    llm: LLM,
    api_key: str,
    enabled_models: list[str],
    default_model: str,
    instance: AccountLLM | None = None,
) -> AccountLLM:
    """Create or update a provider configuration. An empty api_key on update keeps the old one."""
    config = instance or AccountLLM(account=account)
    if config.account_id != account.pk:
        raise PermissionError("that provider configuration belongs to another account")
    config.llm = llm
    if api_key:
        config.api_key = api_key
        # A new key has not been rejected (yet): agents try it and may say so again.
        config.key_rejected_at = None
    config.enabled_models = enabled_models
    config.default_model = default_model
    config.save()
    return config


@transaction.atomic
def mark_key_rejected(*, account: Account, config: AccountLLM) -> bool:
    """Note that the provider answered 401 to this configuration's key. True when this is news
    (it was not marked yet): the caller says so once, not on every run until the key changes."""
    if config.account_id != account.pk:
        raise PermissionError("that provider configuration belongs to another account")
    marked = AccountLLM.objects.filter(pk=config.pk, key_rejected_at__isnull=True).update(
        key_rejected_at=timezone.now()
    )
    return bool(marked)


@transaction.atomic
def delete_account_llm(*, account: Account, config: AccountLLM) -> None:
    """Refuses while an agent of the account uses the provider: the agent would lose its LLM."""
    from agents.models import Agent  # account schema: the caller runs inside the account

    if config.account_id != account.pk:
        raise PermissionError("that provider configuration belongs to another account")
    users = list(Agent.objects.filter(account_llm_id=config.pk).values_list("name", flat=True))
    if users:
        raise ProviderInUseError(users)
    config.delete()


@transaction.atomic
def configure_tool(
    *, account: Account, tool: Tool, enabled: bool, settings: dict[str, Any]
) -> AccountTool:
    config, _ = AccountTool.objects.update_or_create(
        account=account, tool=tool, defaults={"enabled": enabled, "settings": settings}
    )
    return config
