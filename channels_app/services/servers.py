"""Writes to an account's IRC servers and channels (the buffers). Each tells the gateway after
commit, so it connects, joins or parts within a second."""

import json
import uuid

from django.db import transaction

from channels_app import events
from channels_app.events import RawCommand, ServersChanged, tell_gateway_on_commit
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
def connect_server(
    *,
    account_id: uuid.UUID | str,
    server: Server,
    alt_nicks: list[str],
    secrets: dict[str, str],
    channels: list[str],
) -> Server:
    """Add a server with the channels to join, in one transaction: the gateway, told after
    commit, reads them together, connects and joins them in one go."""
    server = save_server(account_id=account_id, server=server, alt_nicks=alt_nicks, secrets=secrets)
    check_limit(
        used=0,
        adding=len(channels),
        setting="LIMIT_CHANNELS_PER_SERVER",
        what="channels and conversations per server",
    )
    rows = [
        Channel(server=server, kind=Channel.Kind.CHANNEL, name=name, autojoin=True)
        for name in channels
    ]
    for row in rows:
        row.full_clean()
    Channel.objects.bulk_create(rows)
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


def request_channel_list(*, account_id: uuid.UUID | str, server: Server) -> None:
    """Ask the gateway for the network's channel list (LIST). The page shows "receiving" at
    once: the key is set here, and replaced by the gateway's progress and then the list
    (gateway/lists.py); when the server is not connected it expires in two minutes."""
    from channels_app.services.chat import take_send_allowance
    from gateway.lists import channel_list_key

    take_send_allowance(account_id=str(account_id), lines=1)
    client = events.redis_client()
    client.set(
        channel_list_key(account_id, server.pk),
        json.dumps({"done": False, "seen": 0, "channels": []}),
        ex=120,
    )
    events.publish_command(
        RawCommand(account_id=str(account_id), server_id=server.pk, line="LIST"), client=client
    )


@transaction.atomic
def join_listed_channel(*, account_id: uuid.UUID | str, server: Server, name: str) -> Channel:
    """A Join button of the /list page: the channel is added to the server's list to join
    (or set to join again, when it is there already); the gateway joins it after commit."""
    channel = Channel.objects.filter(server=server, name__iexact=name).first()
    if channel is None:
        channel = Channel(server=server, kind=Channel.Kind.CHANNEL, name=name, autojoin=True)
    elif channel.kind == Channel.Kind.CHANNEL:
        channel.autojoin = True
    return save_channel(account_id=account_id, channel=channel, secrets={})
