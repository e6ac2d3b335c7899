"""History retention: every hour, each account that keeps history for a limited time loses the
lines older than that.

`prune_all_accounts` runs on public (Celery beat, CELERY_BEAT_SCHEDULE) and enqueues one
`prune_history` per account, from inside that account's schema so the task carries it.

`message_stored` calls the message hook's listeners for a batch of one account's new lines.
"""

import logging
import uuid
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from channels_app import hooks
from channels_app.account_settings import RETENTION_DAYS_KEY, retention_days
from channels_app.models import Message
from config.celery import app
from tenancy import current_account, switch
from tenancy.context import is_public
from tenancy.tasks import account_task

logger = logging.getLogger(__name__)

# Lines deleted per statement: each batch is its own short transaction, so the gateway's inserts
# and the readers never wait long behind a prune of a year of history.
PRUNE_BATCH_SIZE = 10_000


def delete_messages_before(*, cutoff: datetime, batch_size: int = PRUNE_BATCH_SIZE) -> int:
    """Delete the active account's lines stored with a server time before `cutoff`, oldest
    first, in batches; return how many went. Their notifications go with them."""
    deleted = 0
    while True:
        # The oldest first, through the server_time index; ids, so the DELETE is by primary key.
        ids = list(
            Message.objects.filter(server_time__lt=cutoff)
            .order_by("server_time")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        with transaction.atomic():
            # The ORM's delete also removes rows that point at these lines (notifications);
            # nothing has a signal on Message, so it stays one DELETE per table.
            _, per_model = Message.objects.filter(id__in=ids).delete()
        deleted += per_model.get(Message._meta.label, 0)
        if len(ids) < batch_size:
            return deleted


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
