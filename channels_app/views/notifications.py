"""The notifications page, its rows and the badge in the top bar.

Every view runs in the signed-in user's account schema (tenancy middleware), so an object id
that belongs to another account simply does not exist here: 404.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from channels_app.selectors import notifications as selectors
from channels_app.services import notifications as services

NOTIFICATIONS_SHOWN = 100
READ_NOTIFICATIONS_SHOWN = 20
# Sent with every change to notifications: the nav badge listens for it and reloads its count.
NOTIFICATIONS_CHANGED = "notifications-changed"


@login_required
@require_GET
def notification_list(request: HttpRequest) -> HttpResponse:
    unread = list(selectors.unread_notifications()[: NOTIFICATIONS_SHOWN + 1])
    more_unread = 0
    if len(unread) > NOTIFICATIONS_SHOWN:
        unread = unread[:NOTIFICATIONS_SHOWN]
        more_unread = selectors.unread_notifications().count() - NOTIFICATIONS_SHOWN
    read = selectors.read_notifications()[:READ_NOTIFICATIONS_SHOWN]
    return render(
        request,
        "channels_app/notification_list.html",
        {
            "unread": [selectors.notification_context(n) for n in unread],
            "more_unread": more_unread,
            "read": [selectors.notification_context(n) for n in read],
        },
    )


@login_required
@require_POST
def notification_read(request: HttpRequest, pk: int) -> HttpResponse:
    notification = get_object_or_404(selectors.with_lines(), pk=pk)
    services.mark_notification_read(notification=notification)
    if request.headers.get("HX-Request"):
        response = render(
            request,
            "channels_app/notification_row.html",
            selectors.notification_context(notification),
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
    count = services.mark_all_notifications_read()
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
        {"count": selectors.unread_count()},
    )
