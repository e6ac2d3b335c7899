from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from llms.models import LLM, Tool


@admin.register(LLM)
class LLMAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "base_url", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "base_url"]


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    """Tools are defined in code (llms.tools); the table mirrors it, so it is read-only here."""

    list_display = ["name", "slug", "is_available"]
    readonly_fields = ["slug", "name", "description", "parameters", "is_available"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
