"""A person's export of their account's data (its schema): one archive built by a worker
(exports.services.build_export_now), kept in the "exports" storage until `expires_at`."""

import uuid

from django.db import models


class Export(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Waiting for a worker"
        RUNNING = "running", "Being built"
        READY = "ready", "Ready to download"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    IN_PROGRESS = (Status.QUEUED, Status.RUNNING)

    # Random: an export's address names nothing another account could guess or share.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    requested_by = models.CharField(max_length=254, blank=True)
    # Progress, in lines of history (the bulk of any account): done of total.
    lines_total = models.BigIntegerField(default=0)
    lines_done = models.BigIntegerField(default=0)
    # The archive in the "exports" storage (exports.storage), once ready; empty before and after.
    file_name = models.CharField(max_length=300, blank=True)
    size = models.BigIntegerField(default=0)
    # Why it failed, in words a person understands.
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # The worker's last sign of life: an export in progress that stopped moving is stale.
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One export in progress per account (the schema is the account).
            models.UniqueConstraint(
                models.Value(True),
                condition=models.Q(status__in=["queued", "running"]),
                name="export_one_in_progress",
            ),
            models.CheckConstraint(
                condition=models.Q(lines_done__gte=0, lines_total__gte=0, size__gte=0),
                name="export_counts_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"Export {self.pk} ({self.status})"
