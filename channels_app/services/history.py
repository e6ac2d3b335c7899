"""Writes of history itself: retention deletes what is older than an account keeps (called
hourly by channels_app.tasks.prune_history)."""

from datetime import datetime

from django.db import transaction

from channels_app.models import Message

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
