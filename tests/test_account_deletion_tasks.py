"""The purge's tasks, on a real Celery worker and the real Redis broker: the beat task purges
only the accounts whose grace period is over (one task per account, idempotent); tasks queued
for an account are taken out of the broker by its purge, and one that reaches a worker anyway
ends quietly; an account pending deletion runs no task."""

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.utils import timezone
from tenant_schemas_celery.task import SharedTenantCache

from accounts.models import Account, User
from channels_app.tasks import prune_history
from config.celery import app
from tenancy import switch
from tenancy.services import purge_account, request_account_deletion
from tenancy.tasks import purge_expired_account, purge_expired_accounts
from tests.factories import UserFactory
from tests.gateway_support import wait_until


@pytest.fixture
def worker(clean_schemas: None) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


def queued_for(schema: str) -> int:
    """Messages in the broker's queues whose headers name the schema."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    count = 0
    for key in client.scan_iter(_type="list"):
        count += sum(schema.encode() in item for item in client.lrange(key, 0, -1))
    client.close()
    return count


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_beat_entry_is_there_and_its_tasks_registered() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["purge-deleted-accounts"]
    assert entry["task"] == purge_expired_accounts.name
    assert {purge_expired_accounts.name, purge_expired_account.name} <= set(app.tasks)


def test_the_beat_task_purges_only_the_accounts_whose_grace_period_is_over(
    clean_schemas: None, caplog: pytest.LogCaptureFixture
) -> None:
    expired, waiting, kept = (
        UserFactory(email=f"{name}@example.org").account for name in ("old", "new", "kept")
    )
    long_ago = timezone.now() - timedelta(days=settings.ACCOUNT_DELETION_GRACE_DAYS, hours=1)
    request_account_deletion(account=expired, actor=None, now=long_ago)
    request_account_deletion(account=waiting, actor=None)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        purge_expired_accounts.delay()
        wait_until(lambda: not Account.objects.filter(pk=expired.pk).exists(), 20, "the purge")
    assert set(Account.objects.values_list("pk", flat=True)) == {waiting.pk, kept.pk}
    assert not errors(caplog)

    # Idempotent: a second delivery, one for an account still in its grace period, one for an
    # account never deleted: none of them purges.
    assert purge_expired_account(str(expired.pk)) is False
    assert purge_expired_account(str(waiting.pk)) is False
    assert purge_expired_account(str(kept.pk)) is False
    assert Account.objects.count() == 2
    # The beat task itself enqueues one task per due account, and none when none is due.
    assert purge_expired_accounts() == 0


def test_queued_tasks_go_with_the_purge_and_a_late_one_ends_quietly(
    worker: None, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = UserFactory(email="alice@example.org"), UserFactory(email="bob@example.org")
    schema = alice.account.schema_name
    # The worker knows alice's account (tenant-schemas-celery caches it for a minute).
    with switch(alice):
        assert prune_history.delay().get(timeout=20) == 0
        cached = alice.account
    # Queued on a queue no worker serves: only the purge can take it out.
    with switch(alice):
        never = prune_history.apply_async(queue="held-for-the-test")
    assert queued_for(schema) == 1

    report = purge_account(account=alice.account)
    assert report.queued_tasks == 1 and queued_for(schema) == 0

    # Published after the purge by a process that had not heard (the gateway, a tick):
    late = prune_history.apply_async(headers={"_schema_name": schema})
    assert late.get(timeout=20) is None and late.state == "SUCCESS"
    # A worker elsewhere still holding the account in its cache switches into the dropped
    # schema: the task ends quietly too.
    SharedTenantCache().set(schema, cached, expire_seconds=60)
    stale = prune_history.apply_async(headers={"_schema_name": schema})
    assert stale.get(timeout=20) is None and stale.state == "SUCCESS"
    with switch(bob):
        assert prune_history.delay().get(timeout=20) == 0  # others run as before
    assert never.state == "PENDING"
    assert not errors(caplog), errors(caplog)


def test_an_account_pending_deletion_runs_no_task(
    worker: None, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = UserFactory(email="alice@example.org"), UserFactory(email="bob@example.org")
    request_account_deletion(account=alice.account, actor=alice)
    with switch(User.objects.get(pk=alice.pk)):
        skipped = prune_history.delay()
    with switch(bob):
        ran = prune_history.delay()
    assert ran.get(timeout=20) == 0
    assert skipped.get(timeout=20) is None and skipped.state == "SUCCESS"
    assert not errors(caplog)
