"""History retention: each account's old lines are pruned inside its own schema, in batches,
and only when the account asked for it. (That a task enqueued inside `switch` runs in that
schema on a real worker is tested in test_celery.py.)"""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from channels_app import tasks
from channels_app.models import Channel, Message, Notification, Server
from channels_app.services.history import delete_messages_before
from channels_app.services.settings import save_chat_settings
from channels_app.tasks import prune_all_accounts, prune_history
from config.celery import app
from tenancy import NoTenantError, switch
from tenancy.context import connection
from tests.factories import UserFactory


def lines(user: User, *ages_in_days: float) -> list[Message]:
    """One line per age, in a channel of the user's, each with a highlight notification."""
    now = timezone.now()
    with switch(user):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="me")
        channel = Channel.objects.create(server=server, name="#history")
        messages = [
            Message.objects.create(
                channel=channel,
                text=f"{age} days old",
                sender="carol",
                server_time=now - timedelta(days=age),
            )
            for age in ages_in_days
        ]
        for message in messages:
            Notification.objects.create(message=message, kind=Notification.Kind.HIGHLIGHT)
    return messages


def keep_for(user: User, days: int | None) -> None:
    save_chat_settings(account=user.account, highlight_words=[], history_retention_days=days)


def remaining(user: User) -> list[str]:
    with switch(user):
        return list(Message.objects.order_by("server_time").values_list("text", flat=True))


def test_prune_refuses_to_run_on_public(db: None) -> None:
    assert connection.schema_name == "public"
    with pytest.raises(NoTenantError):
        prune_history()
    with pytest.raises(NoTenantError):
        prune_history.delay()


def test_only_old_lines_of_that_account_go(alice: User, bob: User) -> None:
    lines(alice, 45, 31, 29, 0.01)
    lines(bob, 45, 31, 29, 0.01)
    keep_for(alice, 30)
    keep_for(bob, 30)
    with switch(alice):
        assert prune_history() == 2
        # Their notifications go with them; the others stay.
        assert Notification.objects.count() == 2
    assert remaining(alice) == ["29 days old", "0.01 days old"]
    assert remaining(bob) == ["45 days old", "31 days old", "29 days old", "0.01 days old"]
    with switch(alice):
        assert prune_history() == 0


def test_no_retention_keeps_everything(alice: User) -> None:
    lines(alice, 4000, 1)
    with switch(alice):
        assert prune_history() == 0
    keep_for(alice, None)
    with switch(alice):
        assert prune_history() == 0
    assert len(remaining(alice)) == 2


def test_deletes_in_batches(alice: User) -> None:
    lines(alice, 10, 9, 8, 7, 6, 5, 4, 0)
    with switch(alice), CaptureQueriesContext(connection) as queries:
        assert delete_messages_before(cutoff=timezone.now() - timedelta(days=1), batch_size=3) == 7
    deletes = [
        q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "channels_app_message"')
    ]
    assert len(deletes) == 3  # 3 + 3 + 1
    assert remaining(alice) == ["0 days old"]


@pytest.fixture
def eager_celery() -> Iterator[None]:
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False


def test_prune_all_accounts_prunes_each_in_its_own_schema(
    alice: User, bob: User, monkeypatch: pytest.MonkeyPatch, eager_celery: None
) -> None:
    carol = UserFactory(email="carol@example.org")
    lines(alice, 10, 1)
    lines(bob, 10, 1)
    lines(carol, 10, 1)
    keep_for(alice, 5)
    keep_for(bob, 20)
    # carol keeps everything: no task for her at all.
    schemas: list[str] = []
    real_delay = tasks.prune_history.delay

    def delay() -> object:
        schemas.append(connection.schema_name)
        return real_delay()

    monkeypatch.setattr(tasks.prune_history, "delay", delay)
    assert connection.schema_name == "public"
    assert prune_all_accounts() == 2
    assert sorted(schemas) == sorted([alice.account.schema_name, bob.account.schema_name])
    assert remaining(alice) == ["1 days old"]
    assert remaining(bob) == ["10 days old", "1 days old"]
    assert remaining(carol) == ["10 days old", "1 days old"]
    assert connection.schema_name == "public"


def test_prune_all_accounts_runs_on_public_only(alice: User) -> None:
    with switch(alice), pytest.raises(RuntimeError, match="public"):
        prune_all_accounts()


def test_beat_runs_it_hourly() -> None:
    entries = [
        entry
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
        if entry["task"] == "channels_app.prune_all_accounts"
    ]
    assert len(entries) == 1
    assert entries[0]["schedule"] == 3600
    assert "channels_app.prune_all_accounts" in app.tasks
