"""The real URLs plus two probes for tests of the schema middleware."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config.urls import urlpatterns as real_urlpatterns
from tenancy.context import connection


def active_schema(request: HttpRequest) -> HttpResponse:
    return HttpResponse(connection.schema_name)


def explode(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


urlpatterns = [
    path("_test/schema/", active_schema),
    path("_test/explode/", explode),
    *real_urlpatterns,
]
