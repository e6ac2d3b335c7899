"""After a restore the gateway connects the account again, as before, and stores its lines in
the restored schema: a real gateway (tests.gateway_support) and a real IRC server."""

import io
from collections.abc import Callable

import pytest

from accounts.models import User
from channels_app import events
from channels_app.models import Server
from lifecycle.backup import write_backup
from lifecycle.restore import restore_backup
from tenancy import switch
from tenancy.services import purge_account
from tests.factories import UserFactory
from tests.gateway_support import messages, wait_until
from tests.ircd import IrcBot, IrcServer, unique_channel
from tests.test_gateway import add_server


@pytest.fixture
def alice(clean_schemas: None) -> User:
    return UserFactory(email="alice@example.org")


def test_a_restored_account_connects_as_before(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    carol.say(channel, "before the backup")
    wait_until(lambda: messages(alice, text="before the backup"), what="the first line")

    archive = io.BytesIO()
    write_backup(account=alice.account, output=archive)
    account_id = alice.account.pk
    purge_account(account=alice.account)
    # The deletion's own notice to the gateway is issue 12's deletion work: say it here.
    events.publish_command(events.ServersChanged(account_id=str(account_id)))
    carol.wait_for(r":alice_p!\S+ QUIT", timeout=15)
    wait_until(lambda: gateway.gateway is not None and not gateway.gateway.connections, 15)

    restored = restore_backup(source=io.BytesIO(archive.getvalue()))
    assert restored.pk == account_id
    # Told on commit: the gateway connects and joins again, and stores what is said there.
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    carol.say(channel, "after the restore")
    person = User.objects.get(email="alice@example.org")
    stored = wait_until(lambda: messages(person, text="after the restore"), what="the line")
    assert stored[0].channel.name == channel
    assert [m.text for m in messages(person, text__endswith="the backup")] == ["before the backup"]
    with switch(restored):
        assert Server.objects.get().pk == server_id
