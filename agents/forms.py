from typing import Any

from django import forms
from django.db import IntegrityError

from accounts.models import Account
from agents.models import Agent
from channels_app.models import Channel
from core.forms import ModelChoiceField
from knowledge.models import KnowledgeBase
from llms.selectors import account_llms, enabled_tools
from llms.tools import KNOWLEDGE_BASE_TOOLS

# The form's fields in the groups the page shows them in (a fieldset each, with its legend).
FIELDSETS: list[tuple[str, list[str]]] = [
    ("Who it is", ["name", "nick", "enabled"]),
    ("How it answers", ["account_llm", "model", "system_prompt"]),
    ("Where it sits", ["channels", "presence", "answer_anywhere"]),
    ("What it may use", ["knowledge_bases", "tools"]),
    (
        "Limits",
        ["reply_max_lines", "cooldown_seconds", "max_steps", "context_tokens"],
    ),
    ("Budget", ["monthly_token_budget"]),
]
# Fields with a model default that a post may leave out (a client written before they existed):
# left out, they keep the agent's value. Sent empty, they are an error like any other.
KEEP_WHEN_OMITTED = [
    "presence",
    "reply_max_lines",
    "cooldown_seconds",
    "max_steps",
    "context_tokens",
]
# The database's case-insensitive unique constraints, and the field each one is about.
UNIQUE_CONSTRAINTS = {"agent_name_unique_ci": "name", "agent_nick_unique_ci": "nick"}


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = [name for _, names in FIELDSETS for name in names]
        widgets = {
            "system_prompt": forms.Textarea(attrs={"rows": 6}),
            "channels": forms.CheckboxSelectMultiple,
            "knowledge_bases": forms.CheckboxSelectMultiple,
            "tools": forms.CheckboxSelectMultiple,
            "presence": forms.RadioSelect,
        }
        help_texts = {
            "model": "One of the models enabled for the chosen provider.",
            "system_prompt": "Who the agent is and how it should behave.",
        }

    def __init__(
        self, *args: Any, account: Account, may_set_budget: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.omitted = [
            name
            for name in KEEP_WHEN_OMITTED
            if self.is_bound
            and self.fields[name].widget.value_omitted_from_data(
                self.data, self.files, self.add_prefix(name)
            )
        ]
        for name in self.omitted:
            self.fields[name].required = False
        if not may_set_budget:
            # A disabled field keeps the stored value whatever is posted.
            budget = self.fields["monthly_token_budget"]
            budget.disabled = True
            budget.help_text = f"{budget.help_text} Only the account's admins change it."
        # Every choice comes from this account only: its schema, or its rows in public.
        self.fields["account_llm"].queryset = account_llms(account=account)  # type: ignore[attr-defined]
        self.fields["channels"].queryset = Channel.objects.filter(  # type: ignore[attr-defined]
            kind=Channel.Kind.CHANNEL
        ).select_related("server")
        self.fields["channels"].label_from_instance = (  # type: ignore[attr-defined]
            lambda c: f"{c.name} on {c.server.name}"
        )
        self.fields["knowledge_bases"].queryset = KnowledgeBase.objects.all()  # type: ignore[attr-defined]
        self.fields["knowledge_bases"].help_text = (
            "The agent searches these (Knowledge search, no need to choose it below) and cites "
            "the passages it answers from."
        )
        # The knowledge tools come with a knowledge base: they are not chosen here.
        self.fields["tools"].queryset = enabled_tools(account=account).exclude(  # type: ignore[attr-defined]
            slug__in=KNOWLEDGE_BASE_TOOLS
        )
        self.fields["tools"].help_text = "Only tools enabled for the account are offered."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in self.omitted:
            cleaned[name] = getattr(self.instance, name)
        config = cleaned.get("account_llm")
        model = (cleaned.get("model") or "").strip()
        if config and model and model not in config.enabled_models:
            self.add_error(
                "model",
                f"{config.llm} has these models enabled: {', '.join(config.enabled_models)}.",
            )
        # Said here, on the field; the model's own constraint check then skips the field (it
        # has an error) rather than adding a generic message above the form.
        others = Agent.objects.exclude(pk=self.instance.pk)
        for field in ("name", "nick"):
            value = cleaned.get(field)
            if value and others.filter(**{f"{field}__iexact": value}).exists():
                self.add_error(field, self.taken_message(field))
        return cleaned

    @property
    def fieldsets(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(legend, [self[name] for name in names]) for legend, names in FIELDSETS]

    @staticmethod
    def taken_message(field: str) -> str:
        if field == "nick":
            return "Another agent of yours already uses this nick (in any case)."
        return "Another agent of yours already has this name (in any case)."

    @staticmethod
    def field_for_violation(exc: IntegrityError) -> str | None:
        """The field a unique violation from saving is about, or None for anything else."""
        text = str(exc)
        return next((f for c, f in UNIQUE_CONSTRAINTS.items() if c in text), None)


class ScheduleForm(forms.Form):
    """A new scheduled task. The times are checked here, field by field, with the same parsers
    agents.services.schedules.create_schedule uses, so each error shows under its field."""

    agent = ModelChoiceField(queryset=Agent.objects.none())
    channel = ModelChoiceField(
        queryset=Channel.objects.none(), help_text="One of the agent's channels: it answers there."
    )
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        help_text="What the agent should do each time, e.g. “Summarise yesterday's #ops”.",
    )
    when = forms.CharField(
        label="Once at",
        required=False,
        max_length=100,
        help_text="“2026-12-01 09:00”, “in 10 minutes” or “tomorrow at 9:00”.",
    )
    repeat = forms.CharField(
        required=False,
        max_length=100,
        help_text="“every day at 09:00”, “every weekday at 08:30”, “every monday at 10:00”, "
        "“every hour”, “every 15 minutes”, or cron (“0 9 * * 1-5”). Leave empty to run once.",
    )

    def __init__(self, *args: Any, timezone: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timezone = timezone
        self.fields["agent"].queryset = Agent.objects.filter(enabled=True)  # type: ignore[attr-defined]
        channels = Channel.objects.filter(agents__enabled=True).distinct()
        self.fields["channel"].queryset = channels.select_related("server")  # type: ignore[attr-defined]
        self.fields["channel"].label_from_instance = (  # type: ignore[attr-defined]
            lambda c: f"{c.name} on {c.server.name}"
        )
        self.fields["when"].help_text += f" Times are in {timezone}."

    def clean_when(self) -> str:
        from agents.services.schedules import parse_when

        value = str(self.cleaned_data.get("when") or "").strip()
        if value:
            try:
                parse_when(value, timezone=self.timezone)
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from None
        return value

    def clean_repeat(self) -> str:
        from agents.services.schedules import parse_repeat

        value = str(self.cleaned_data.get("repeat") or "").strip()
        if value:
            try:
                parse_repeat(value)
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from None
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        agent, channel = cleaned.get("agent"), cleaned.get("channel")
        if agent and channel and not agent.channels.filter(pk=channel.pk).exists():
            self.add_error("channel", f"{agent.name} is not in {channel.name}.")
        unsaid = not cleaned.get("when") and not cleaned.get("repeat")
        if unsaid and not self.has_error("when") and not self.has_error("repeat"):
            self.add_error("when", "Say when (once), or how often below.")
        return cleaned
