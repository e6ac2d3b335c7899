from django.db import transaction

from channels_app.events import tell_gateway_on_commit
from channels_app.models import Channel, Server
from core.forms import apply_secret_changes
from tenancy import current_account


def _tell_gateway() -> None:
    """After commit, the gateway re-reads this account's servers and channels: it connects,
    reconnects, joins or parts within a second."""
    account = current_account()
    if account is not None:
        tell_gateway_on_commit("servers_changed", account.pk)


@transaction.atomic
def save_server(*, server: Server, alt_nicks: list[str], secrets: dict[str, str]) -> Server:
    """Create or update a server; `secrets` holds only the secrets that change ("" clears)."""
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
