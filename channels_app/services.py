from django.db import transaction

from channels_app.models import Channel, Server
from core.forms import apply_secret_changes


@transaction.atomic
def save_server(*, server: Server, alt_nicks: list[str], secrets: dict[str, str]) -> Server:
    """Create or update a server; `secrets` holds only the secrets that change ("" clears)."""
    server.alt_nicks = alt_nicks
    apply_secret_changes(server, secrets)
    server.full_clean()
    server.save()
    return server


@transaction.atomic
def delete_server(*, server: Server) -> None:
    server.delete()


@transaction.atomic
def save_channel(*, channel: Channel, secrets: dict[str, str]) -> Channel:
    apply_secret_changes(channel, secrets)
    channel.full_clean()
    channel.save()
    return channel


@transaction.atomic
def delete_channel(*, channel: Channel) -> None:
    channel.delete()
