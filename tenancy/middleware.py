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
        if connection.connection is None and connection.pool is not None:
            # This request will take a connection from the pool, and every pooled connection
            # is on public: a new one by its options (config/settings.py), a returned one by
            # the pool's reset (tenancy.db_memory.reset_pooled_connection). django-tenants
            # would issue `SET search_path = public` before the first query all the same (the
            # session's): a round trip per request saved by telling it the path is set.
            connection.search_path_set_schemas = connection._get_cursor_search_paths()
        try:
            user = request.user
            if user.is_authenticated and not request.path.startswith(ADMIN_PREFIX):
                connection.set_tenant(user.account)
            return self.get_response(request)
        finally:
            connection.set_schema_to_public()
