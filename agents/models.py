from django.db import models
from django.db.models.functions import Lower

from channels_app.validators import validate_nick


class Agent(models.Model):
    """An AI participant of the account: it sits in channels under its own nick."""

    name = models.CharField(max_length=100)
    nick = models.CharField("IRC nick", max_length=30, validators=[validate_nick])
    system_prompt = models.TextField(blank=True)
    # The provider configuration lives in the public schema (llms.AccountLLM). No database
    # constraint crosses schemas; llms.services refuses to delete a provider an agent uses.
    account_llm = models.ForeignKey(
        "llms.AccountLLM",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        verbose_name="LLM provider",
    )
    model = models.CharField(max_length=200)
    channels = models.ManyToManyField("channels_app.Channel", blank=True, related_name="agents")
    tools = models.ManyToManyField("llms.Tool", blank=True, db_constraint=False, related_name="+")
    knowledge_bases = models.ManyToManyField(
        "knowledge.KnowledgeBase", blank=True, related_name="agents"
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(Lower("name"), name="agent_name_unique_ci")]

    def __str__(self) -> str:
        return self.name


class Task(models.Model):
    """One run of an agent: what it was asked, what it answered, what it cost."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tasks")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    input = models.TextField()
    output = models.TextField(blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["agent", "-created_at"], name="task_agent_recent"),
            models.Index(
                fields=["created_at"],
                name="task_pending",
                condition=models.Q(status__in=["queued", "running"]),
            ),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk} ({self.status})"
