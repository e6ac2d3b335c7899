"""Writes of notifications: marking them read (reading a channel clears its own, see
channels_app.services.chat.mark_read)."""

from django.db import transaction
from django.utils import timezone

from channels_app.models import Notification


@transaction.atomic
def mark_notification_read(*, notification: Notification) -> Notification:
    if notification.read_at is None:
        notification.read_at = timezone.now()
        # Only if still unread: a second tab marking it too keeps the first time.
        Notification.objects.filter(pk=notification.pk, read_at__isnull=True).update(
            read_at=notification.read_at
        )
    return notification


@transaction.atomic
def mark_all_notifications_read() -> int:
    return Notification.objects.filter(read_at__isnull=True).update(read_at=timezone.now())
