"""'Download my data': the page, starting an export, following it, and the download.

An export holds the whole account (every channel's history, every agent, every document), so
only the account's admins may start or download one; other people of the account see the page
saying so. Another account's export is not in this schema: 404."""

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from exports import selectors, services
from exports.storage import storage
from media.uploads import safe_name

POLL_SECONDS = 1


def _admin(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    if not user.is_account_admin:
        raise PermissionDenied("Only the account's admins can export its data.")
    return user


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    found = list(selectors.exports()[:10]) if user.is_account_admin else []
    views = [selectors.describe(e) for e in found]
    return render(
        request,
        "exports/index.html",
        {
            "can_export": user.is_account_admin,
            "current": views[0] if views else None,
            "exports": views,
            "poll_seconds": POLL_SECONDS,
        },
    )


@login_required
@require_POST
def start(request: HttpRequest) -> HttpResponse:
    user = _admin(request)
    try:
        export = services.start_export(requested_by=user.email)
    except services.ExportRefused as exc:
        messages.error(request, str(exc))
        return redirect("exports:index")
    return redirect("exports:detail", pk=export.pk)


@login_required
@require_GET
def detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """The export's state; htmx asks for the status alone every POLL_SECONDS while it is being
    made, and the status it swaps in stops asking once it is done."""
    _admin(request)
    view = selectors.describe(selectors.export_or_404(pk))
    context = {"item": view, "poll_seconds": POLL_SECONDS}
    if request.headers.get("HX-Request"):
        return render(request, "exports/_status.html", context)
    return render(request, "exports/detail.html", context)


@login_required
@require_GET
def download(request: HttpRequest, pk: uuid.UUID) -> FileResponse:
    user = _admin(request)
    export = selectors.export_or_404(pk)
    if not selectors.is_downloadable(export):
        raise Http404("This export is not ready, or its link has expired.")
    try:
        file = storage().open(export.file_name, "rb")
    except FileNotFoundError:
        raise Http404("This export's file is gone.") from None
    day = (export.finished_at or export.created_at).date().isoformat()
    name = safe_name(f"palaver-{user.account.name}-{day}.zip")
    response = FileResponse(file, as_attachment=True, filename=name, content_type="application/zip")
    response["Cache-Control"] = "private, no-store"
    return response
