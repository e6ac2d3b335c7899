"""Operators: Django admin creates accounts with their schema and drops it on delete."""

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django_tenants.utils import schema_exists

from accounts.models import Account, User
from tests.factories import PASSWORD, UserFactory


def operator_client(db: None) -> Client:
    UserFactory(email="ops@example.org", is_staff=True, is_superuser=True)
    client = Client()
    assert client.login(username="ops@example.org", password=PASSWORD)
    return client


def test_admin_lists_accounts_with_user_count_and_schema(alice: User, db: None) -> None:
    client = operator_client(db)
    page = client.get(reverse("admin:accounts_account_changelist")).content.decode()
    assert alice.account.schema_name in page
    assert "Alice" in page
    for name in ("accounts_user", "accounts_session", "llms_llm", "llms_tool"):
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200


def test_admin_creates_account_with_schema(db: None) -> None:
    client = operator_client(db)
    response = client.post(
        reverse("admin:accounts_account_add"), {"name": "Made by ops", "settings": "{}"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    account = Account.objects.get(name="Made by ops")
    assert account.schema_name == f"account_{account.pk.hex}"
    assert schema_exists(account.schema_name)


def test_admin_delete_says_it_drops_the_schema_and_does(alice: User, db: None) -> None:
    client = operator_client(db)
    account = alice.account
    url = reverse("admin:accounts_account_delete", args=[account.pk])
    page = client.get(url).content.decode()
    assert f"drops its PostgreSQL schema {account.schema_name}" in page
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Account.objects.filter(pk=account.pk).exists()
    assert not User.objects.filter(email="alice@example.org").exists()
    assert not schema_exists(account.schema_name)


def test_admin_bulk_delete_drops_every_schema(alice: User, bob: User, db: None) -> None:
    client = operator_client(db)
    schemas = [alice.account.schema_name, bob.account.schema_name]
    data = {
        "action": "delete_selected",
        "_selected_action": [str(alice.account.pk), str(bob.account.pk)],
    }
    page = client.post(reverse("admin:accounts_account_changelist"), data).content.decode()
    assert "drops their PostgreSQL schemas" in page
    client.post(reverse("admin:accounts_account_changelist"), {**data, "post": "yes"})
    assert not any(schema_exists(s) for s in schemas)


def test_non_staff_cannot_use_admin(alice_client: Client) -> None:
    response = alice_client.get(reverse("admin:accounts_account_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_createsuperuser_makes_an_operator_with_an_account(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    call_command("createsuperuser", interactive=False, email="Root@Example.org", verbosity=0)
    user = User.objects.get(email="root@example.org")
    assert user.is_staff and user.is_superuser
    assert schema_exists(user.account.schema_name)
