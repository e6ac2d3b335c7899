"""Request bodies and uploaded files are held in memory, never on disk, and an upload is stopped
the moment it passes its limit: LIMIT_DOCUMENT_BYTES, or the setting registered for the path it
was sent to (`register_path_limit`: chat uploads have LIMIT_UPLOAD_BYTES).

Two layers, because under ASGI Django reads the whole body before any upload handler runs, into
a temporary file that goes to disk past FILE_UPLOAD_MAX_MEMORY_SIZE:

- `BoundedBodyASGIHandler` reads the body into memory and keeps at most `max_body_bytes()` of
  it: past that it reads on and drops the rest, so the client still gets a response;
- `LimitedMemoryUploadHandler` then receives the file in chunks, in memory, and stops the
  upload (StopUpload) as soon as the file bytes pass the limit, leaving a message for the form.
"""

import re
from io import BytesIO
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers, StopUpload
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest

REFUSAL_ATTRIBUTE = "palaver_upload_refusal"
# Room for the multipart envelope (boundaries, part headers) around the fields and the file.
ENVELOPE_BYTES = 64 * 1024


# (path pattern, setting): a file sent to a matching path has that setting's limit.
_PATH_LIMITS: list[tuple[re.Pattern[str], str]] = []


def register_path_limit(pattern: str, setting: str) -> None:
    """Files sent to paths matching `pattern` may reach the limit named by `setting` (an app
    registers its own when Django starts)."""
    entry = (re.compile(pattern), setting)
    if entry not in _PATH_LIMITS:
        _PATH_LIMITS.append(entry)


def file_limit(path: str) -> tuple[int, str]:
    """(bytes, setting name) a file sent to `path` may reach."""
    for pattern, setting in _PATH_LIMITS:
        if pattern.match(path):
            return int(getattr(settings, setting)), setting
    return settings.LIMIT_DOCUMENT_BYTES, "LIMIT_DOCUMENT_BYTES"


def max_body_bytes() -> int:
    """The most of a request body worth keeping: a file at the largest limit, the form's other
    fields at Django's limit for them, and the envelope."""
    largest = max(
        [settings.LIMIT_DOCUMENT_BYTES, *(int(getattr(settings, s)) for _, s in _PATH_LIMITS)]
    )
    return largest + settings.DATA_UPLOAD_MAX_MEMORY_SIZE + ENVELOPE_BYTES


def upload_refusal(request: HttpRequest) -> str | None:
    """Why an upload of this request was stopped, if it was."""
    refusal = getattr(request, REFUSAL_ATTRIBUTE, None)
    return refusal if isinstance(refusal, str) else None


def too_large_message(path: str = "") -> str:
    limit, setting = file_limit(path)
    return f"That file is larger than the limit of {limit:,} bytes ({setting})."


class LimitedMemoryUploadHandler(FileUploadHandler):
    """Every uploaded file in memory; the upload stops once the request's file bytes pass
    the limit for its path (file_limit)."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.received = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.file = BytesIO()
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.received += len(raw_data)
        path = self.request.path if self.request is not None else ""
        if self.received > file_limit(path)[0]:
            self.file = BytesIO()
            if self.request is not None:
                setattr(self.request, REFUSAL_ATTRIBUTE, too_large_message(path))
            # Read (and drop) the rest, so the browser is shown the form's error.
            raise StopUpload(connection_reset=False)
        self.file.write(raw_data)

    def file_complete(self, file_size: int) -> InMemoryUploadedFile:
        self.file.seek(0)
        return InMemoryUploadedFile(
            file=self.file,
            field_name=self.field_name,
            name=self.file_name,
            content_type=self.content_type,
            size=file_size,
            charset=self.charset,
            content_type_extra=self.content_type_extra,
        )


class BoundedBodyASGIHandler(ASGIHandler):
    """Django's ASGI handler with the request body in memory and cut at max_body_bytes()."""

    async def read_body(self, receive: Any) -> Any:
        from django.core.exceptions import RequestAborted

        body = BytesIO()
        room = max_body_bytes()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            chunk = message.get("body", b"")
            if room > 0 and chunk:
                body.write(chunk[:room])
                room -= min(room, len(chunk))
            if not message.get("more_body", False):
                break
        body.seek(0)
        return body
