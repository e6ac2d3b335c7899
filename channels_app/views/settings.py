"""The account's chat settings page (admins change them; everyone sees them)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.models import User
from channels_app.forms import ChatSettingsForm
from channels_app.selectors.settings import THEMES, theme
from channels_app.services.settings import save_chat_settings


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


@login_required
def chat_settings(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    account = user.account
    if request.method == "POST" and not user.is_account_admin:
        raise PermissionDenied("Only the account's admins change its chat settings.")
    form = ChatSettingsForm.for_account(account, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            save_chat_settings(
                account=account,
                highlight_words=form.cleaned_data["highlight_words"],
                history_retention_days=form.cleaned_data["history_retention_days"],
                time_format=form.cleaned_data["time_format"] or None,
                theme=form.cleaned_data["theme"] or None,
                # A checkbox is absent when off: only a form that showed it may switch it off.
                link_previews=form.cleaned_data["link_previews"]
                if "time_format" in request.POST
                else None,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Chat settings saved.")
            return redirect("history:chat_settings")
    return render(
        request,
        "channels_app/settings_chat.html",
        {
            "form": form,
            "can_edit": user.is_account_admin,
            "theme_label": THEMES[theme(account)],
        },
        status=400 if form.is_bound and form.errors else 200,
    )
