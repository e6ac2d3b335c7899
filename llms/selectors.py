"""Every read of per-account LLM and tool configuration takes the account: these rows share the
public schema, so the account is the only thing keeping one customer's rows from another's."""

import functools

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import Account
from llms.models import LLM, AccountLLM, AccountTool, Tool


def account_llms(*, account: Account) -> QuerySet[AccountLLM]:
    return AccountLLM.objects.filter(account=account).select_related("llm")


def account_llm_or_404(*, account: Account, pk: object) -> AccountLLM:
    return get_object_or_404(account_llms(account=account), pk=pk)


def available_llms() -> QuerySet[LLM]:
    return LLM.objects.filter(is_active=True)


def account_tools(*, account: Account) -> QuerySet[AccountTool]:
    return AccountTool.objects.filter(account=account, tool__is_available=True).select_related(
        "tool"
    )


def enabled_tools(*, account: Account) -> QuerySet[Tool]:
    return Tool.objects.filter(
        is_available=True, account_configs__account=account, account_configs__enabled=True
    )


def tool_catalog() -> QuerySet[Tool]:
    return Tool.objects.filter(is_available=True)


def tool_config(*, account: Account, tool: Tool) -> AccountTool | None:
    return AccountTool.objects.filter(account=account, tool=tool).first()


@functools.cache
def known_timezones() -> frozenset[str]:
    """The IANA zone names this machine has. zoneinfo.available_timezones() walks the tz
    database's files on every call (~60 ms, most of the task list page's time); the set only
    changes with a tzdata upgrade, which restarts the processes anyway."""
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


def account_timezone(*, account: Account) -> str:
    """The account's time zone: the one set on its Current time tool (llms.tools), else UTC.
    Schedules and the time tools read it here, so one setting governs them all."""
    config = (
        AccountTool.objects.filter(account=account, tool__slug="current_time")
        .only("settings")
        .first()
    )
    name = str((config.settings or {}).get("timezone") or "UTC") if config else "UTC"
    # The JSON can be edited in the admin: never trust it.
    return name if name in known_timezones() else "UTC"
