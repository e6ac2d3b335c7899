"""Celery tasks that work on account data, and the purge of deleted accounts.

tenant-schemas-celery stamps every message with the schema active where it was enqueued and
switches the worker into it before the task runs. On top of that, an account task refuses to be
enqueued, or to run, on the public schema: account work without an account is an error, never a
silent run against public. The one exception is an account that is gone: a task enqueued for it
before its purge (in a worker already, or published by a process that had not heard) ends
quietly, as does one for an account whose deletion is pending.
"""

import logging
from typing import Any

from django.db import DatabaseError
from django_tenants.utils import get_public_schema_name, schema_exists
from tenant_schemas_celery.app import get_schema_name_from_task

from config.celery import app
from tenancy.context import NoTenantError, current_account, is_public, tenant_model

logger = logging.getLogger(__name__)


class AccountTask(app.Task):
    abstract = True

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        headers = options.get("headers") or {}
        if is_public() and not headers.get("_schema_name"):
            raise NoTenantError(f"task {self.name}")
        return super().apply_async(args, kwargs, **options)

    @classmethod
    def get_tenant_for_schema(cls, schema_name: str) -> Any:
        """tenant-schemas-celery's look-up, except that a schema no account has any more (a
        purged account's) gives a stand-in on public instead of raising in the worker's
        prerun signal, which would log an error: __call__ then ends the task quietly."""
        try:
            return super().get_tenant_for_schema(schema_name)
        except tenant_model().DoesNotExist:
            return tenant_model()(schema_name=get_public_schema_name())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if is_public():
            schema = get_schema_name_from_task(self, kwargs)
            if schema and schema != get_public_schema_name():
                logger.info("task %s for %s skipped: the account is gone", self.name, schema)
                return None
            raise NoTenantError(f"task {self.name}")
        account = current_account()
        # The worker's copy of the account (cached CELERY_TASK_TENANT_CACHE_SECONDS) is enough:
        # the account's scheduled tasks and connections stopped with the request already.
        if account is not None and account.pending_deletion:
            logger.info("task %s for account %s skipped: deletion pending", self.name, account.pk)
            return None
        try:
            return super().__call__(*args, **kwargs)
        except Exception:
            # Purged while the worker held it (its cached copy, or mid-run): its row or its
            # schema is gone, and what failed failed for that reason.
            if account is not None and _gone(account):
                logger.info("task %s for account %s ended: the account is gone", self.name,
                            account.pk)  # fmt: skip
                return None
            raise


def _gone(account: Any) -> bool:
    try:
        return not (
            schema_exists(account.schema_name)
            and tenant_model().objects.filter(pk=account.pk).exists()
        )
    except DatabaseError:
        return False


def account_task(*args: Any, **options: Any) -> Any:
    """Declare a task on account data: `@account_task(name=...)`."""
    options.setdefault("base", AccountTask)
    return app.task(*args, **options)


@app.task(name="tenancy.purge_expired_accounts", ignore_result=True)
def purge_expired_accounts() -> int:
    """Beat (CELERY_BEAT_SCHEDULE): one purge task per account whose grace period is over, each
    carrying the account's id. Returns how many were enqueued."""
    from tenancy.services import expired_account_ids

    if not is_public():
        raise RuntimeError("purge_expired_accounts runs on the public schema")
    ids = expired_account_ids()
    for account_id in ids:
        purge_expired_account.delay(str(account_id))
    return len(ids)


@app.task(name="tenancy.purge_expired_account", ignore_result=True)
def purge_expired_account(account_id: str) -> bool:
    """Purge one account if its grace period is over (idempotent: a second delivery, or one
    after a cancel, finds nothing to do). Returns whether it purged."""
    from tenancy.services import purge_if_expired

    return purge_if_expired(account_id=account_id) is not None
