from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.throttle import add_key_fragments
        from tenancy.services import account_deleting

        account_deleting.connect(add_key_fragments, dispatch_uid="accounts-throttle-keys")
