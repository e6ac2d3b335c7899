from collections.abc import Callable

from django.db import connection
from django.http import HttpRequest, HttpResponse


class AccountSchemaMiddleware:
    """A signed-in request runs in its user's account schema; every request ends on public."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        connection.set_schema_to_public()
        try:
            user = request.user
            if user.is_authenticated:
                connection.set_tenant(user.account)  # type: ignore[union-attr]
            return self.get_response(request)
        finally:
            connection.set_schema_to_public()
