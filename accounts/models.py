"""Identity, in the public schema: accounts (the tenants), their users and sessions."""

import uuid
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.contrib.postgres.functions import RandomUUID
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models
from django.db.models.functions import Lower
from django_tenants.models import TenantMixin

SCHEMA_PREFIX = "account_"


def schema_name_for(account_id: uuid.UUID) -> str:
    # Derived from the UUID only: never from anything a user typed.
    return f"{SCHEMA_PREFIX}{account_id.hex}"


class Account(TenantMixin):
    """One customer. All of its data lives in its own PostgreSQL schema."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    settings = models.JSONField(default=dict, blank=True)
    # Set by an operator; empty means AGENT_MONTHLY_TOKEN_BUDGET, the deployment's default.
    monthly_token_budget = models.PositiveBigIntegerField(
        "Monthly token budget",
        null=True,
        blank=True,
        help_text="LLM tokens the account's agents may use per calendar month. "
        "Empty: the deployment default (AGENT_MONTHLY_TOKEN_BUDGET).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Deletion with a grace period (tenancy.services.request_account_deletion): while set, the
    # account's users see only the page that lets an admin cancel, the gateway holds none of
    # its connections and its scheduled tasks are out of the index; at `purge_after` the beat
    # task purges it (tenancy.tasks.purge_expired_accounts).
    deletion_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    deletion_requested_by = models.CharField(max_length=254, blank=True, editable=False)
    purge_after = models.DateTimeField(null=True, blank=True, editable=False)

    # Schemas are created and dropped by tenancy.provisioning, in the same transaction as the row.
    auto_create_schema = False
    auto_drop_schema = False

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("name"), name="account_name_unique_ci"),
            models.CheckConstraint(
                condition=models.Q(deletion_requested_at__isnull=True, purge_after__isnull=True)
                | models.Q(deletion_requested_at__isnull=False, purge_after__isnull=False),
                name="account_deletion_state_whole",
            ),
        ]
        indexes = [
            # The beat task's question: whose grace period is over. Few rows are ever pending.
            models.Index(
                fields=["purge_after"],
                name="account_purge_due",
                condition=models.Q(purge_after__isnull=False),
            ),
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def pending_deletion(self) -> bool:
        return self.deletion_requested_at is not None

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.schema_name:
            self.schema_name = schema_name_for(self.id)
        super().save(*args, **kwargs)


def normalize_email(email: str) -> str:
    return email.strip().lower()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def get_by_natural_key(self, username: str | None) -> "User":
        return self.get(email=normalize_email(username or ""))

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> "User":
        """Create a user with an account and schema of their own (see accounts.services)."""
        from accounts.services import sign_up

        return sign_up(
            account_name=extra.pop("account_name", None) or normalize_email(email),
            email=email,
            password=password,
            **extra,
        )

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> "User":
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Belongs to exactly one account; operators are staff."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="users")
    # Unique as stored; the check constraint below keeps it stored lower-case, which makes the
    # uniqueness case-insensitive in the database itself.
    email = models.EmailField(max_length=254, unique=True)
    is_account_admin = models.BooleanField(
        default=False, help_text="May manage the account's settings and people."
    )
    is_staff = models.BooleanField(default=False, help_text="Operator: may use the admin site.")
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(auto_now_add=True)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(email=Lower(models.F("email"))), name="user_email_lowercase"
            ),
        ]
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = normalize_email(self.email)

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.email = normalize_email(self.email)
        super().save(*args, **kwargs)


class Session(AbstractBaseSession):
    """A signed-in browser. Django's session data plus who, from where, and when."""

    user = models.ForeignKey(
        User, on_delete=models.CASCADE, null=True, blank=True, related_name="sessions"
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    # What pages and URLs name a session by: the session key itself is a bearer credential.
    public_id = models.UUIDField(db_default=RandomUUID(), unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-last_seen_at"], name="session_user_seen")]

    @classmethod
    def get_session_store_class(cls) -> Any:
        from accounts.session_store import SessionStore

        return SessionStore
