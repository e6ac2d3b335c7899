"""The project's URLs plus the benchmark's own views, for benchmarks/_pages_settings.py only."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import include, path


def bare(request: HttpRequest) -> HttpResponse:
    """The anchor: no template, no query, no session read."""
    return HttpResponse(b"ok", content_type="text/plain")


@login_required
def empty_signed_in(request: HttpRequest) -> HttpResponse:
    """The fixed cost of a signed-in request: the session, its user, the account's schema and
    the middleware around them, with no template and no query of its own."""
    return HttpResponse(b"ok", content_type="text/plain")


@login_required
def chrome(request: HttpRequest) -> HttpResponse:
    """The shared page chrome: base.html (head, nav, user menu) with no content."""
    return render(request, "base.html")


urlpatterns = [
    path("bench/bare/", bare),
    path("bench/empty/", empty_signed_in),
    path("bench/chrome/", chrome),
    path("", include("config.urls")),
]
