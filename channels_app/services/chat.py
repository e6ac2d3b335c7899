"""Writes of the chat itself: what a person types into a buffer (carried out from the plan
channels_app.slash_commands makes) and how far they have read."""

import contextlib
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from channels_app import slash_commands
from channels_app.events import ReadEvent, clean_cid, publish_command, publish_event_on_commit
from channels_app.models import Channel, Notification
from channels_app.services.servers import delete_channel, save_channel
from channels_app.slash_commands import CommandError


@dataclass(frozen=True)
class Outcome:
    open_channel: Channel | None = None  # the buffer to show next
    closed: bool = False  # the current buffer is gone (or left)
    join: tuple[str, ...] = ()  # channels asked to join: the page opens the first one
    open_page: str = ""  # a page to show (/list)


@transaction.atomic
def mark_read(*, account_id: uuid.UUID | str, channel: Channel, up_to: int) -> bool:
    """The user has seen `channel` up to the line `up_to`: unread counts and the highlights
    there are cleared, and the account's other open tabs are told (a `read` event). The marker
    only moves forward; False when it did not move (nothing to tell)."""
    moved = (
        Channel.objects.filter(pk=channel.pk)
        .filter(Q(last_read_message_id__isnull=True) | Q(last_read_message_id__lt=up_to))
        .update(last_read_message_id=up_to)
    )
    cleared = Notification.objects.filter(
        message__channel=channel, message_id__lte=up_to, read_at__isnull=True
    ).update(read_at=timezone.now())
    if not (moved or cleared):
        return False
    publish_event_on_commit(account_id, ReadEvent(channel_id=channel.pk, up_to=up_to))
    return True


def open_query(*, account_id: uuid.UUID | str, channel: Channel, nick: str) -> Channel:
    """The conversation with `nick` on the channel's server, created if it is new."""
    existing = Channel.objects.filter(server_id=channel.server_id, name__iexact=nick).first()
    if existing is not None:
        return existing
    query = Channel(server_id=channel.server_id, kind=Channel.Kind.QUERY, name=nick, autojoin=False)
    try:
        return save_channel(account_id=account_id, channel=query, secrets={})
    except (IntegrityError, ValidationError):
        # Created meanwhile (the gateway stores a private message as it arrives).
        return Channel.objects.get(server_id=channel.server_id, name__iexact=nick)


def take_send_allowance(*, account_id: str, lines: int) -> None:
    """Count `lines` against the account's LIMIT_MESSAGES_PER_MINUTE, or raise CommandError and
    count nothing. One counter per account in Redis, for the minute from its first line
    (INCRBY is atomic and keeps the expiry, so two tabs cannot both slip past it)."""
    if not lines:
        return
    limit = settings.LIMIT_MESSAGES_PER_MINUTE
    key = f"sent-per-minute:{account_id}"
    cache.add(key, 0, timeout=60)
    try:
        total = cache.incr(key, lines)
    except ValueError:  # the minute ended between the two calls
        cache.add(key, 0, timeout=60)
        total = cache.incr(key, lines)
    if total > limit:
        with contextlib.suppress(ValueError):  # the minute may have ended meanwhile
            cache.decr(key, lines)  # refused lines are not sent, so they do not count
        raise CommandError(
            f"Not sent: this account may send {limit} lines a minute, and that would pass it. "
            "Wait a moment and send again."
        )


def send_input(
    *, account_id: uuid.UUID | str, channel: Channel, text: str, cid: str = ""
) -> Outcome:
    """Carry out what was typed into `channel`'s input. Raises CommandError, and sends and
    changes nothing, when it cannot be done; a Redis error when the gateway cannot be told.
    `cid` is the browser's id for this input: the gateway names it in a send_error event when
    a line of it is not sent or the server refuses it.

    Not one transaction: /query's buffer is created (and committed) before its first line goes
    to the gateway, as the gateway stores the echo of that line in it."""
    plan = slash_commands.parse(text, channel=channel, account_id=str(account_id))
    if plan.ask:
        handler = slash_commands.ask_handler()
        if handler is None:
            raise CommandError("Agents are not available here.")
        # The agent addresses its answer to the user's nick on that network.
        handler(channel=channel, text=plan.ask, requested_by=channel.server.nick)
        return Outcome()
    take_send_allowance(account_id=str(account_id), lines=len(plan.commands))
    opened: Channel | None = None
    if plan.open_query:
        opened = open_query(account_id=account_id, channel=channel, nick=plan.open_query)
    cid = clean_cid(cid)
    for command in plan.commands:
        publish_command(dataclasses.replace(command, cid=cid) if cid else command)
    if plan.close_buffer:
        delete_channel(account_id=account_id, channel=channel)
        return Outcome(closed=True)
    left = leave_channels(server_id=channel.server_id, names=plan.leave)
    if channel.pk in left:
        return Outcome(closed=True)
    return Outcome(open_channel=opened, join=tuple(plan.join), open_page=plan.open_page)


def leave_channels(*, server_id: int, names: Sequence[str]) -> set[int]:
    """The channels named are being left: off the sidebar and autojoin now, before the server
    confirms (the gateway stores the same when the PART comes back). The gateway is not told:
    the PART itself is on its way, and a changed autojoin would make it part a second time.
    Returns the ids of the channels changed."""
    if not names:
        return set()
    query = Q()
    for name in names:
        query |= Q(name__iexact=name)
    rows = Channel.objects.filter(query, server_id=server_id, kind=Channel.Kind.CHANNEL)
    ids = set(rows.values_list("pk", flat=True))
    Channel.objects.filter(pk__in=ids).update(autojoin=False)
    return ids
