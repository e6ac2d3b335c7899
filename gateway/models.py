from django.db import models


class JournalPosition(models.Model):
    """The highest journal sequence number committed for one account by one gateway
    generation (gateway/journal.py): written in the same transaction as the lines, so a replay
    after a kill skips exactly what was stored. Rows go when their generation's journal
    segments are gone."""

    pk = models.CompositePrimaryKey("generation", "account_id")
    generation = models.UUIDField()
    # Not a foreign key: an account deleted meanwhile must not fail the batch of the others.
    account_id = models.UUIDField()
    seq = models.BigIntegerField()

    class Meta:
        db_table = "gateway_journal_position"

    def __str__(self) -> str:
        return f"{self.generation} {self.account_id} {self.seq}"
