"""Notifications (list, mark read, the dashboard card, the top bar's count) and the chat settings
that decide what highlights (validated, saved on the signed-in account only, told to the
gateway)."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, User
from channels_app.events import GATEWAY_COMMANDS, open_command, redis_client
from channels_app.forms import ChatSettingsForm
from channels_app.models import Channel, Message, Notification, Server
from channels_app.selectors.settings import (
    highlight_words,
    link_previews,
    retention_days,
    theme,
    time_format,
)
from channels_app.services.settings import save_chat_settings
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import PASSWORD

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def notify(
    channel: Channel, text: str, *, kind: str = Notification.Kind.HIGHLIGHT, minutes: int = 0
) -> Notification:
    message = Message.objects.create(
        channel=channel, text=text, sender="carol", server_time=T0 + timedelta(minutes=minutes)
    )
    return Notification.objects.create(message=message, kind=kind)


@pytest.fixture
def inbox(alice: User) -> dict[str, Any]:
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#python")
        query = Channel.objects.create(server=server, name="carol", kind=Channel.Kind.QUERY)
        old = notify(channel, "alice: \x02old\x02 news", minutes=1)
        old.read_at = timezone.now()
        old.save()
        first = notify(channel, "alice: \x0304,01look\x03 at this", minutes=2)
        private = notify(query, "psst alice", kind=Notification.Kind.PRIVATE, minutes=3)
    return {"channel": channel, "query": query, "old": old, "first": first, "private": private}


def test_list_shows_unread_first_with_the_line_in_context(
    alice_client: Client, inbox: dict[str, Any]
) -> None:
    response = alice_client.get(reverse("history:notifications"))
    assert response.status_code == 200
    unread = [item["notification"] for item in response.context["unread"]]
    assert unread == [inbox["private"], inbox["first"]]
    assert [item["notification"] for item in response.context["read"]] == [inbox["old"]]
    body = response.content.decode()
    assert "alice: look at this" in body  # mIRC colour codes stripped
    assert "Libera · #python" in body
    first = inbox["first"]
    assert f'href="/chat/{first.message.channel_id}/?around={first.message_id}"' in body
    assert body.index("psst alice") < body.index("look at this") < body.index("old news")


def test_mark_one_read(alice: User, alice_client: Client, inbox: dict[str, Any]) -> None:
    url = reverse("history:notification_read", args=[inbox["first"].pk])
    assert alice_client.get(url).status_code == 405
    response = alice_client.post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("history:notifications")
    with switch(alice):
        assert Notification.objects.get(pk=inbox["first"].pk).read_at is not None
        assert Notification.objects.get(pk=inbox["private"].pk).read_at is None


def test_mark_one_read_with_htmx_swaps_the_row(
    alice: User, alice_client: Client, inbox: dict[str, Any]
) -> None:
    response = alice_client.post(
        reverse("history:notification_read", args=[inbox["private"].pk]), HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert response["HX-Trigger"] == "notifications-changed"
    row = response.content.decode()
    assert row.strip().startswith(f'<li id="notification-{inbox["private"].pk}"')
    assert "Mark read" not in row
    # Marking it again is harmless and keeps the first time.
    with switch(alice):
        read_at = Notification.objects.get(pk=inbox["private"].pk).read_at
    alice_client.post(reverse("history:notification_read", args=[inbox["private"].pk]))
    with switch(alice):
        assert Notification.objects.get(pk=inbox["private"].pk).read_at == read_at


def test_mark_all_read(alice: User, alice_client: Client, inbox: dict[str, Any]) -> None:
    response = alice_client.post(reverse("history:notification_read_all"), follow=True)
    assert "Marked 2 notifications read." in response.content.decode()
    assert response.context["unread"] == []
    with switch(alice):
        assert not Notification.objects.filter(read_at__isnull=True).exists()
    assert alice_client.get(reverse("history:notification_read_all")).status_code == 405


def test_badge_counts_unread(alice_client: Client, inbox: dict[str, Any]) -> None:
    page = alice_client.get(reverse("dashboard")).content.decode()
    assert f'hx-get="{reverse("history:notification_badge")}"' in page
    assert ">2</span>" in alice_client.get(reverse("history:notification_badge")).content.decode()
    alice_client.post(reverse("history:notification_read_all"))
    assert alice_client.get(reverse("history:notification_badge")).content.decode().strip() == ""


def test_dashboard_lists_the_latest_unread(alice_client: Client, inbox: dict[str, Any]) -> None:
    response = alice_client.get(reverse("dashboard"))
    body = response.content.decode()
    assert "Unread notifications" in body
    assert "psst alice" in body
    assert "old news" not in body
    assert 'name="next" value="dashboard"' in body
    response = alice_client.post(
        reverse("history:notification_read", args=[inbox["first"].pk]), {"next": "dashboard"}
    )
    assert response["Location"] == reverse("dashboard")


def test_dashboard_without_notifications_has_no_card(alice_client: Client) -> None:
    assert "Unread notifications" not in alice_client.get(reverse("dashboard")).content.decode()


def test_script_in_a_notification_stays_inert(
    alice: User, alice_client: Client, inbox: dict[str, Any]
) -> None:
    with switch(alice):
        notify(inbox["channel"], "alice <script>alert(1)</script>", minutes=9)
    for url in [reverse("history:notifications"), reverse("dashboard")]:
        body = alice_client.get(url).content.decode()
        assert "<script>alert" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_another_account_gets_404_and_changes_nothing(
    alice: User, bob: User, bob_client: Client, inbox: dict[str, Any]
) -> None:
    # Bob's schema has notifications of its own, so the ids would exist if schemas leaked.
    with switch(bob):
        server = Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
        channel = Channel.objects.create(server=server, name="#bob")
        notify(channel, "bob: hi")
        assert not Notification.objects.filter(pk=inbox["private"].pk).exists()
    response = bob_client.post(reverse("history:notification_read", args=[inbox["private"].pk]))
    assert response.status_code == 404
    bob_client.post(reverse("history:notification_read_all"))
    with switch(alice):
        assert Notification.objects.filter(read_at__isnull=True).count() == 2
    listing = bob_client.get(reverse("history:notifications")).content.decode()
    assert "psst alice" not in listing


def test_pages_need_sign_in(client: Client, db: None) -> None:
    for url in [
        reverse("history:notifications"),
        reverse("history:notification_badge"),
        reverse("history:chat_settings"),
    ]:
        assert client.get(url).status_code == 302
    assert client.post(reverse("history:notification_read", args=[1])).status_code == 302


# --- chat settings -----------------------------------------------------------------------------


def test_settings_page_saves_words_and_retention(alice: User, alice_client: Client) -> None:
    Account.objects.filter(pk=alice.account.pk).update(settings={"theme": "dark"})
    url = reverse("history:chat_settings")
    assert alice_client.get(url).status_code == 200
    response = alice_client.post(
        url,
        {
            "highlight_words": "  deploy \n\nRelease  Manager\nDEPLOY\n",
            "history_retention_days": 30,
        },
    )
    assert response.status_code == 302
    account = Account.objects.get(pk=alice.account.pk)
    assert account.settings == {
        "theme": "dark",  # other keys are left alone
        "highlight_words": ["deploy", "Release Manager"],
        "history_retention_days": 30,
    }
    assert highlight_words(account) == ["deploy", "Release Manager"]
    assert retention_days(account) == 30
    form = alice_client.get(url).context["form"]
    assert form["highlight_words"].value() == "deploy\nRelease Manager"
    assert form["history_retention_days"].value() == 30
    # Blank keeps history forever.
    alice_client.post(url, {"highlight_words": "", "history_retention_days": ""})
    account.refresh_from_db()
    assert account.settings["history_retention_days"] is None
    assert retention_days(account) is None
    assert highlight_words(account) == []


def test_display_settings_are_saved_and_read_back(alice: User, alice_client: Client) -> None:
    url = reverse("history:chat_settings")
    account = Account.objects.get(pk=alice.account.pk)
    assert (time_format(account), theme(account), link_previews(account)) == ("24h", "auto", True)
    data = {"highlight_words": "", "history_retention_days": "", "time_format": "12h"}
    response = alice_client.post(url, {**data, "theme": "contrast"})  # previews unticked
    assert response.status_code == 302
    account.refresh_from_db()
    assert (time_format(account), theme(account), link_previews(account)) == (
        "12h",
        "contrast",
        False,
    )
    response = alice_client.post(url, {**data, "theme": "neon", "link_previews": "on"})
    assert response.status_code == 400
    assert "theme" in response.context["form"].errors
    account.refresh_from_db()
    assert theme(account) == "contrast" and link_previews(account) is False
    for junk in [{"time_format": "13h", "theme": 1, "link_previews": "yes"}, {}]:
        account.settings = junk
        assert (time_format(account), theme(account), link_previews(account)) == (
            "24h",
            "auto",
            True,
        )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"history_retention_days": "0"}, "history_retention_days"),
        ({"history_retention_days": "3651"}, "history_retention_days"),
        ({"history_retention_days": "-5"}, "history_retention_days"),
        ({"history_retention_days": "ten"}, "history_retention_days"),
        ({"highlight_words": "x" * 101}, "highlight_words"),
        ({"highlight_words": "\n".join(f"word{i}" for i in range(51))}, "highlight_words"),
        ({"highlight_words": "\x02bold\x02"}, "highlight_words"),
    ],
)
def test_settings_validation(
    alice: User, alice_client: Client, data: dict[str, str], field: str
) -> None:
    response = alice_client.post(reverse("history:chat_settings"), data)
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert 'role="alert"' in response.content.decode()
    assert Account.objects.get(pk=alice.account.pk).settings == {}


def test_settings_edge_values_are_accepted() -> None:
    for days in ["1", "3650"]:
        form = ChatSettingsForm({"highlight_words": "a", "history_retention_days": days})
        assert form.is_valid(), form.errors


def test_stored_junk_is_never_trusted(alice: User) -> None:
    account = alice.account
    for junk in [
        {"highlight_words": "deploy", "history_retention_days": "30"},
        {"highlight_words": [1, None], "history_retention_days": True},
        {"highlight_words": ["x" * 500], "history_retention_days": 0},
        {"history_retention_days": 99999},
    ]:
        account.settings = junk
        assert highlight_words(account) == []
        assert retention_days(account) is None


def test_only_the_signed_in_accounts_row_changes(
    alice: User, bob: User, alice_client: Client
) -> None:
    alice_client.post(
        reverse("history:chat_settings"),
        {"highlight_words": "deploy", "history_retention_days": "7"},
    )
    assert Account.objects.get(pk=bob.account.pk).settings == {}
    assert retention_days(Account.objects.get(pk=alice.account.pk)) == 7


def test_only_account_admins_change_settings(alice: User) -> None:
    member = User(account=alice.account, email="member@example.org", is_account_admin=False)
    member.set_password(PASSWORD)
    member.save()
    client = signed_in_client(member)
    response = client.get(reverse("history:chat_settings"))
    assert response.status_code == 200
    assert "Only the account's admins" in response.content.decode()
    response = client.post(reverse("history:chat_settings"), {"history_retention_days": "1"})
    assert response.status_code == 403
    assert Account.objects.get(pk=alice.account.pk).settings == {}


def test_saving_tells_the_gateway(alice: User, django_capture_on_commit_callbacks: Any) -> None:
    pubsub = redis_client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(GATEWAY_COMMANDS)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            save_chat_settings(
                account=alice.account, highlight_words=["deploy"], history_retention_days=None
            )
        expected = {"op": "settings_changed", "account_id": str(alice.account.pk)}
        deadline = time.monotonic() + 5
        received = None
        while time.monotonic() < deadline and received != expected:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                received = open_command(message["data"])
        assert received == expected
    finally:
        pubsub.close()


def test_list_queries_do_not_grow_with_notifications(
    alice: User, alice_client: Client, inbox: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    with switch(alice):
        for i in range(30):
            notify(inbox["channel"], f"alice: line {i}", minutes=10 + i)
    with django_assert_max_num_queries(12):
        response = alice_client.get(reverse("history:notifications"))
    assert len(response.context["unread"]) == 32
