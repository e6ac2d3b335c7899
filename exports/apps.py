from django.apps import AppConfig


class ExportsConfig(AppConfig):
    name = "exports"
    verbose_name = "Data exports"

    def ready(self) -> None:
        from exports.services import delete_files_of_account
        from tenancy.services import account_deleting

        # A deleted account's archives go with it: they hold everything it had.
        account_deleting.connect(delete_files_of_account, dispatch_uid="exports-files")
