"""Form pieces shared by every app."""

from typing import Any, cast

from django import forms
from django.db import models
from django.utils.text import capfirst


class SecretFieldsMixin(forms.ModelForm):
    """Write-only secrets: never rendered back; blank keeps the stored value; a box clears it.

    Subclasses list the model's secret fields in `secret_fields`; they must not be in Meta.fields.
    Call `secret_changes()` after validation for {field: new value, or "" to clear}.
    """

    secret_fields: tuple[str, ...] = ()
    required_secrets: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        instance: models.Model = self.instance
        for name in self.secret_fields:
            model_field = cast("models.Field[Any, Any]", instance._meta.get_field(name))
            is_set = bool(getattr(instance, name, ""))
            required = name in self.required_secrets and not is_set
            self.fields[name] = forms.CharField(
                label=capfirst(str(model_field.verbose_name)),
                required=required,
                strip=False,
                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
                help_text=(
                    "Stored, encrypted. Leave blank to keep it."
                    if is_set
                    else model_field.help_text or "Stored encrypted; never shown again."
                ),
            )
            if is_set and name not in self.required_secrets:
                self.fields[f"clear_{name}"] = forms.BooleanField(
                    label=f"Remove the stored {str(model_field.verbose_name).lower()}",
                    required=False,
                )

    def secret_changes(self) -> dict[str, str]:
        changes: dict[str, str] = {}
        for name in self.secret_fields:
            value = self.cleaned_data.get(name) or ""
            if value:
                changes[name] = value
            elif self.cleaned_data.get(f"clear_{name}"):
                changes[name] = ""
        return changes


def apply_secret_changes(instance: models.Model, changes: dict[str, str]) -> None:
    for name, value in changes.items():
        setattr(instance, name, value)


class FetchedModelChoiceIterator(forms.models.ModelChoiceIterator):
    """Django's iterator reads the choices through queryset.iterator(): a server-side cursor,
    three round trips more (DECLARE, FETCH, CLOSE) for a select of a few dozen rows. A select's
    choices are one page of options: fetch them with one query."""

    def __iter__(self) -> Any:
        if self.field.empty_label is not None:
            yield ("", self.field.empty_label)
        for obj in self.queryset:
            yield self.choice(obj)


class ModelChoiceField(forms.ModelChoiceField):
    """forms.ModelChoiceField whose choices are fetched with one query (see above)."""

    iterator = FetchedModelChoiceIterator
