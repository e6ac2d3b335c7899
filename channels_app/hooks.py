"""Listeners called after a line is stored: `on_message_stored(fn)` registers
`fn(account_id, message_id)`. The gateway calls them after its batch commits, outside any
transaction, inside no schema; a listener that needs the account's data uses tenancy.switch.
Agents subscribe here."""

import logging
import uuid
from collections.abc import Callable

logger = logging.getLogger(__name__)

MessageListener = Callable[[uuid.UUID, int], None]
_listeners: list[MessageListener] = []


def on_message_stored(listener: MessageListener) -> MessageListener:
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def notify_message_stored(account_id: uuid.UUID, message_ids: list[int]) -> None:
    for listener in list(_listeners):
        for message_id in message_ids:
            try:
                listener(account_id, message_id)
            except Exception:
                # One listener's failure must not cost the others (or the gateway) the line.
                logger.exception("message listener %r failed", listener)
