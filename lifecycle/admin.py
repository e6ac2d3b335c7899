from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from lifecycle.models import Backup


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    """The registry, to read: backups are made by the schedule and the commands, and deleted by
    retention (`prune_backups`), which deletes the file with the row."""

    list_display = ["account_name", "account_id", "kind", "created_at", "size_shown", "rows"]
    list_display += ["state"]
    list_filter = ["state", "kind"]
    search_fields = ["account_name", "account_id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]

    @admin.display(description="size", ordering="size")
    def size_shown(self, backup: Backup) -> str:
        return filesizeformat(backup.size) if backup.size is not None else "-"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Backup._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
