import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from accounts.throttle import client_address

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
