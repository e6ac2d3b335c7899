"""Operators delete, cancel and purge accounts: `delete_account` (scheduled by default, --now
for good), `cancel_account_deletion`, `purge_accounts`, and the admin's actions. Messages and
exit codes (a refused command raises CommandError: `manage.py` exits 1 with its message)."""

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_tenants.utils import schema_exists

from accounts.models import Account, Session, User
from config.database import database_url
from tenancy.services import request_account_deletion
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.test_commands import FakeTerminal, run, run_failing

ROOT = Path(__file__).resolve().parent.parent


def pending(account: Account) -> bool:
    return Account.objects.get(pk=account.pk).pending_deletion


def test_delete_account_schedules_by_default_and_refuses_twice(alice: User, bob: User) -> None:
    signed_in_client(alice)
    stdout, _ = run("delete_account", alice.account.name, yes=True)
    assert "is scheduled for deletion" in stdout and "cancel_account_deletion" in stdout
    account = Account.objects.get(pk=alice.account_id)
    assert account.pending_deletion and account.deletion_requested_by == "operator"
    assert f"{account.purge_after:%Y-%m-%d %H:%M}" in stdout
    assert not Session.objects.filter(user=alice).exists()
    assert schema_exists(account.schema_name)

    message, _, _ = run_failing("delete_account", alice.account.name, yes=True)
    assert "already scheduled for deletion" in message and "--now" in message
    assert not pending(bob.account)


def test_delete_account_now_purges_a_pending_account_too(alice: User) -> None:
    request_account_deletion(account=alice.account, actor=None)
    stdout, _ = run("delete_account", str(alice.account_id), "--now", yes=True)
    assert f"dropped schema {alice.account.schema_name}" in stdout and "1 user " in stdout
    assert not Account.objects.filter(pk=alice.account_id).exists()


def test_delete_account_asks_on_a_terminal_saying_when(alice: User) -> None:
    name = alice.account.name
    message, stdout, _ = run_failing("delete_account", name, stdin=FakeTerminal("nope\n"))
    assert "did not match" in message and "after 30 days" in stdout
    assert not pending(alice.account)
    run("delete_account", name, stdin=FakeTerminal(name + "\n"))
    assert pending(alice.account)


def test_cancel_account_deletion(alice: User) -> None:
    message, _, _ = run_failing("cancel_account_deletion", alice.account.name)
    assert "is not scheduled for deletion" in message
    request_account_deletion(account=alice.account, actor=alice)
    stdout, _ = run("cancel_account_deletion", str(alice.account_id))
    assert "is cancelled" in stdout and not pending(alice.account)
    message, _, _ = run_failing("cancel_account_deletion", "nobody")
    assert "No account is named 'nobody'" in message


def test_purge_accounts(alice: User, bob: User) -> None:
    carol = UserFactory(email="carol@example.org").account
    stdout, _ = run("purge_accounts", yes=True)
    assert "nothing to purge" in stdout

    # Named: only accounts pending deletion, and then all or none.
    request_account_deletion(account=alice.account, actor=None)
    message, _, _ = run_failing("purge_accounts", alice.account.name, bob.account.name, yes=True)
    assert 'Not pending deletion: "Bob\'s place"' in message or "Bob" in message
    assert Account.objects.filter(pk=alice.account_id).exists()
    message, _, _ = run_failing("purge_accounts", alice.account.name, stdin=io.StringIO("purge"))
    assert "stdin is not a terminal" in message
    stdout, stderr = run("purge_accounts", alice.account.name, stdin=FakeTerminal("purge\n"))
    assert "Purged 1 account" in stdout and "Purging" in stderr
    assert not Account.objects.filter(pk=alice.account_id).exists()

    # Unnamed: those whose grace period is over, not the others.
    long_ago = timezone.now() - timedelta(days=31)
    request_account_deletion(account=bob.account, actor=None, now=long_ago)
    request_account_deletion(account=carol, actor=None)
    stdout, stderr = run("purge_accounts", yes=True)
    assert "Purged 1 account" in stdout and "1/1" in stderr
    assert list(Account.objects.values_list("pk", flat=True)) == [carol.pk]


def test_exit_codes_and_messages_of_manage_py(clean_schemas: None) -> None:
    doomed = UserFactory(email="doomed@example.org", account_name="Doomed").account
    env = {
        **os.environ,
        "DATABASE_URL": database_url(settings.DATABASES["default"]),
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
    }

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    refused = manage("cancel_account_deletion", "Doomed")
    assert refused.returncode == 1 and "is not scheduled for deletion" in refused.stderr
    scheduled = manage("delete_account", "Doomed", "--yes")
    assert scheduled.returncode == 0 and "is scheduled for deletion" in scheduled.stdout
    purged = manage("purge_accounts", "Doomed", "--yes")
    assert purged.returncode == 0 and "Purged 1 account" in purged.stdout
    assert not Account.objects.filter(pk=doomed.pk).exists()
    unknown = manage("purge_accounts", "Doomed", "--yes")
    assert unknown.returncode == 1 and "No account is named 'Doomed'" in unknown.stderr


# --- the admin ---------------------------------------------------------------------------------


def admin_client() -> Client:
    operator = UserFactory(email="ops@example.org", account_name="Operators", is_staff=True)
    operator.is_superuser = True
    operator.save()
    return signed_in_client(operator)


def action(client: Client, name: str, *accounts: Account) -> str:
    response = client.post(
        reverse("admin:accounts_account_changelist"),
        {"action": name, "_selected_action": [str(a.pk) for a in accounts]},
        follow=True,
    )
    assert response.status_code == 200
    return " ".join(str(m) for m in response.context["messages"])


def test_admin_actions_schedule_cancel_and_purge(alice: User, bob: User) -> None:
    client = admin_client()
    said = action(client, "schedule_deletion", alice.account)
    assert "Scheduled for deletion: Alice's place" in said and pending(alice.account)
    assert (
        Account.objects.get(pk=alice.account_id).deletion_requested_by == "operator ops@example.org"
    )
    listed = client.get(reverse("admin:accounts_account_changelist") + "?deletion=pending")
    assert "Alice&#x27;s place" in listed.content.decode()
    assert "Bob&#x27;s place" not in listed.content.decode()

    said = action(client, "purge_now", bob.account)
    assert "is not pending deletion" in said and Account.objects.filter(pk=bob.account_id).exists()
    said = action(client, "cancel_deletion", alice.account, bob.account)
    assert "Deletion cancelled: Alice's place" in said and "not scheduled for deletion" in said
    assert not pending(alice.account)

    action(client, "schedule_deletion", alice.account)
    said = action(client, "purge_now", alice.account)
    assert "Purged: Alice's place" in said
    assert not Account.objects.filter(pk=alice.account_id).exists()
    assert not schema_exists(alice.account.schema_name)
    assert not LogEntry.objects.filter(object_id=str(alice.account_id)).exists()
