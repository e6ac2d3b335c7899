"""Pages over an account's history: search, notifications, chat settings.

Every view runs in the signed-in user's account schema (tenancy middleware), so an object id
that belongs to another account simply does not exist here: 404.
"""

from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from channels_app.account_settings import ChatSettingsForm, save_chat_settings
from channels_app.models import Channel, Notification
from channels_app.search import (
    MAX_QUERY_LENGTH,
    Cursor,
    SearchPage,
    SearchQueryError,
    line_url,
    search_messages,
    strip_formatting,
)

NOTIFICATIONS_SHOWN = 100
READ_NOTIFICATIONS_SHOWN = 20
# Sent with every change to notifications: the nav badge listens for it and reloads its count.
NOTIFICATIONS_CHANGED = "notifications-changed"


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


# --- search ----------------------------------------------------------------------------------


class ChannelChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        if obj.kind == Channel.Kind.SERVER:
            return f"{obj.server.name} · server messages"
        return f"{obj.server.name} · {obj.name}"


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Search",
        required=False,
        max_length=MAX_QUERY_LENGTH,
        widget=forms.TextInput(
            attrs={"placeholder": "e.g. deploy -staging", "enterkeyhint": "search"}
        ),
        help_text=(
            '"exact phrase", -left out, this OR that. Words match whole: search for deploy, '
            "not dep."
        ),
    )
    channel = ChannelChoiceField(
        # only(): the channel key and server passwords would be decrypted for nothing.
        queryset=Channel.objects.select_related("server")
        .only("id", "name", "kind", "server__name")
        .order_by("server__name", "name"),
        required=False,
        empty_label="All channels",
    )
    nick = forms.CharField(label="Said by", required=False, max_length=100)
    since = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    before = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean_nick(self) -> str:
        return str(self.cleaned_data["nick"]).strip()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "The end date comes before the start date.")
        return cleaned


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET or None)
    page: SearchPage | None = None
    problem = ""
    next_url = ""
    status = 200
    if form.is_bound and not form.is_valid():
        status = 400
    elif form.is_bound:
        data = form.cleaned_data
        channel: Channel | None = data["channel"]
        try:
            page = search_messages(
                data["q"],
                channel_id=channel.pk if channel else None,
                nick=data["nick"],
                since=_day_start(data["since"]) if data["since"] else None,
                # The end date is inclusive: everything before the next day starts.
                until=_day_start(data["until"] + timedelta(days=1)) if data["until"] else None,
                before=Cursor.decode(data["before"]),
            )
        except SearchQueryError as exc:
            problem = str(exc)
        if page is not None and page.next_cursor is not None:
            params = request.GET.copy()
            params["before"] = page.next_cursor.encode()
            next_url = f"?{params.urlencode()}"
    return render(
        request,
        "channels_app/search.html",
        {
            "form": form,
            "page": page,
            "problem": problem,
            "next_url": next_url,
            "paged": bool(form.is_bound and form.data.get("before")),
            # The filters stay open once used, or when one of them has an error.
            "filtered": any(
                form.data.get(name) or form.errors.get(name)
                for name in ("channel", "nick", "since", "until")
            ),
        },
        status=status,
    )


# --- notifications -----------------------------------------------------------------------------


def _with_lines() -> QuerySet[Notification]:
    # only(): the channel key and server passwords would be decrypted for nothing.
    return Notification.objects.select_related("message__channel__server").only(
        "id",
        "kind",
        "read_at",
        "created_at",
        "message__id",
        "message__channel_id",
        "message__kind",
        "message__sender",
        "message__text",
        "message__server_time",
        "message__channel__name",
        "message__channel__server__name",
    )


def unread_notifications() -> QuerySet[Notification]:
    """The active account's unread notifications, newest first, with their line and buffer."""
    return _with_lines().filter(read_at__isnull=True).order_by("-created_at", "-id")


def read_notifications() -> QuerySet[Notification]:
    return _with_lines().filter(read_at__isnull=False).order_by("-created_at", "-id")


@transaction.atomic
def mark_notification_read(*, notification: Notification) -> Notification:
    if notification.read_at is None:
        notification.read_at = timezone.now()
        # Only if still unread: a second tab marking it too keeps the first time.
        Notification.objects.filter(pk=notification.pk, read_at__isnull=True).update(
            read_at=notification.read_at
        )
    return notification


@transaction.atomic
def mark_all_notifications_read() -> int:
    return Notification.objects.filter(read_at__isnull=True).update(read_at=timezone.now())


def notification_context(notification: Notification) -> dict[str, Any]:
    """What a row shows: the line as plain text (the template escapes it) and where it leads."""
    message = notification.message
    return {
        "notification": notification,
        "text": strip_formatting(message.text),
        "url": line_url(message.channel_id, message.pk),
    }


@login_required
@require_GET
def notification_list(request: HttpRequest) -> HttpResponse:
    unread = list(unread_notifications()[: NOTIFICATIONS_SHOWN + 1])
    more_unread = 0
    if len(unread) > NOTIFICATIONS_SHOWN:
        unread = unread[:NOTIFICATIONS_SHOWN]
        more_unread = unread_notifications().count() - NOTIFICATIONS_SHOWN
    read = read_notifications()[:READ_NOTIFICATIONS_SHOWN]
    return render(
        request,
        "channels_app/notification_list.html",
        {
            "unread": [notification_context(n) for n in unread],
            "more_unread": more_unread,
            "read": [notification_context(n) for n in read],
        },
    )


@login_required
@require_POST
def notification_read(request: HttpRequest, pk: int) -> HttpResponse:
    notification = get_object_or_404(_with_lines(), pk=pk)
    mark_notification_read(notification=notification)
    if request.headers.get("HX-Request"):
        response = render(
            request, "channels_app/notification_row.html", notification_context(notification)
        )
        response["HX-Trigger"] = NOTIFICATIONS_CHANGED
        return response
    # Back to where the button was: the dashboard's card or this list.
    if request.POST.get("next") == "dashboard":
        return redirect("dashboard")
    return redirect("history:notifications")


@login_required
@require_POST
def notification_read_all(request: HttpRequest) -> HttpResponse:
    count = mark_all_notifications_read()
    if not request.headers.get("HX-Request"):
        messages.success(request, f"Marked {count} notification{'s' * (count != 1)} read.")
    # htmx swaps the list in from the page it follows the redirect to (hx-select).
    response = redirect("history:notifications")
    response["HX-Trigger"] = NOTIFICATIONS_CHANGED
    return response


@login_required
@require_GET
def notification_badge(request: HttpRequest) -> HttpResponse:
    """The unread count in the top bar, loaded by htmx after the page (and on changes)."""
    return render(
        request,
        "channels_app/notification_badge.html",
        {"count": Notification.objects.filter(read_at__isnull=True).count()},
    )


# --- chat settings -----------------------------------------------------------------------------


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
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Chat settings saved.")
            return redirect("history:chat_settings")
    return render(
        request,
        "channels_app/settings_chat.html",
        {"form": form, "can_edit": user.is_account_admin},
        status=400 if form.is_bound and form.errors else 200,
    )
