import functools
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthMiddleware
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.functional import SimpleLazyObject

from accounts.backends import current_session
from accounts.throttle import client_address
from tenancy.middleware import ADMIN_PREFIX

LAST_SEEN_KEY = "_last_seen"


class SessionMetadataMiddleware:
    """Hands the session store the client's address and browser, and refreshes last-seen."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        session = request.session
        session.client_ip = client_address(request)  # type: ignore[attr-defined]
        session.user_agent = request.headers.get("user-agent", "")  # type: ignore[attr-defined]
        response = self.get_response(request)
        if session.session_key and not session.is_empty():
            now = int(time.time())
            if now - int(session.get(LAST_SEEN_KEY, 0)) >= settings.SESSION_LAST_SEEN_INTERVAL:
                session[LAST_SEEN_KEY] = now
        return response


def _get_user(request: HttpRequest) -> Any:
    """Django's get_user, with the session store in reach of accounts.backends, which takes
    the user the store loaded with the session row: one query for both, not two."""
    if not hasattr(request, "_cached_user"):
        token = current_session.set(request.session)
        try:
            request._cached_user = auth.get_user(request)  # type: ignore[attr-defined]
        finally:
            current_session.reset(token)
    return request._cached_user  # type: ignore[attr-defined]


class AuthenticationMiddleware(DjangoAuthMiddleware):
    """Django's (request.user, request.auser), request.user resolved through _get_user."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.user = SimpleLazyObject(lambda: _get_user(request))  # type: ignore[assignment]


class PendingDeletionMiddleware:
    """While the account's deletion is pending, its users reach one page: the one that says
    when it will be purged and lets an admin cancel (accounts.views.deletion_pending). Every
    other page sends them there; the admin site stays for operators. The user and account were
    loaded with the session row: this costs no query."""

    ALLOWED = ("accounts:deletion_pending", "accounts:deletion_cancel", "accounts:sign_out")

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if (
            user.is_authenticated
            and getattr(user, "account", None) is not None
            and user.account.pending_deletion
            and not request.path.startswith(ADMIN_PREFIX)
            and request.path not in _allowed_paths()
        ):
            page = reverse("accounts:deletion_pending")
            if request.headers.get("HX-Request"):
                response = HttpResponse(status=204)
                # Not from the page itself (its badge polls): it would reload forever.
                if not request.headers.get("HX-Current-URL", "").endswith(page):
                    response["HX-Redirect"] = page
                return response
            return HttpResponseRedirect(page, status=302 if request.method == "GET" else 303)
        return self.get_response(request)


@functools.cache
def _allowed_paths() -> frozenset[str]:
    return frozenset(reverse(name) for name in PendingDeletionMiddleware.ALLOWED)
