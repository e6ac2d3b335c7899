from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from tenancy.context import connection

ADMIN_PREFIX = "/admin/"


class AccountSchemaMiddleware:
    """A signed-in request runs in its user's account schema; every request ends on public.

    The admin site stays on public: operators manage identity and catalogs, which live there.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        connection.set_schema_to_public()
        try:
            user = request.user
            if user.is_authenticated and not request.path.startswith(ADMIN_PREFIX):
                connection.set_tenant(user.account)
            return self.get_response(request)
        finally:
            connection.set_schema_to_public()
