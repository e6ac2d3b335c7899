"""An account's life in the database: provisioning, deletion with a grace period, the purge.

Deletion happens in two steps. `request_account_deletion` (the account page, an operator's
command or admin action) disconnects the account at once: the gateway drops its connections,
its users' sessions end, its scheduled tasks leave the public index, and `purge_after` is set
ACCOUNT_DELETION_GRACE_DAYS ahead. Until then `cancel_account_deletion` puts everything back.
`purge_account` is the end: the schema, every public row that refers to the account or its
users (found by introspecting the models, tenancy.leftovers), every Redis key naming them and
every task still queued for the account. The beat task (tenancy.tasks.purge_expired_accounts)
purges the accounts whose grace period is over, one task per account.
"""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone
from django_tenants.utils import schema_exists

from tenancy import leftovers, provisioning
from tenancy.context import public_schema, switch, tenant_model, user_model

if TYPE_CHECKING:  # see tenancy/context.py: tenancy never imports accounts at run time
    from accounts.models import Account, User

logger = logging.getLogger(__name__)

# Sent with `account=` and `key_fragments=` inside purge_account's transaction, while the schema
# still exists: what an account keeps outside its schema and public rows (uploaded files in a
# storage, backups) is found then, and removed once the purge commits. `key_fragments` is a set
# a receiver may add to: text found in the names of Redis keys of the account that cannot hold
# its id (accounts.throttle: hashes of its users' email addresses); every key whose name holds
# one of them is removed with the keys that name the account, its users or its schema.
account_deleting = Signal()


_DELETION_FIELDS = ["deletion_requested_at", "deletion_requested_by", "purge_after"]


class AccountDeletionError(ValueError):
    """The deletion cannot be requested, cancelled or purged as asked (the message says why)."""


@transaction.atomic
def provision_account(*, name: str, settings: dict[str, Any] | None = None) -> "Account":
    """The one way an account comes to be: its row and its schema, together or not at all."""
    with public_schema():
        account = tenant_model()(name=name.strip(), settings=settings or {})
        account.full_clean(exclude=["schema_name"])
        account.save()
        provisioning.create_schema(account)
    return account


def _actor_label(actor: "User | str | None") -> str:
    if actor is None:
        return "operator"
    return actor if isinstance(actor, str) else actor.email


def _locked(account: "Account") -> "Account":
    with public_schema():
        locked = tenant_model().objects.select_for_update().filter(pk=account.pk).first()
    if locked is None:
        raise AccountDeletionError(f"Account {account.pk} no longer exists.")
    return locked


def _session_model() -> Any:
    # Django's way to the session model (accounts.models.Session here): through the engine.
    return import_module(settings.SESSION_ENGINE).SessionStore.get_model_class()


def _tell_gateway(account: "Account") -> None:
    # The gateway re-reads the account at once: pending deletion, it holds no connection of it
    # (gateway.manager.load_account); cancelled, it connects its autoconnect servers again.
    from channels_app.events import ServersChanged, tell_gateway_on_commit

    tell_gateway_on_commit(ServersChanged(account_id=str(account.pk)))


@transaction.atomic
def request_account_deletion(
    *, account: "Account", actor: "User | str | None", now: datetime | None = None
) -> "Account":
    """Schedule the purge of the account ACCOUNT_DELETION_GRACE_DAYS from now and disconnect it
    at once: its IRC connections (the gateway, after the commit), its users' sessions, its
    scheduled tasks (their public index entries; the schedules stay in the schema for a
    cancel). `actor` is the user who asked, or an operator's name (None: "operator").
    Raises AccountDeletionError when the deletion is already scheduled."""
    from scheduling.models import ScheduleEntry

    account = _locked(account)
    if account.pending_deletion:
        raise AccountDeletionError(
            f"Account {account.name!r} is already scheduled for deletion "
            f"on {account.purge_after:%Y-%m-%d %H:%M} UTC."
        )
    now = now or timezone.now()
    account.deletion_requested_at = now
    account.deletion_requested_by = _actor_label(actor)[:254]
    account.purge_after = now + timedelta(days=settings.ACCOUNT_DELETION_GRACE_DAYS)
    with public_schema():
        account.save(
            update_fields=["deletion_requested_at", "deletion_requested_by", "purge_after"]
        )
        ScheduleEntry.objects.filter(account=account).delete()
        # One by one (QuerySet.delete sends post_delete for each): the live streams of each
        # session hear of it and end within seconds (channels_app.sse).
        _session_model().objects.filter(user__account=account).delete()
    _tell_gateway(account)
    logger.info(
        "account %s: deletion requested by %s, purge after %s",
        account.pk,
        account.deletion_requested_by,
        account.purge_after,
    )
    return account


@transaction.atomic
def cancel_account_deletion(*, account: "Account", actor: "User | str | None") -> "Account":
    """Undo request_account_deletion: the gateway connects the autoconnect servers again and
    the active schedules return to the index (missed runs are not made up). Raises
    AccountDeletionError when no deletion is scheduled."""
    from agents.services.schedules import reindex_schedules

    account = _locked(account)
    if not account.pending_deletion:
        raise AccountDeletionError(f"Account {account.name!r} is not scheduled for deletion.")
    account.deletion_requested_at = None
    account.deletion_requested_by = ""
    account.purge_after = None
    with public_schema():
        account.save(
            update_fields=["deletion_requested_at", "deletion_requested_by", "purge_after"]
        )
    with switch(account):
        scheduled = reindex_schedules()
    _tell_gateway(account)
    logger.info(
        "account %s: deletion cancelled by %s (%d schedules back)",
        account.pk,
        _actor_label(actor),
        scheduled,
    )
    return account


@dataclass
class PurgeReport:
    """What a purge removed. `redis_keys` and `queued_tasks` are filled once the purge
    commits (they are removed after it)."""

    account_id: uuid.UUID
    name: str
    schema_name: str
    had_schema: bool
    users: int
    rows: dict[str, int] = field(default_factory=dict)
    redis_keys: int = 0
    queued_tasks: int = 0

    @property
    def public_rows(self) -> int:
        return sum(self.rows.values())


@transaction.atomic
def purge_account(*, account: "Account") -> PurgeReport:
    """Remove everything of the account, for good: its schema, every public row referring to
    it or to its users, then (after the commit) every Redis key naming it, its users or its
    schema, and every task still queued for it. Works whether or not a deletion was requested
    (an operator's immediate deletion). Raises AccountDeletionError when the account is gone."""
    account = _locked(account)
    with public_schema():
        users = list(user_model().objects.filter(account=account).values_list("pk", flat=True))
        fragments = leftovers.key_fragments(
            account_id=account.pk, schema_name=account.schema_name, user_ids=users
        )
        report = PurgeReport(
            account_id=account.pk,
            name=account.name,
            schema_name=account.schema_name,
            had_schema=schema_exists(account.schema_name),
            users=len(users),
        )
        account_deleting.send(sender=type(account), account=account, key_fragments=fragments)
        provisioning.drop_schema(account)
        report.rows = leftovers.delete_public_rows(account=account, user_ids=users)

    def outside_the_database() -> None:
        leftovers.forget_tenant(report.schema_name)
        try:
            report.queued_tasks = leftovers.drop_queued_tasks(report.schema_name)
            report.redis_keys = leftovers.delete_redis_keys(fragments)
        except Exception:
            # The rows are gone; what remains in Redis expires or finds no account.
            logger.exception(
                "account %s: purged, but Redis could not be cleaned", report.account_id
            )

    transaction.on_commit(outside_the_database)
    _tell_gateway(account)
    logger.info(
        "account %s purged: schema %s, %d public rows", report.account_id, report.schema_name,
        report.public_rows,
    )  # fmt: skip
    return report


def expired_account_ids(*, now: datetime | None = None) -> list[uuid.UUID]:
    """Accounts whose grace period is over, oldest first (the purge_after index)."""
    with public_schema():
        return list(
            tenant_model()
            .objects.filter(purge_after__lte=now or timezone.now())
            .order_by("purge_after")
            .values_list("pk", flat=True)
        )


def purge_if_expired(
    *, account_id: uuid.UUID | str, now: datetime | None = None
) -> PurgeReport | None:
    """Purge the account when its grace period is over; None when it is not (cancelled since,
    already purged by another delivery of the same task, or not due). Idempotent."""
    with transaction.atomic():
        with public_schema():
            account = (
                tenant_model()
                .objects.select_for_update(skip_locked=True)
                .filter(pk=account_id, purge_after__lte=now or timezone.now())
                .first()
            )
        if account is None:
            return None
        return purge_account(account=account)
