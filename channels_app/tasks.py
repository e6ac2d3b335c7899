"""History retention: every hour, each account that keeps history for a limited time loses the
lines older than that.

`prune_all_accounts` runs on public (Celery beat, CELERY_BEAT_SCHEDULE) and enqueues one
`prune_history` per account, from inside that account's schema so the task carries it.

`message_stored` calls the message hook's listeners for a batch of one account's new lines.
"""

import logging
import uuid
from datetime import timedelta

from django.utils import timezone

from accounts.models import Account
from channels_app import hooks
from channels_app.selectors.settings import RETENTION_DAYS_KEY, retention_days
from channels_app.services.history import delete_messages_before
from config.celery import app
from tenancy import current_account, switch
from tenancy.context import is_public
from tenancy.tasks import account_task

logger = logging.getLogger(__name__)


@account_task(name="channels_app.prune_history")
def prune_history() -> int:
    """Delete the lines older than the account's retention; return how many."""
    account = current_account()
    assert account is not None  # an account task never runs without one
    # Fresh from the database: the worker may hold the Account from an earlier task.
    account = Account.objects.only("id", "settings").get(pk=account.pk)
    days = retention_days(account)
    if days is None:
        return 0
    deleted = delete_messages_before(cutoff=timezone.now() - timedelta(days=days))
    if deleted:
        logger.info("pruned %d lines older than %d days from account %s", deleted, days, account.pk)
    return deleted


@app.task(name="channels_app.prune_all_accounts")
def prune_all_accounts() -> int:
    """Enqueue prune_history for every account with a retention set; return how many."""
    if not is_public():
        raise RuntimeError("prune_all_accounts runs on the public schema, over every account")
    enqueued = 0
    accounts = Account.objects.filter(settings__has_key=RETENTION_DAYS_KEY).only(
        "id", "name", "schema_name", "settings"
    )
    for account in accounts.iterator():
        if retention_days(account) is None:
            continue
        with switch(account):
            prune_history.delay()
        enqueued += 1
    return enqueued


@account_task(name="channels_app.message_stored")
def message_stored(account_id: str, message_ids: list[int]) -> None:
    """The gateway stored these lines of the account (channels_app.hooks): tell the listeners."""
    hooks.call_listeners(uuid.UUID(account_id), message_ids)
