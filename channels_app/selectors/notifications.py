"""The account's notifications (highlights and private messages), with their lines."""

from typing import Any

from django.db.models import QuerySet

from channels_app.models import Notification
from channels_app.selectors.search import line_url, strip_formatting


def with_lines() -> QuerySet[Notification]:
    # only(): the channel key and server passwords would be decrypted for nothing.
    return Notification.objects.select_related("message__channel__server").only(
        "id",
        "kind",
        "read_at",
        "created_at",
        "message__id",
        "message__channel_id",
        "message__kind",
        "message__sender",
        "message__text",
        "message__server_time",
        "message__channel__name",
        "message__channel__server__name",
    )


def unread_notifications() -> QuerySet[Notification]:
    """The active account's unread notifications, newest first, with their line and buffer."""
    return with_lines().filter(read_at__isnull=True).order_by("-created_at", "-id")


def read_notifications() -> QuerySet[Notification]:
    return with_lines().filter(read_at__isnull=False).order_by("-created_at", "-id")


def notification_context(notification: Notification) -> dict[str, Any]:
    """What a row shows: the line as plain text (the template escapes it) and where it leads."""
    message = notification.message
    return {
        "notification": notification,
        "text": strip_formatting(message.text),
        "url": line_url(message.channel_id, message.pk),
    }


def unread_count() -> int:
    return Notification.objects.filter(read_at__isnull=True).count()
