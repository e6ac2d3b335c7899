"""Deleting an account (issue 12, item 5): asked for on the account page, it disconnects the
account at once (the IRC server sees the QUIT, sessions end, scheduled tasks leave the index)
and schedules the purge; during the grace period the users see one page, where an admin can
cancel (servers reconnect, tasks are scheduled again). Against the real PostgreSQL, Redis,
InspIRCd on loopback and the gateway in a thread."""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, Session, User
from agents.models import Schedule
from agents.services.schedules import pause_schedule
from channels_app.models import Server
from scheduling.models import ScheduleEntry
from tenancy import switch
from tenancy.services import (
    AccountDeletionError,
    cancel_account_deletion,
    request_account_deletion,
)
from tests.conftest import signed_in_client
from tests.factories import PASSWORD, UserFactory
from tests.gateway_support import wait_until
from tests.ircd import IrcBot, IrcServer, unique_channel
from tests.test_agent_schedules import World, make_world, schedule
from tests.test_gateway import add_server
from tests.test_get_is_safe import WRITE

ACCOUNT = reverse("accounts:account")
DELETE = reverse("accounts:account_delete")
PENDING = reverse("accounts:deletion_pending")
CANCEL = reverse("accounts:deletion_cancel")


def member_of(account: Account, email: str, *, admin: bool = False) -> User:
    """Another person of the same account (sign-up makes only the first, an admin)."""
    user = User(account=account, email=email, is_account_admin=admin)
    user.set_password(PASSWORD)
    user.save()
    return user


def delete_form(account: Account, **overrides: str) -> dict[str, str]:
    return {"account_name": account.name, "password": PASSWORD, **overrides}


def offline_world(user: User, nick: str = "helper") -> World:
    """An agent with a schedule's world, its server (a public network) never connected to."""
    world = make_world(user, nick=nick)
    with switch(user):
        Server.objects.filter(pk=world.server.pk).update(autoconnect=False)
    return world


def entries(account: Account) -> list[int]:
    return sorted(
        ScheduleEntry.objects.filter(account=account).values_list("schedule_id", flat=True)
    )


# --- the whole path, with the gateway on a real IRC server -------------------------------------


@pytest.fixture
def alice_live(clean_schemas: None) -> User:
    return UserFactory(email="alice@example.org", account_name="Alice's place")


@pytest.fixture
def bob_live(clean_schemas: None) -> User:
    return UserFactory(email="bob@example.org", account_name="Bob's place")


def test_deleting_disconnects_signs_out_and_unschedules_then_cancel_restores(
    alice_live: User,
    bob_live: User,
    inspircd: IrcServer,
    irc_bot: Callable[..., IrcBot],
    run_gateway: Callable,
) -> None:
    alice, bob = alice_live, bob_live
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    bob_server = add_server(bob, inspircd, channels=(channel,), nick="bob_p")
    world = offline_world(alice)
    bob_world = offline_world(bob, nick="bobhelper")
    with switch(alice):
        repeating = schedule(world)
    with switch(bob):
        bob_schedule = schedule(bob_world)
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    carol.wait_for(r":bob_p!\S+ JOIN", timeout=15, since=0)
    browser, other_browser = signed_in_client(alice), signed_in_client(alice)
    bob_browser = signed_in_client(bob)
    assert Session.objects.filter(user=alice).count() == 2
    assert entries(alice.account) == [repeating.pk]

    mark = carol.mark()
    response = browser.post(DELETE, delete_form(alice.account))
    assert response.status_code == 302 and response["Location"] == reverse("accounts:sign_in")

    # At once: the IRC server sees the QUIT (the gateway heard through its command channel).
    carol.wait_for(r":alice_p!\S+ QUIT", timeout=5, since=mark)
    wait_until(lambda: gateway.connection(alice, server_id) is None, 5, "alice's connection gone")
    account = Account.objects.get(pk=alice.account_id)
    assert account.pending_deletion and account.deletion_requested_by == alice.email
    assert abs(account.purge_after - timezone.now() - timedelta(days=30)) < timedelta(minutes=1)
    # Every session of the account's users is gone; the other browser is signed out.
    assert not Session.objects.filter(user__account=account).exists()
    assert other_browser.get(reverse("dashboard")).status_code == 302
    # Its scheduled tasks are out of the index (the schedule itself stays, for a cancel).
    assert entries(account) == []
    with switch(account):
        assert Schedule.objects.get(pk=repeating.pk).state == Schedule.State.ACTIVE
    # Bob's account is untouched: connected, signed in, scheduled.
    assert gateway.connection(bob, bob_server) is not None
    assert bob_browser.get(reverse("dashboard")).status_code == 200
    assert entries(bob.account) == [bob_schedule.pk]
    # A resync (what the gateway does every minute) does not bring the account back.
    gateway.call(gateway.gateway.sync_all())
    assert gateway.connection(alice, server_id) is None

    # Alice signs in during the grace period: the page, and nothing else.
    browser = signed_in_client(alice)
    response = browser.get(reverse("dashboard"))
    assert response.status_code == 302 and response["Location"] == PENDING
    page = browser.get(PENDING)
    assert page.status_code == 200
    text = page.content.decode()
    assert "is scheduled for deletion" in text and "Cancel deletion" in text
    assert f"{account.purge_after:%-d %B %Y}" in text

    mark = carol.mark()
    response = browser.post(CANCEL)
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    assert browser.get(reverse("dashboard")).status_code == 200
    # The servers reconnect (autoconnect as before) and the tasks are scheduled again.
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15, since=mark)
    assert not Account.objects.get(pk=account.pk).pending_deletion
    assert entries(account) == [repeating.pk]


# --- the pages ---------------------------------------------------------------------------------


def test_the_account_page_offers_deletion_to_admins_only(alice: User, db: None) -> None:
    page = signed_in_client(alice).get(ACCOUNT)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Delete account" in text and 'name="account_name"' in text and alice.account.name in text

    member = member_of(alice.account, "member@example.org")
    client = signed_in_client(member)
    text = client.get(ACCOUNT).content.decode()
    assert 'name="account_name"' not in text and "Only an admin of the account" in text
    response = client.post(DELETE, delete_form(alice.account))
    assert response.status_code == 403
    assert not Account.objects.get(pk=alice.account_id).pending_deletion
    assert Session.objects.filter(user=member).exists()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"account_name": "alice's place"}, "account_name", "That is not the account's name"),
        ({"account_name": ""}, "account_name", "This field is required"),
        ({"password": "wrong password"}, "password", "That is not your password"),
        ({"password": ""}, "password", "This field is required"),
    ],
)
def test_a_wrong_name_or_password_is_refused_with_the_field_error(
    alice: User, db: None, overrides: dict[str, str], field: str, message: str
) -> None:
    client = signed_in_client(alice)
    response = client.post(DELETE, delete_form(alice.account, **overrides))
    assert response.status_code == 400
    form = response.context["delete_form"]
    assert message in " ".join(form.errors[field])
    assert f'id="id_{field}_error"' in response.content.decode()
    assert 'value="wrong password"' not in response.content.decode()  # never rendered back
    assert not Account.objects.get(pk=alice.account_id).pending_deletion
    assert client.get(reverse("dashboard")).status_code == 200  # still signed in


def test_password_guesses_through_the_form_are_throttled(
    alice: User, db: None, settings: Any
) -> None:
    settings.SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT = 2
    client = signed_in_client(alice)
    for _ in range(2):
        bad = client.post(DELETE, delete_form(alice.account, password="guess"))
        assert bad.status_code == 400
    refused = client.post(DELETE, delete_form(alice.account))  # even the right one, for now
    assert refused.status_code == 429 and "Too many attempts" in refused.content.decode()
    assert not Account.objects.get(pk=alice.account_id).pending_deletion


def test_during_the_grace_period_every_page_leads_to_the_deletion_page(
    alice: User, bob: User, db: None
) -> None:
    urls = [
        reverse("dashboard"),
        reverse("channels:server_list"),
        reverse("chat:index"),
        reverse("agents:agent_list"),
        reverse("knowledge:kb_list"),
        reverse("llms:provider_list"),
        reverse("history:search"),
        reverse("history:chat_settings"),
        reverse("accounts:session_list"),
        ACCOUNT,
        "/no/such/page/",
    ]
    member = member_of(alice.account, "member@example.org")
    request_account_deletion(account=alice.account, actor=alice)
    client, member_client = signed_in_client(alice), signed_in_client(member)
    for url in urls:
        response = client.get(url)
        assert (response.status_code, response["Location"]) == (302, PENDING), url
    posted = client.post(reverse("channels:server_list"), {"name": "x"})
    assert (posted.status_code, posted["Location"]) == (303, PENDING)
    htmx = client.get(reverse("history:notification_badge"), headers={"HX-Request": "true"})
    assert htmx.status_code == 204 and htmx["HX-Redirect"] == PENDING
    # The page itself polls nothing into a loop: from it, no redirect.
    quiet = client.get(
        reverse("history:notification_badge"),
        headers={"HX-Request": "true", "HX-Current-URL": "http://testserver" + PENDING},
    )
    assert quiet.status_code == 204 and "HX-Redirect" not in quiet
    # Its GET writes nothing but the session.
    with CaptureQueriesContext(connection) as queries:
        assert client.get(PENDING).status_code == 200
    writes = [q["sql"] for q in queries.captured_queries if WRITE.match(q["sql"])]
    assert [w for w in writes if '"accounts_session"' not in w] == []
    # Deleting again is not possible; signing out is.
    again = client.post(DELETE, delete_form(alice.account))
    assert (again.status_code, again["Location"]) == (303, PENDING)

    # A member sees the page, is told to ask an admin, and cannot cancel.
    text = member_client.get(PENDING).content.decode()
    assert "ask alice@example.org" in text and "Cancel deletion" not in text
    assert member_client.post(CANCEL).status_code == 403
    assert Account.objects.get(pk=alice.account_id).pending_deletion
    assert member_client.post(reverse("accounts:sign_out")).status_code == 302

    # Another account is not affected, and has no deletion page to see or cancel.
    bob_client = signed_in_client(bob)
    assert bob_client.get(reverse("dashboard")).status_code == 200
    assert bob_client.get(PENDING).status_code == 404
    assert bob_client.post(CANCEL).status_code == 404
    assert Account.objects.get(pk=alice.account_id).pending_deletion
    # Signed out, the new URLs lead to sign-in.
    anonymous = Client()
    for url in (ACCOUNT, PENDING):
        assert anonymous.get(url)["Location"].startswith(reverse("accounts:sign_in"))
    for url in (DELETE, CANCEL):
        assert anonymous.post(url)["Location"].startswith(reverse("accounts:sign_in"))


def test_get_on_the_post_only_urls_changes_nothing(alice: User, db: None) -> None:
    client = signed_in_client(alice)
    assert client.get(DELETE).status_code == 405
    assert not Account.objects.get(pk=alice.account_id).pending_deletion
    request_account_deletion(account=alice.account, actor=alice)
    client = signed_in_client(alice)
    assert client.get(CANCEL).status_code == 405
    assert Account.objects.get(pk=alice.account_id).pending_deletion


# --- the services ------------------------------------------------------------------------------


def test_request_and_cancel_refuse_the_wrong_state(alice: User, db: None) -> None:
    with pytest.raises(AccountDeletionError, match="not scheduled for deletion"):
        cancel_account_deletion(account=alice.account, actor=alice)
    request_account_deletion(account=alice.account, actor="operator jo")
    with pytest.raises(AccountDeletionError, match="already scheduled"):
        request_account_deletion(account=alice.account, actor=alice)
    account = Account.objects.get(pk=alice.account_id)
    assert account.deletion_requested_by == "operator jo"
    cancel_account_deletion(account=account, actor=None)
    account.refresh_from_db()
    assert (account.deletion_requested_at, account.purge_after, account.deletion_requested_by) == (
        None,
        None,
        "",
    )


def test_cancel_reschedules_active_schedules_only_without_a_backlog(alice: User, db: None) -> None:
    world = make_world(alice)
    with switch(alice):
        daily = schedule(world)
        paused = schedule(world, repeat="every hour")
        pause_schedule(schedule=paused)
    request_account_deletion(account=alice.account, actor=alice)
    assert entries(alice.account) == []
    # Time passes: the daily run's time goes by while the account is pending.
    with switch(alice):
        Schedule.objects.filter(pk=daily.pk).update(next_run_at=timezone.now() - timedelta(days=3))
    cancel_account_deletion(account=alice.account, actor=alice)
    assert entries(alice.account) == [daily.pk]
    entry = ScheduleEntry.objects.get(account=alice.account)
    assert entry.next_run_at > timezone.now()  # the next one, not the three missed
