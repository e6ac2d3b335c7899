"""Link previews in the chat, the previews' images, uploading into the chat, the uploads page,
and the public address of an uploaded file.

Signed-in views run in the caller's schema, so an id of another account's preview or upload is
a 404 whatever the method. `serve_upload` is the one view for people without an account."""

from typing import cast

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_safe

from accounts.models import User
from channels_app.models import Channel
from channels_app.selectors.settings import link_previews
from core.uploads import upload_refusal
from core.views import confirm_delete
from media import selectors, uploads
from media.models import LinkPreview, Upload
from media.services.uploads import TooLarge, UploadRefused, delete_upload, upload_and_send

# The image of a preview: pixels Pillow wrote (media.previews.thumbnail), still never a page.
IMAGE_CSP = "default-src 'none'; sandbox"


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


@login_required
@require_GET
def line_previews(request: HttpRequest) -> HttpResponse:
    """The previews of the lines `ids` (comma-separated message ids), as fragments the chat
    puts under each line; nothing when the account switched previews off."""
    ids: list[int] = []
    for part in request.GET.get("ids", "").split(",")[: selectors.MAX_LINES_PER_REQUEST]:
        if part.strip().isdigit():
            ids.append(int(part))
    lines = selectors.previews_for_lines(ids) if link_previews(_user(request).account) else []
    return render(request, "media/_line_previews.html", {"lines": lines})


@login_required
@require_GET
def preview_image(request: HttpRequest, pk: int) -> HttpResponse:
    """A preview's image from this origin: the viewer's browser never asks the site for it.
    Never a redirect, whatever the preview: the bytes kept, or 404."""
    preview = get_object_or_404(
        LinkPreview.objects.only("image", "image_type"), pk=pk, status=LinkPreview.Status.OK
    )
    if not preview.image_type or preview.image is None:
        raise Http404("no image")
    response = HttpResponse(bytes(preview.image), content_type=preview.image_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = IMAGE_CSP
    response["Cache-Control"] = "private, max-age=86400"
    response["Content-Disposition"] = "inline"
    return response


def _upload_error(message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@login_required
def upload(request: HttpRequest, channel_id: int) -> HttpResponse:
    """A file dropped or pasted into a channel's input (chat-uploads.js): kept, and its link
    said in the channel. JSON: {"url"} (201), or {"error"} for the input to show."""
    channel = get_object_or_404(Channel, pk=channel_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    file = request.FILES.get("file")  # reads the body: the upload handler may refuse it
    refusal = upload_refusal(request)
    if refusal:
        return _upload_error(refusal, 413)
    if file is None:
        return _upload_error("No file arrived; nothing was sent.")
    user = _user(request)
    try:
        sent = upload_and_send(
            account_id=user.account_id, channel=channel, file=file, uploaded_by=user.email
        )
    except TooLarge as exc:
        return _upload_error(str(exc), 413)
    except UploadRefused as exc:
        return _upload_error(str(exc))
    except Exception as exc:
        import redis

        if not isinstance(exc, redis.RedisError):
            raise
        return _upload_error("Could not reach the IRC gateway; nothing was sent.", 503)
    return JsonResponse({"url": sent.url, "name": sent.upload.name}, status=201)


@login_required
@require_GET
def upload_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "media/upload_list.html",
        {
            "uploads": [(u, uploads.public_url(u.token, u.name)) for u in selectors.uploads()],
            "usage": selectors.usage(),
            "limit_bytes": settings.LIMIT_UPLOADS_TOTAL_BYTES,
            "limit_file_bytes": settings.LIMIT_UPLOAD_BYTES,
        },
    )


@login_required
def upload_delete(request: HttpRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(Upload, pk=pk)
    return confirm_delete(
        request,
        obj=item,
        delete=lambda: delete_upload(upload=item),
        cancel_url=reverse("media:upload_list"),
        success_url=reverse("media:upload_list"),
        consequences=["the file, and its link: people who follow it get “not found”"],
    )


@require_safe  # HEAD too: link checkers and other clients' previews ask with it
def serve_upload(request: HttpRequest, token: str, name: str) -> HttpResponseBase:
    """An uploaded file, for anyone with its link (media.uploads says why this is safe)."""
    if not uploads.TOKEN_RE.match(token) or uploads.safe_name(name) != name:
        raise Http404("no such file")
    storage = uploads.storage()
    stored = uploads.storage_name(token, name)
    try:
        handle = storage.open(stored, "rb")
    except (FileNotFoundError, OSError):
        raise Http404("no such file") from None
    content_type = uploads.content_type_of(name)
    head = handle.read(16)
    handle.seek(0)
    inline = uploads.shown_inline(content_type, head)
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    response = FileResponse(
        handle, as_attachment=not inline, filename=name, content_type=content_type
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = uploads.UPLOAD_CSP
    response["Referrer-Policy"] = "no-referrer"
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    # Revalidated every time: a deleted file stops being served at once.
    response["Cache-Control"] = "no-cache"
    return response
