"""Catalogs operators manage (LLM providers, tools) and each account's configuration of them.

These live in the public schema, so every per-account row carries its account and every read
goes through llms.selectors, which takes the account.
"""

import uuid

from django.db import models

from core.fields import EncryptedTextField


class LLM(models.Model):
    """A provider endpoint in the catalog, e.g. OpenAI or a self-hosted compatible server."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    base_url = models.URLField(max_length=300)
    known_models = models.JSONField(
        default=list, blank=True, help_text="Model names offered by default, one per entry."
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "LLM provider"

    def __str__(self) -> str:
        return self.name


class Tool(models.Model):
    """A tool agents may call. Defined in code (llms.tools), synced into this table."""

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField()
    parameters = models.JSONField(default=dict, blank=True)
    is_available = models.BooleanField(
        default=True, help_text="False when the code no longer defines it."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AccountLLM(models.Model):
    """An account's credentials and model choice for one catalog provider."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(
        "accounts.Account", on_delete=models.CASCADE, related_name="llm_configs"
    )
    llm = models.ForeignKey(LLM, on_delete=models.PROTECT, related_name="account_configs")
    api_key = EncryptedTextField()
    enabled_models = models.JSONField(default=list)
    default_model = models.CharField(max_length=200)
    # Set when the provider answered 401 to this key; cleared when the key is changed.
    key_rejected_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "llm"], name="account_llm_unique"),
        ]
        ordering = ["llm__name"]
        verbose_name = "account LLM provider"

    def __str__(self) -> str:
        return f"{self.llm.name} ({self.default_model})"


class AccountTool(models.Model):
    """Whether an account lets its agents use a tool, and with which settings."""

    account = models.ForeignKey(
        "accounts.Account", on_delete=models.CASCADE, related_name="tool_configs"
    )
    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="account_configs")
    enabled = models.BooleanField(default=False)
    settings = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "tool"], name="account_tool_unique"),
        ]
        ordering = ["tool__name"]

    def __str__(self) -> str:
        return f"{self.tool.name}: {'on' if self.enabled else 'off'}"
