from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Palaver core"

    def ready(self) -> None:
        from config import checks  # noqa: F401  (registers the deployment checks)
