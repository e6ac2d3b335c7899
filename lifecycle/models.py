"""Public-schema models of the lifecycle app: the backup registry.

A Backup row says what was made, where it is kept and in what state. It names its account by id
and by the name it had then, never by a foreign key: the backups of a purged account are kept
until they age out (lifecycle/retention.py), and their rows with them.
"""

from typing import ClassVar

from django.db import models
from django.db.models import Q


class Backup(models.Model):
    # The purge (tenancy.leftovers) leaves these rows alone: a purged account's backups within
    # retention stay restorable, and their rows go with their files (lifecycle.retention, on
    # account_deleting for those past retention, by prune_backups for the rest as they age).
    outlives_account: ClassVar[bool] = True

    class Kind(models.TextChoices):
        DAILY = "daily", "daily"
        # The first scheduled backup of its ISO week: a daily one that is also kept as weekly.
        WEEKLY = "weekly", "weekly"
        # Made on an operator's request (backup_all_accounts), never pruned while the account is.
        MANUAL = "manual", "manual"

    class State(models.TextChoices):
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    account_id = models.UUIDField(editable=False)
    account_name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    # Why it failed (an exception's message): never a secret, archives carry them encrypted.
    error = models.TextField(blank=True, default="")
    # The alias in settings.STORAGES and the name the storage gave the file.
    storage = models.CharField(max_length=50, default="backups")
    path = models.CharField(max_length=1024, blank=True, default="")
    size = models.BigIntegerField(null=True, blank=True)
    # SHA-256 of the whole archive as stored: a copy fetched back can be checked against it.
    checksum = models.CharField(max_length=64, blank=True, default="")
    # The manifest, summarised: its format version, the schema's last migration per app, and
    # the rows the archive holds (schema and public rows together).
    format_version = models.IntegerField(null=True, blank=True)
    migrations = models.JSONField(default=dict, blank=True)
    rows = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["account_id", "-created_at"], name="backup_account_newest")]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["daily", "weekly", "manual"]), name="backup_kind_known"
            ),
            models.CheckConstraint(
                condition=Q(state__in=["running", "done", "failed"]), name="backup_state_known"
            ),
            # A done backup is somewhere, with its size and checksum.
            models.CheckConstraint(
                condition=~Q(state="done")
                | (~Q(path="") & Q(size__isnull=False) & ~Q(checksum="")),
                name="backup_done_is_stored",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} backup of {self.account_name} at {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def scheduled(self) -> bool:
        return self.kind in (self.Kind.DAILY, self.Kind.WEEKLY)
