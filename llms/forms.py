from typing import Any

from django import forms

from accounts.models import Account
from core.forms import SecretFieldsMixin
from llms.models import AccountLLM
from llms.selectors import available_llms
from llms.tools import ToolSpec


class AccountLLMForm(SecretFieldsMixin):
    secret_fields = ("api_key",)
    required_secrets = ("api_key",)

    enabled_models = forms.CharField(
        label="Enabled models",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="One model name per line. Agents may use only these.",
    )

    class Meta:
        model = AccountLLM
        fields = ["llm", "default_model"]
        labels = {"llm": "Provider"}

    def __init__(self, *args: Any, account: Account, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.account = account
        self.instance.account = account
        self.fields["llm"].queryset = available_llms()  # type: ignore[attr-defined]
        self.fields["api_key"].label = "API key"
        if self.instance.pk and not self.is_bound:
            self.initial["enabled_models"] = "\n".join(self.instance.enabled_models)
        self.order_fields(["llm", "api_key", "enabled_models", "default_model"])

    def clean_enabled_models(self) -> list[str]:
        raw = self.cleaned_data.get("enabled_models") or ""
        models = list(dict.fromkeys(line.strip() for line in raw.splitlines() if line.strip()))
        if not models:
            raise forms.ValidationError("Enable at least one model.")
        for name in models:
            if len(name) > 200 or any(c.isspace() for c in name):
                raise forms.ValidationError(f"“{name[:60]}” is not a model name.")
        return models

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        llm = cleaned.get("llm")
        if llm and (
            AccountLLM.objects.filter(account=self.account, llm=llm)
            .exclude(pk=self.instance.pk)
            .exists()
        ):
            self.add_error("llm", f"{llm} is already configured; edit that one instead.")
        default = cleaned.get("default_model")
        enabled = cleaned.get("enabled_models") or []
        if default and enabled and default not in enabled:
            self.add_error("default_model", "The default model must be one of the enabled models.")
        return cleaned


class ToolSettingsForm(forms.Form):
    """A tool's switch and its settings, one field per setting of the spec (by its kind); each
    value is then checked by the setting itself, whose message shows on its field."""

    enabled = forms.BooleanField(required=False, label="Agents of this account may use this tool")

    def __init__(self, *args: Any, spec: ToolSpec, current: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec
        if spec.for_knowledge_bases:
            # Not switched: every agent with a knowledge base has it (llms.tools.ToolSpec).
            del self.fields["enabled"]
        for setting in spec.settings:
            value = current.get(setting.name, setting.default)
            field: forms.Field
            if setting.kind == "int":
                field = forms.IntegerField(min_value=setting.min_value, max_value=setting.max_value)
            elif setting.kind == "bool":
                field = forms.BooleanField(required=False)
            elif setting.kind == "choice":
                field = forms.ChoiceField(choices=setting.choices)
            elif setting.kind == "domains":
                field = forms.CharField(
                    required=False, max_length=10_000, widget=forms.Textarea(attrs={"rows": 4})
                )
                value = "\n".join(value) if isinstance(value, list | tuple) else value
            else:
                field = forms.CharField(max_length=64)
            field.label = setting.label
            field.help_text = setting.help_text
            field.initial = value
            self.fields[f"setting_{setting.name}"] = field

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for setting in self.spec.settings:
            key = f"setting_{setting.name}"
            if key in cleaned:
                try:
                    cleaned[key] = setting.clean(cleaned[key])
                except ValueError as exc:
                    message = str(exc)
                    self.add_error(key, message[:1].upper() + message[1:] + ".")
        return cleaned

    def settings_values(self) -> dict[str, Any]:
        return {s.name: self.cleaned_data[f"setting_{s.name}"] for s in self.spec.settings}
