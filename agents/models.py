from django.core.validators import MaxValueValidator, MinValueValidator
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

    class Presence(models.TextChoices):
        OWN_CONNECTION = "own", "Its own connection, under its own nick"
        USER_CONNECTION = "user", "Through your connection (for networks that limit connections)"

    presence = models.CharField(
        max_length=10,
        choices=Presence.choices,
        default=Presence.OWN_CONNECTION,
        help_text="How the agent sits in its channels.",
    )
    answer_anywhere = models.BooleanField(
        "Answer when named anywhere in a line",
        default=False,
        help_text="Otherwise only lines that start with its nick (“helper: …”) call it.",
    )
    reply_max_lines = models.PositiveSmallIntegerField(
        "Most lines per reply",
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="A longer answer is cut there, with a link to the whole answer.",
    )
    cooldown_seconds = models.PositiveIntegerField(
        "Cool-down per channel (seconds)",
        default=10,
        validators=[MaxValueValidator(3600)],
        help_text="After answering in a channel, the agent ignores it for this long.",
    )
    max_steps = models.PositiveSmallIntegerField(
        "Most model calls per run",
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="Tool calls happen between model calls; the run stops at this many.",
    )
    context_tokens = models.PositiveIntegerField(
        "Channel context (tokens)",
        default=2000,
        validators=[MinValueValidator(0), MaxValueValidator(100_000)],
        help_text="How much of the channel's recent lines the model sees.",
    )
    monthly_token_budget = models.PositiveIntegerField(
        "Monthly token budget",
        null=True,
        blank=True,
        help_text="Tokens this agent may use per calendar month. Empty: only the account's.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="agent_name_unique_ci"),
            models.UniqueConstraint(Lower("nick"), name="agent_nick_unique_ci"),
        ]

    def __str__(self) -> str:
        return self.name


class Task(models.Model):
    """One run of an agent: what it was asked, what it answered, what it cost."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Trigger(models.TextChoices):
        MENTION = "mention", "Addressed in a channel"
        QUERY = "query", "Private message"
        ASK = "ask", "/ask from the web chat"
        SCHEDULE = "schedule", "Scheduled"
        MANUAL = "manual", "Run from the Tasks page"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tasks")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    # Where the answer goes: a channel (or query buffer) of the account, or a nick on a server
    # for private messages to an agent's own connection.
    channel = models.ForeignKey(
        "channels_app.Channel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    server = models.ForeignKey(
        "channels_app.Server", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reply_to = models.CharField(max_length=200, blank=True)
    requested_by = models.CharField(max_length=200, blank=True)
    source_message_id = models.BigIntegerField(null=True, blank=True)
    schedule = models.ForeignKey(
        "Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    input = models.TextField()
    # The conversation sent to the model on its first call (system, context, question).
    context = models.JSONField(default=list, blank=True)
    output = models.TextField(blank=True)
    # One line a person understands, when the run failed.
    error = models.TextField(blank=True)
    reply_lines_sent = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_line_at = models.DateTimeField(null=True, blank=True)
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


class ModelCall(models.Model):
    """One call to a provider: the usage record (tokens, latency, outcome)."""

    class Outcome(models.TextChoices):
        OK = "ok", "Answered"
        AUTH = "auth", "Key rejected"
        RATE_LIMITED = "rate_limited", "Rate limited"
        TIMEOUT = "timeout", "Timed out"
        NOT_FOUND = "not_found", "Model not found"
        UNAVAILABLE = "unavailable", "Provider unreachable"
        BAD_REQUEST = "bad_request", "Request refused"
        ERROR = "error", "Failed"

    class Purpose(models.TextChoices):
        CHAT = "chat", "Agent run"
        EMBEDDINGS = "embeddings", "Knowledge embeddings"

    purpose = models.CharField(max_length=20, choices=Purpose.choices, default=Purpose.CHAT)
    task = models.ForeignKey(
        Task, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_calls"
    )
    # Kept after the agent is deleted: usage is history.
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_calls"
    )
    agent_name = models.CharField(max_length=100)
    step = models.PositiveSmallIntegerField(default=0)
    provider = models.CharField(max_length=100)
    model = models.CharField(max_length=200)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["agent", "created_at"], name="modelcall_agent_time")]

    def __str__(self) -> str:
        return f"{self.provider} {self.model}: {self.outcome}"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ToolCall(models.Model):
    """One tool call of a run: what the model asked for and what it got back."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="tool_calls")
    step = models.PositiveSmallIntegerField(default=0)
    call_id = models.CharField(max_length=200, blank=True)
    tool = models.CharField(max_length=60)
    arguments = models.JSONField(default=dict, blank=True)
    # What the model saw; arguments that did not parse are kept as text.
    raw_arguments = models.TextField(blank=True)
    result = models.TextField(blank=True)
    ok = models.BooleanField(default=True)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["started_at", "pk"]

    def __str__(self) -> str:
        return f"{self.tool} ({'ok' if self.ok else 'error'})"


class Schedule(models.Model):
    """A task an agent runs at a time, once or repeating, answering in a channel.

    `next_run_at` is mirrored in the public index (scheduling.ScheduleEntry), which is what the
    scheduler reads: it never enters account schemas to find due work."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="schedules")
    prompt = models.TextField()
    channel = models.ForeignKey("channels_app.Channel", on_delete=models.CASCADE, related_name="+")
    # Once: run_at. Repeating: a cron expression (what the user typed, e.g. "every day at
    # 09:00", is kept in `description`), evaluated in `timezone`.
    run_at = models.DateTimeField(null=True, blank=True)
    cron = models.CharField(max_length=100, blank=True)
    description = models.CharField(max_length=200, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["next_run_at", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=~(models.Q(run_at__isnull=True) & models.Q(cron="")),
                name="schedule_has_a_time",
            ),
        ]

    def __str__(self) -> str:
        return self.description or self.cron or f"once at {self.run_at}"

    @property
    def repeats(self) -> bool:
        return bool(self.cron)
