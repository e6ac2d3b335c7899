from typing import Any

from django import forms

from accounts.models import Account
from agents.models import Agent
from channels_app.models import Channel
from knowledge.models import KnowledgeBase
from llms.selectors import account_llms, enabled_tools


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = [
            "name",
            "nick",
            "enabled",
            "account_llm",
            "model",
            "system_prompt",
            "channels",
            "knowledge_bases",
            "tools",
        ]
        widgets = {
            "system_prompt": forms.Textarea(attrs={"rows": 6}),
            "channels": forms.CheckboxSelectMultiple,
            "knowledge_bases": forms.CheckboxSelectMultiple,
            "tools": forms.CheckboxSelectMultiple,
        }
        help_texts = {
            "model": "One of the models enabled for the chosen provider.",
            "system_prompt": "Who the agent is and how it should behave.",
        }

    def __init__(self, *args: Any, account: Account, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every choice comes from this account only: its schema, or its rows in public.
        self.fields["account_llm"].queryset = account_llms(account=account)  # type: ignore[attr-defined]
        self.fields["channels"].queryset = Channel.objects.filter(  # type: ignore[attr-defined]
            kind=Channel.Kind.CHANNEL
        ).select_related("server")
        self.fields["channels"].label_from_instance = (  # type: ignore[attr-defined]
            lambda c: f"{c.name} on {c.server.name}"
        )
        self.fields["knowledge_bases"].queryset = KnowledgeBase.objects.all()  # type: ignore[attr-defined]
        self.fields["tools"].queryset = enabled_tools(account=account)  # type: ignore[attr-defined]
        self.fields["tools"].help_text = "Only tools enabled for the account are offered."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        config = cleaned.get("account_llm")
        model = (cleaned.get("model") or "").strip()
        if config and model and model not in config.enabled_models:
            self.add_error(
                "model",
                f"{config.llm} has these models enabled: {', '.join(config.enabled_models)}.",
            )
        nick = cleaned.get("nick")
        if nick and Agent.objects.filter(nick__iexact=nick).exclude(pk=self.instance.pk).exists():
            self.add_error("nick", "Another agent of yours already uses this nick.")
        return cleaned
