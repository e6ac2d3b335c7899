import threading

import pytest
from django.contrib.auth import SESSION_KEY
from django.db import connection
from django.test import Client
from django.urls import reverse
from django_tenants.utils import schema_exists

from accounts.models import Account, Session, User
from accounts.services import EmailTakenError, sign_up
from accounts.views import GENERIC_SIGN_IN_ERROR
from tenancy import provisioning
from tests.conftest import signed_in_client
from tests.factories import PASSWORD

SIGN_UP = {"account_name": "Carol's", "email": "  Carol@Example.ORG ", "password": PASSWORD}


def test_sign_up_creates_account_user_and_schema_and_signs_in(db: None) -> None:
    client = Client()
    response = client.post(reverse("accounts:sign_up"), SIGN_UP)
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    user = User.objects.get()
    assert user.email == "carol@example.org"
    assert user.is_account_admin
    assert user.account.name == "Carol's"
    assert user.account.schema_name == f"account_{user.account.pk.hex}"
    assert schema_exists(user.account.schema_name)
    assert client.get(reverse("dashboard")).status_code == 200


def test_passwords_are_stored_as_argon2id(alice: User) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM accounts_user WHERE id = %s", [alice.pk])
        (stored,) = cursor.fetchone()
    assert stored.startswith("argon2$argon2id$")
    assert PASSWORD not in stored


def test_email_is_normalised_and_unique_regardless_of_case(alice: User) -> None:
    with pytest.raises(EmailTakenError):
        sign_up(account_name="Other", email=" ALICE@example.org", password=PASSWORD)
    response = Client().post(reverse("accounts:sign_up"), {**SIGN_UP, "email": "Alice@EXAMPLE.org"})
    assert response.status_code == 400
    assert "already uses this email" in response.content.decode()
    assert User.objects.count() == 1


def test_database_rejects_a_case_variant_email(alice: User) -> None:
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO accounts_user (id, account_id, email, password, is_account_admin,"
            " is_staff, is_active, is_superuser, date_joined)"
            " VALUES (gen_random_uuid(), %s, 'ALICE@example.org', '', false, false, true,"
            " false, now())",
            [alice.account_id],
        )


def test_concurrent_sign_ups_with_one_email_make_one_user(clean_schemas: None) -> None:
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt(name: str, email: str) -> None:
        barrier.wait()
        try:
            sign_up(account_name=name, email=email, password=PASSWORD)
            outcomes.append("created")
        except EmailTakenError:
            outcomes.append("taken")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=attempt, args=("First", "dave@example.org")),
        threading.Thread(target=attempt, args=("Second", " DAVE@Example.org")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["created", "taken"]
    assert User.objects.filter(email="dave@example.org").count() == 1
    # The loser left no account and no schema behind.
    assert Account.objects.count() == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'account\\_%%'")
        assert cursor.fetchone()[0] == 1


def test_failed_provisioning_leaves_nothing(
    clean_schemas: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = provisioning.account_schema_ddl()
    broken = provisioning.AccountSchemaDDL(
        statements=(*good.statements[:5], "CREATE TABLE broken (id nonexistent_type);"),
        migrations=good.migrations,
    )
    monkeypatch.setattr(provisioning, "account_schema_ddl", lambda: broken)
    response = Client().post(reverse("accounts:sign_up"), SIGN_UP)
    assert response.status_code == 503
    assert "nothing was saved" in response.content.decode()
    assert Account.objects.count() == 0
    assert User.objects.count() == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'account\\_%%'")
        assert cursor.fetchone()[0] == 0


def test_sign_in_rotates_session_key(alice: User) -> None:
    client = Client()
    client.get(reverse("accounts:sign_in"))
    client.session.save()
    before = client.session.session_key
    response = client.post(
        reverse("accounts:sign_in"), {"email": " ALICE@example.org", "password": PASSWORD}
    )
    assert response.status_code == 302
    after = client.session.session_key
    assert after and after != before
    assert client.session[SESSION_KEY] == str(alice.pk)


def test_wrong_password_and_unknown_email_get_the_same_message(alice: User) -> None:
    url = reverse("accounts:sign_in")
    wrong = Client().post(url, {"email": alice.email, "password": "nope nope nope"})
    unknown = Client().post(url, {"email": "nobody@example.org", "password": "nope nope nope"})
    for response in (wrong, unknown):
        assert response.status_code == 400
        assert GENERIC_SIGN_IN_ERROR in response.content.decode()


def test_sessions_are_listed_and_revocable(alice: User, bob: User) -> None:
    laptop = signed_in_client(alice)
    phone = Client(HTTP_USER_AGENT="PhoneBrowser/1.0", REMOTE_ADDR="192.0.2.7")
    phone.post(reverse("accounts:sign_in"), {"email": alice.email, "password": PASSWORD})
    assert phone.get(reverse("dashboard")).status_code == 200

    page = laptop.get(reverse("accounts:session_list")).content.decode()
    assert "PhoneBrowser/1.0" in page and "192.0.2.7" in page
    phone_session = Session.objects.get(user=alice, user_agent="PhoneBrowser/1.0")
    assert phone_session.ip_address == "192.0.2.7"
    # The page names sessions by an opaque id: a session key is a credential, and one in a URL
    # leaks through history, logs and Referer.
    assert phone_session.session_key not in page
    assert laptop.session.session_key is not None
    assert laptop.session.session_key not in page
    revoke_url = reverse("accounts:session_revoke", args=[phone_session.public_id])
    assert revoke_url in page

    # B cannot revoke A's session.
    bob_client = signed_in_client(bob)
    assert bob_client.post(revoke_url).status_code == 404
    assert Session.objects.filter(pk=phone_session.pk).exists()

    response = laptop.post(revoke_url, headers={"HX-Request": "true"})
    assert response.status_code == 200 and response.content == b""
    assert not Session.objects.filter(pk=phone_session.pk).exists()
    response = phone.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:sign_in"))
    assert laptop.get(reverse("dashboard")).status_code == 200


def test_a_session_key_in_the_url_revokes_nothing(alice: User) -> None:
    laptop = signed_in_client(alice)
    phone = signed_in_client(alice)
    key = phone.session.session_key
    assert laptop.post(f"/sessions/{key}/revoke/").status_code == 404
    assert phone.get(reverse("dashboard")).status_code == 200


def test_revoking_this_browsers_session_signs_it_out(alice: User) -> None:
    client = signed_in_client(alice)
    own = Session.objects.get(session_key=client.session.session_key)
    response = client.post(reverse("accounts:session_revoke", args=[own.public_id]))
    assert response.status_code == 302 and response["Location"] == reverse("accounts:sign_in")
    assert not Session.objects.filter(user=alice).exists()


def test_sign_out_ends_the_session(alice: User) -> None:
    client = signed_in_client(alice)
    key = client.session.session_key
    assert client.post(reverse("accounts:sign_out")).status_code == 302
    assert not Session.objects.filter(session_key=key).exists()
    assert client.get(reverse("dashboard")).status_code == 302


def test_sign_up_form_errors_keep_input(db: None) -> None:
    response = Client().post(
        reverse("accounts:sign_up"),
        {"account_name": "Eve", "email": "not-an-email", "password": "123"},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "Enter a valid email address." in html
    assert 'value="Eve"' in html
    assert "This password is too short" in html
    assert Account.objects.count() == 0
