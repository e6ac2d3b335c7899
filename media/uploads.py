"""How an uploaded file is named, stored and served.

A file lives in the "uploads" storage (settings.STORAGES) under `<token>/<name>`: `token` is 128
random bits (secrets.token_urlsafe), `name` the file's name made safe (ASCII letters, digits,
dot, dash, underscore). Its public address is UPLOADS_PUBLIC_URL/u/<token>/<name>: the people in
the IRC channel are not Palaver users, so it works without signing in, and the token is all
that finds it. Serving it reads no account's schema and no public table: there is nothing to
enumerate and nothing of another account to reach (an account's own Upload rows, for its list,
limits and deletion, are in its schema).

A file is never active content of this origin: it goes out with its own type, `nosniff`, a
`sandbox` Content-Security-Policy that gives it no origin and no scripts, and as an attachment
unless it is one of the few types shown inline (raster images whose bytes are that image, and
plain text).
"""

import mimetypes
import re
import secrets
import unicodedata
from pathlib import PurePosixPath

from django.conf import settings
from django.core.files.storage import Storage, storages
from django.utils.text import get_valid_filename

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
MAX_NAME_LENGTH = 100
# Shown in the browser: images by their leading bytes (checked when served), text as text.
INLINE_IMAGES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
INLINE_TEXT = "text/plain"
# The policy of every served file: no scripts, no plugins, no origin (sandbox), no subresources
# but the file itself; styles inline so a browser's own image and text viewers still lay out.
UPLOAD_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"


def storage() -> Storage:
    return storages["uploads"]


def new_token() -> str:
    return secrets.token_urlsafe(16)


def safe_name(name: str) -> str:
    """The file name as it appears in the link: its last path part, in ASCII, without anything
    a URL or a file system would read differently; "file" if nothing is left."""
    base = PurePosixPath(name.replace("\\", "/")).name
    ascii_name = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    try:
        cleaned = get_valid_filename(ascii_name)
    except Exception:  # SuspiciousFileOperation: nothing usable ("", ".", "..")
        cleaned = ""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", cleaned).lstrip(".")
    if not cleaned:
        cleaned = "file"
    if len(cleaned) > MAX_NAME_LENGTH:
        stem, dot, extension = cleaned.rpartition(".")
        if dot and 0 < len(extension) <= 10:
            cleaned = stem[: MAX_NAME_LENGTH - len(extension) - 1] + "." + extension
        else:
            cleaned = cleaned[:MAX_NAME_LENGTH]
    return cleaned


def content_type_of(name: str) -> str:
    """The type a file is served with, from its name (never from what the uploader's browser
    claimed)."""
    guessed, _encoding = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def shown_inline(content_type: str, head: bytes) -> bool:
    """Whether the browser may show the file itself: plain text, or an image of one of
    INLINE_IMAGES whose first bytes are that image's. Everything else (HTML, SVG, XML, scripts,
    PDF, unknown types) is a download."""
    if content_type == INLINE_TEXT:
        return True
    signatures = INLINE_IMAGES.get(content_type)
    if signatures is None:
        return False
    if content_type == "image/webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return any(head.startswith(signature) for signature in signatures)


def public_url(token: str, name: str) -> str:
    return f"{settings.UPLOADS_PUBLIC_URL}/u/{token}/{name}"


def storage_name(token: str, name: str) -> str:
    return f"{token}/{name}"
