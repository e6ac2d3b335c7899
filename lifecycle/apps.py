"""An account's whole life outside of everyday use: backups (made, scheduled, kept, pruned),
restores (same account, new account, another database), and the registry of what was made.

Public-schema app: the backup registry outlives the account's schema.
"""

from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "lifecycle"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Account lifecycle"

    def ready(self) -> None:
        from lifecycle.registry import forget_backups_of_purged_account
        from tenancy.services import account_deleting

        # A purged account's backups past retention go with it; the others age out.
        account_deleting.connect(forget_backups_of_purged_account, dispatch_uid="lifecycle-backups")
