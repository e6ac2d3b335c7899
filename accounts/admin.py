from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from accounts.models import Account, Session, User
from accounts.services import check_credentials, throttled_message
from accounts.throttle import client_address
from tenancy.services import (
    AccountDeletionError,
    cancel_account_deletion,
    provision_account,
    purge_account,
    request_account_deletion,
)


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """The admin's sign-in, through the same throttled check as the site's sign-in page."""

    def clean(self) -> dict[str, Any]:
        email = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if email is not None and password:
            result = check_credentials(
                request=self.request,
                email=email,
                password=password,
                client=client_address(self.request) if self.request else None,
            )
            if result.throttled:
                raise forms.ValidationError(
                    throttled_message(result.retry_after_seconds), code="throttled"
                )
            if result.user is None:
                raise self.get_invalid_login_error()
            self.user_cache = result.user
            self.confirm_login_allowed(result.user)
        return self.cleaned_data


admin.site.login_form = ThrottledAdminAuthenticationForm


class AccountCreationForm(forms.ModelForm):
    class Meta:
        model = Account
        fields = ["name", "settings", "monthly_token_budget"]


class PendingDeletionFilter(admin.SimpleListFilter):
    title = "deletion"
    parameter_name = "deletion"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "Pending deletion"), ("active", "Not pending")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Account]) -> QuerySet[Account]:
        if self.value() == "pending":
            return queryset.filter(deletion_requested_at__isnull=False)
        if self.value() == "active":
            return queryset.filter(deletion_requested_at__isnull=True)
        return queryset


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "user_count",
        "monthly_token_budget",
        "schema_name",
        "created_at",
        "purge_after",
    ]
    list_filter = [PendingDeletionFilter]
    search_fields = ["name", "schema_name", "users__email"]
    readonly_fields = [
        "id",
        "schema_name",
        "created_at",
        "deletion_requested_at",
        "deletion_requested_by",
        "purge_after",
    ]
    fields = [
        "id",
        "name",
        "settings",
        "monthly_token_budget",
        "schema_name",
        "created_at",
        "deletion_requested_at",
        "deletion_requested_by",
        "purge_after",
    ]
    actions = ["schedule_deletion", "cancel_deletion", "purge_now"]
    ordering = ["-created_at"]
    delete_confirmation_template = "admin/accounts/account/delete_confirmation.html"
    delete_selected_confirmation_template = (
        "admin/accounts/account/delete_selected_confirmation.html"
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Account]:
        return super().get_queryset(request).annotate(user_count=Count("users"))

    @admin.display(description="Users", ordering="user_count")
    def user_count(self, obj: Account) -> int:
        return int(getattr(obj, "user_count", 0))

    def get_form(
        self, request: HttpRequest, obj: Any | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = AccountCreationForm
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Account, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # Creating an account here makes its schema, through the one provisioning function.
        created = provision_account(name=obj.name, settings=obj.settings)
        if obj.monthly_token_budget is not None:
            created.monthly_token_budget = obj.monthly_token_budget
            created.save(update_fields=["monthly_token_budget"])
        obj.pk = created.pk
        obj.schema_name = created.schema_name
        obj.created_at = created.created_at
        obj._state.adding = False
        messages.info(request, f"Created schema {created.schema_name}.")

    # The admin's own Delete (with its confirmation page) purges at once: an operator's tool.
    def delete_model(self, request: HttpRequest, obj: Account) -> None:
        purge_account(account=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        for account in queryset:
            purge_account(account=account)

    def _each(self, request: HttpRequest, queryset: QuerySet[Account], verb: str, act: Any) -> None:
        done, refused = [], []
        for account in queryset:
            try:
                act(account)
            except AccountDeletionError as exc:
                refused.append(str(exc))
            else:
                done.append(account.name)
        if done:
            messages.success(request, f"{verb}: {', '.join(done)}.")
        for reason in refused:
            messages.warning(request, reason)

    @admin.action(description="Schedule deletion of the selected accounts (grace period)")
    def schedule_deletion(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        actor = f"operator {getattr(request.user, 'email', '')}".strip()
        self._each(
            request,
            queryset,
            "Scheduled for deletion",
            lambda a: request_account_deletion(account=a, actor=actor),
        )

    @admin.action(description="Cancel the deletion of the selected accounts")
    def cancel_deletion(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        actor = f"operator {getattr(request.user, 'email', '')}".strip()
        self._each(
            request,
            queryset,
            "Deletion cancelled",
            lambda a: cancel_account_deletion(account=a, actor=actor),
        )

    @admin.action(description="Purge now the selected accounts pending deletion")
    def purge_now(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        def purge(account: Account) -> None:
            if not account.pending_deletion:
                raise AccountDeletionError(
                    f"{account.name} is not pending deletion: schedule its deletion first, "
                    "or use Delete."
                )
            purge_account(account=account)

        self._each(request, queryset, "Purged", purge)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "account", "is_account_admin", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_account_admin", "is_active"]
    search_fields = ["email", "account__name"]
    list_select_related = ["account"]
    readonly_fields = ["account", "date_joined", "last_login"]
    fieldsets = (
        (None, {"fields": ("email", "password", "account")}),
        ("Roles", {"fields": ("is_active", "is_account_admin", "is_staff", "is_superuser")}),
        ("Dates", {"fields": ("date_joined", "last_login")}),
    )
    filter_horizontal = ()

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A person comes with an account and a schema: sign-up, or `provision_account`.
        return False


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = [
        "user",
        "ip_address",
        "short_user_agent",
        "created_at",
        "last_seen_at",
        "expire_date",
    ]
    list_select_related = ["user"]
    search_fields = ["user__email", "ip_address"]
    readonly_fields = [
        "user",
        "ip_address",
        "user_agent",
        "created_at",
        "last_seen_at",
        "expire_date",
    ]
    exclude = ["session_data", "session_key"]
    ordering = ["-last_seen_at"]

    @admin.display(description="Browser")
    def short_user_agent(self, obj: Session) -> str:
        return obj.user_agent[:60]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
