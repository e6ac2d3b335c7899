import uuid

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from channels_app.events import (
    ReadEvent,
    ServersChanged,
    publish_event_on_commit,
    tell_gateway_on_commit,
)
from channels_app.models import Channel, Notification, Server
from core.forms import apply_secret_changes
from core.limits import check_limit, lock_account
from tenancy import current_account


def _tell_gateway() -> None:
    """After commit, the gateway re-reads this account's servers and channels: it connects,
    reconnects, joins or parts within a second."""
    account = current_account()
    if account is not None:
        tell_gateway_on_commit(ServersChanged(account_id=str(account.pk)))


@transaction.atomic
def save_server(*, server: Server, alt_nicks: list[str], secrets: dict[str, str]) -> Server:
    """Create or update a server; `secrets` holds only the secrets that change ("" clears)."""
    if server.pk is None:
        lock_account()
        check_limit(
            used=Server.objects.count(),
            setting="LIMIT_SERVERS_PER_ACCOUNT",
            what="IRC servers",
        )
    server.alt_nicks = alt_nicks
    apply_secret_changes(server, secrets)
    server.full_clean()
    server.save()
    _tell_gateway()
    return server


@transaction.atomic
def delete_server(*, server: Server) -> None:
    # Lock the rows first: the gateway may be inserting channels or lines for this server right
    # now. Its foreign-key checks (deferred to its commit) then wait for this transaction and
    # fail cleanly on the gateway's side, instead of committing in between and failing this
    # delete at its own commit.
    Server.objects.select_for_update().filter(pk=server.pk).first()
    list(Channel.objects.select_for_update().filter(server_id=server.pk).values_list("pk"))
    server.delete()
    _tell_gateway()


@transaction.atomic
def save_channel(*, channel: Channel, secrets: dict[str, str]) -> Channel:
    if channel.pk is None:
        # Locking the server counts two channels added to it at once one after the other.
        Server.objects.select_for_update().filter(pk=channel.server_id).values_list("pk").first()
        check_limit(
            used=Channel.objects.filter(server_id=channel.server_id)
            .exclude(kind=Channel.Kind.SERVER)
            .count(),
            setting="LIMIT_CHANNELS_PER_SERVER",
            what="channels and conversations per server",
        )
    apply_secret_changes(channel, secrets)
    channel.full_clean()
    channel.save()
    _tell_gateway()
    return channel


@transaction.atomic
def delete_channel(*, channel: Channel) -> None:
    Channel.objects.select_for_update().filter(pk=channel.pk).first()  # see delete_server
    channel.delete()
    _tell_gateway()


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
