"""Listeners of stored lines: `on_message_stored(fn)` registers `fn(account_id, message_ids)`.

The gateway never calls them itself: after a batch commits it enqueues one Celery task per
account of the batch (channels_app.tasks.message_stored) carrying the account and the batch's
new Message ids of that account, ascending; a worker runs the task in the account's schema and
calls every listener there, once per batch. Agents' triggers and link previews
(media.listeners) subscribe here.

The gateway enqueues the task only for a batch with a line that names an enabled agent of the
account, or with a web link when the account has link previews on
(gateway.manager.Gateway.hook_wanted): the listeners act on nothing else. A listener that
needs other lines must widen that filter.

Register listeners when Django starts (an AppConfig.ready or a module it imports), so that every
process knows them: the gateway enqueues nothing while no listener is registered in its own
process, and the worker calls the ones registered in its.
"""

import logging
import uuid
from collections.abc import Callable

logger = logging.getLogger(__name__)

MessagesListener = Callable[[uuid.UUID, list[int]], None]
_listeners: list[MessagesListener] = []


def on_message_stored(listener: MessagesListener) -> MessagesListener:
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def has_listeners() -> bool:
    return bool(_listeners)


def message_stored_on_commit(
    *, account_id: uuid.UUID, schema_name: str, message_ids: list[int]
) -> None:
    """Called once the lines are committed: hand them to the listeners through a Celery task
    in the account's schema. A broker failure is logged, not raised: the lines are stored."""
    if not _listeners or not message_ids:
        return
    from channels_app.tasks import message_stored

    try:
        # The schema named here, not switched to: the gateway's writer thread never leaves
        # the public schema for this.
        message_stored.apply_async(
            args=[str(account_id), message_ids], headers={"_schema_name": schema_name}
        )
    except Exception:
        logger.exception("could not enqueue the message hook for account %s", account_id)


def call_listeners(account_id: uuid.UUID, message_ids: list[int]) -> None:
    for listener in list(_listeners):
        try:
            listener(account_id, message_ids)
        except Exception:
            # One listener's failure must not cost the others the lines.
            logger.exception("message listener %r failed", listener)
