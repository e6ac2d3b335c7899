"""Link previews are fetched here, not in the message hook's task: a slow site must not hold up
the listeners of the next lines (agents' triggers)."""

from typing import Any

from media.services.previews import LineLinks, fetch_and_announce
from tenancy import current_account
from tenancy.tasks import account_task


@account_task(name="media.fetch_previews")
def fetch_previews(urls: list[str], lines: list[list[Any]]) -> int:
    """Fetch and keep the previews of `urls`, then tell the account's chats which of `lines`
    ([message id, channel id, [urls]]) have one. Returns how many lines were announced."""
    account = current_account()
    assert account is not None  # an account task never runs without one
    return fetch_and_announce(
        account_id=account.pk,
        urls=[str(url) for url in urls],
        lines=[LineLinks.from_task_arg(line) for line in lines],
    )
