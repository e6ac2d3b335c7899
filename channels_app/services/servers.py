"""Writes to an account's IRC servers and channels (the buffers). Each tells the gateway after
commit, so it connects, joins or parts within a second."""

import uuid

from django.db import transaction

from channels_app.events import ServersChanged, tell_gateway_on_commit
from channels_app.models import Channel, Server
from core.forms import apply_secret_changes
from core.limits import check_limit, lock_account


def _tell_gateway(account_id: uuid.UUID | str) -> None:
    """After commit, the gateway re-reads this account's servers and channels: it connects,
    reconnects, joins or parts within a second."""
    tell_gateway_on_commit(ServersChanged(account_id=str(account_id)))


@transaction.atomic
def save_server(
    *, account_id: uuid.UUID | str, server: Server, alt_nicks: list[str], secrets: dict[str, str]
) -> Server:
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
    _tell_gateway(account_id)
    return server


@transaction.atomic
def delete_server(*, account_id: uuid.UUID | str, server: Server) -> None:
    # Lock the rows first: the gateway may be inserting channels or lines for this server right
    # now. Its foreign-key checks (deferred to its commit) then wait for this transaction and
    # fail cleanly on the gateway's side, instead of committing in between and failing this
    # delete at its own commit.
    Server.objects.select_for_update().filter(pk=server.pk).first()
    list(Channel.objects.select_for_update().filter(server_id=server.pk).values_list("pk"))
    server.delete()
    _tell_gateway(account_id)


@transaction.atomic
def save_channel(
    *, account_id: uuid.UUID | str, channel: Channel, secrets: dict[str, str]
) -> Channel:
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
    _tell_gateway(account_id)
    return channel


@transaction.atomic
def delete_channel(*, account_id: uuid.UUID | str, channel: Channel) -> None:
    Channel.objects.select_for_update().filter(pk=channel.pk).first()  # see delete_server
    channel.delete()
    _tell_gateway(account_id)
