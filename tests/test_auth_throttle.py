"""Throttling of sign-in (site and admin), sign-up and the client address it is keyed on."""

import ipaddress
import threading

import pytest
from django.db import connection
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from accounts import throttle
from accounts.models import User
from accounts.services import check_credentials
from tests.factories import PASSWORD, UserFactory

SIGN_IN = reverse("accounts:sign_in")
ATTACKER = "203.0.113.9"


def sign_in(email: str, password: str, address: str = "192.0.2.1") -> int:
    client = Client(REMOTE_ADDR=address)
    return client.post(SIGN_IN, {"email": email, "password": password}).status_code


@override_settings(SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT=3, SIGN_IN_MAX_FAILURES_PER_CLIENT=100)
def test_sign_in_is_throttled_per_email_and_client(alice: User) -> None:
    for _ in range(3):
        assert sign_in(alice.email, "bad guess", ATTACKER) == 400
    # Even the right password is refused from that client while throttled.
    response = Client(REMOTE_ADDR=ATTACKER).post(
        SIGN_IN, {"email": alice.email, "password": PASSWORD}
    )
    assert response.status_code == 429
    assert "Too many failed sign-ins" in response.content.decode()
    # Another address from the same client is not affected.
    bob = UserFactory(email="bob@example.org")
    assert sign_in(bob.email, PASSWORD, ATTACKER) == 302


@override_settings(SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT=5, SIGN_IN_MAX_FAILURES_PER_CLIENT=100)
def test_an_attacker_cannot_lock_the_real_user_out(alice: User) -> None:
    for _ in range(10):
        sign_in(alice.email, "bad guess", ATTACKER)
    assert sign_in(alice.email, PASSWORD, ATTACKER) == 429
    assert sign_in(alice.email, PASSWORD, "198.51.100.4") == 302


@override_settings(SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT=100, SIGN_IN_MAX_FAILURES_PER_CLIENT=4)
def test_sign_in_is_throttled_per_client(alice: User) -> None:
    for n in range(4):
        assert sign_in(f"guess{n}@example.org", "bad guess", ATTACKER) == 400
    assert sign_in(alice.email, PASSWORD, ATTACKER) == 429
    assert sign_in(alice.email, PASSWORD, "10.9.8.7") == 302


@override_settings(SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT=100, SIGN_IN_MAX_FAILURES_PER_CLIENT=3)
def test_ipv6_clients_are_grouped_by_their_64(alice: User) -> None:
    for n in range(1, 4):
        assert sign_in(f"guess{n}@example.org", "bad guess", f"2001:db8:0:7::{n:x}") == 400
    # Another address in the same /64 is the same client.
    assert sign_in(alice.email, PASSWORD, "2001:db8:0:7:ffff::1") == 429
    # The neighbouring /64 is another client.
    assert sign_in(alice.email, PASSWORD, "2001:db8:0:8::1") == 302


@override_settings(SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT=3, SIGN_IN_MAX_FAILURES_PER_CLIENT=100)
def test_the_email_count_is_shared_by_every_spelling_of_the_address(alice: User) -> None:
    for _ in range(3):
        assert sign_in("alice@example.org", "bad guess", ATTACKER) == 400
    assert sign_in("ALICE@EXAMPLE.ORG", PASSWORD, ATTACKER) == 429
    assert sign_in(" Alice@Example.org ", PASSWORD, ATTACKER) == 429


@override_settings(SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT=5, SIGN_IN_MAX_FAILURES_PER_CLIENT=100)
def test_parallel_guesses_cannot_pass_the_limit(alice: User) -> None:
    """Twenty guesses at once: exactly five get their password checked."""
    outcomes: list[str] = []
    barrier = threading.Barrier(20)
    request = RequestFactory().post(SIGN_IN, REMOTE_ADDR=ATTACKER)

    def guess() -> None:
        barrier.wait()
        try:
            result = check_credentials(
                request=request, email=alice.email, password="bad guess", client=ATTACKER
            )
            outcomes.append("throttled" if result.throttled else "checked")
        finally:
            connection.close()

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["checked"] * 5 + ["throttled"] * 15


def test_counters_expire_at_the_end_of_their_window(db: None) -> None:
    first = throttle.hit("probe", window_seconds=60)
    later = throttle.hit("probe", window_seconds=60)
    assert (first.value, later.value) == (1, 2)
    assert 0 < later.seconds_left <= 60


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "expected"),
    [
        # No trusted proxy (the default): the header is whatever the client sent.
        ("198.51.100.4", "203.0.113.5", [], "198.51.100.4"),
        ("10.0.0.1", "203.0.113.5", [], "10.0.0.1"),
        # Behind a trusted proxy: the right-most address that is not one of ours.
        ("10.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.2", ["10.0.0.0/8"], "203.0.113.5"),
        ("10.0.0.1", "", ["10.0.0.0/8"], "10.0.0.1"),
        ("10.0.0.1", "junk, 10.0.0.2", ["10.0.0.0/8"], "10.0.0.2"),
        ("::ffff:198.51.100.4", "", [], "198.51.100.4"),
    ],
)
def test_client_address_believes_forwarded_for_only_from_trusted_proxies(
    remote: str, forwarded: str, trusted: list[str], expected: str
) -> None:
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(TRUSTED_PROXIES=[ipaddress.ip_network(n) for n in trusted]):
        assert throttle.client_address(request) == expected


def test_client_key_groups_ipv6_by_64() -> None:
    assert throttle.client_key("2001:db8:0:7::1") == "2001:db8:0:7::/64"
    assert throttle.client_key("192.0.2.1") == "192.0.2.1"
    assert throttle.client_key(None) == "unknown"


@override_settings(SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT=3, SIGN_IN_MAX_FAILURES_PER_CLIENT=100)
def test_admin_sign_in_is_throttled_like_the_site(db: None) -> None:
    operator = UserFactory(email="op@example.org", is_staff=True, is_superuser=True)
    url = reverse("admin:login")
    for _ in range(3):
        response = Client(REMOTE_ADDR=ATTACKER).post(
            url, {"username": operator.email, "password": "bad guess"}
        )
        assert response.status_code == 200 and "_auth_user_id" not in response.client.session
    client = Client(REMOTE_ADDR=ATTACKER)
    response = client.post(url, {"username": operator.email, "password": PASSWORD})
    assert "Too many failed sign-ins" in response.content.decode()
    assert client.get(reverse("admin:index")).status_code == 302
    # The site's sign-in page shares the count.
    assert sign_in(operator.email, PASSWORD, ATTACKER) == 429
    # From elsewhere the operator still gets in.
    elsewhere = Client(REMOTE_ADDR="198.51.100.4")
    response = elsewhere.post(url, {"username": operator.email, "password": PASSWORD})
    assert response.status_code == 302
    assert elsewhere.get(reverse("admin:index")).status_code == 200


@override_settings(SIGN_UP_MAX_PER_CLIENT=2)
def test_sign_up_is_throttled_per_client(db: None) -> None:
    url = reverse("accounts:sign_up")

    def sign_up(n: int, address: str) -> int:
        form = {"account_name": f"Team {n}", "email": f"new{n}@example.org", "password": PASSWORD}
        return Client(REMOTE_ADDR=address).post(url, form).status_code

    assert sign_up(1, ATTACKER) == 302
    assert sign_up(2, "2001:db8:0:7::1") == 302
    assert sign_up(3, ATTACKER) == 302
    response = Client(REMOTE_ADDR=ATTACKER).post(
        url, {"account_name": "Team 4", "email": "new4@example.org", "password": PASSWORD}
    )
    assert response.status_code == 429
    assert "Too many sign-ups from your address" in response.content.decode()
    assert 'value="Team 4"' in response.content.decode()
    assert sign_up(5, "2001:db8:0:7::2") == 302
    assert sign_up(6, "2001:db8:0:7::3") == 429
    assert sign_up(7, "198.51.100.4") == 302
    assert not User.objects.filter(email__in=["new4@example.org", "new6@example.org"]).exists()
