from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_tools(sender: Any, **kwargs: Any) -> None:
    from django_tenants.utils import get_public_schema_name

    from tenancy.context import connection

    if connection.schema_name != get_public_schema_name():
        return
    from llms.services import sync_tool_catalog

    sync_tool_catalog()


class LlmsConfig(AppConfig):
    name = "llms"
    verbose_name = "LLM providers and tools"

    def ready(self) -> None:
        post_migrate.connect(_sync_tools, sender=self, dispatch_uid="llms.sync_tools")
