"""The public index of scheduled tasks: (account, schedule, next run).

The scheduler's tick reads only this table, so finding due work costs one indexed query
however many accounts there are; the schedule itself (agents.Schedule) stays in the account's
schema, and each entry is written in the same transaction as the schedule it mirrors."""

from django.db import models


class ScheduleEntry(models.Model):
    account = models.ForeignKey(
        "accounts.Account", on_delete=models.CASCADE, related_name="schedule_entries"
    )
    schedule_id = models.BigIntegerField()
    next_run_at = models.DateTimeField()
    # Set when a tick hands the entry to a worker; a worker that died leaves it to lapse.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "schedule_id"], name="schedule_entry_unique"
            ),
        ]
        indexes = [models.Index(fields=["next_run_at"], name="schedule_entry_due")]

    def __str__(self) -> str:
        return f"{self.account_id}/{self.schedule_id} at {self.next_run_at}"
