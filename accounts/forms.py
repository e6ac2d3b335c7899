from typing import Any

from django import forms
from django.contrib.auth import password_validation

from accounts.models import Account, User, normalize_email


class SignUpForm(forms.Form):
    account_name = forms.CharField(
        max_length=100,
        help_text="Your name, or your team's. You can have only one account per email.",
    )
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    password = forms.CharField(
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email=email).exists():
            raise forms.ValidationError("An account already uses this email address.")
        return email

    def clean_account_name(self) -> str:
        name: str = self.cleaned_data["account_name"].strip()
        if Account.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError("That account name is taken.")
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        if password:
            probe = User(email=cleaned.get("email", ""))
            try:
                password_validation.validate_password(password, probe)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return cleaned


class SignInForm(forms.Form):
    email = forms.EmailField(
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})
    )
    password = forms.CharField(
        strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


class PasswordResetRequestForm(forms.Form):
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})
    )


class DeleteAccountForm(forms.Form):
    """Deleting an account: its name typed again, and the password of the admin asking."""

    account_name = forms.CharField(
        label="Account name",
        max_length=100,
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["account_name"].help_text = f"Type “{user.account.name}” to confirm."

    def clean_account_name(self) -> str:
        name: str = self.cleaned_data["account_name"]
        if name.strip() != self.user.account.name:
            raise forms.ValidationError(
                f"That is not the account's name: type “{self.user.account.name}” exactly."
            )
        return name

    def clean_password(self) -> str:
        password: str = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise forms.ValidationError("That is not your password.")
        return password
