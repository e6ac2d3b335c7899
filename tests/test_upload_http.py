"""A document upload over real HTTP (uvicorn, as in production): one larger than
LIMIT_DOCUMENT_BYTES is stopped while it streams in, never reaches the disk, and comes back as
the form's error."""

import contextlib
import http.client
import os
import re
import threading
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.urls import reverse

from accounts.models import User
from knowledge.models import Document, KnowledgeBase
from tenancy import switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.test_chat_e2e import AsgiServer, asgi_server

__all__ = ["asgi_server"]  # the fixture, used here by name

MIB = 1024 * 1024


@pytest.fixture
def server_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The web server's temporary directory (requested before asgi_server, which copies the
    environment)."""
    path = tmp_path / "server-tmp"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    return path


@pytest.fixture
def alice(clean_schemas: None) -> User:
    return cast(User, UserFactory(email="alice@example.org"))


@contextlib.contextmanager
def watch_for_files(directory: Path, pid: int) -> Iterator[set[str]]:
    """Every file that appears in `directory`, or that process `pid` holds open there (an
    unnamed O_TMPFILE has no directory entry), while the body runs."""
    seen: set[str] = set()
    stop = threading.Event()
    prefix = str(directory)

    def poll() -> None:
        fds = Path(f"/proc/{pid}/fd")
        while not stop.is_set():
            seen.update(os.listdir(directory))
            for fd in list(fds.iterdir()) if fds.exists() else []:
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(prefix):
                        seen.add(target)
            time.sleep(0.001)

    thread = threading.Thread(target=poll, name="tmp-watch", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[str, bytes]:
    boundary = "----palaver-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/plain\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def test_oversized_upload_is_stopped_in_memory_with_a_form_error(
    server_tmpdir: Path, alice: User, asgi_server: AsgiServer
) -> None:
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Rules")
    url = reverse("knowledge:document_create", args=[kb.pk])
    parts = urlsplit(asgi_server.url)
    assert parts.hostname and parts.port
    session_cookie = settings.SESSION_COOKIE_NAME
    session = signed_in_client(alice).cookies[session_cookie].value

    # The form page, for the CSRF cookie and token.
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", url, headers={"Cookie": f"{session_cookie}={session}"})
    page = conn.getresponse()
    html = page.read().decode()
    assert page.status == 200
    cookies = SimpleCookie(page.getheader("Set-Cookie") or "")
    csrf_cookie = cookies[settings.CSRF_COOKIE_NAME].value
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token
    conn.close()

    # Eight times the limit, and past Django's old in-memory threshold (FILE_UPLOAD_MAX_MEMORY_SIZE,
    # 2.5 MiB), past which it wrote the body and the file to temporary files.
    assert settings.LIMIT_DOCUMENT_BYTES == MIB
    content_type, body = multipart(
        {"csrfmiddlewaretoken": token.group(1), "title": "Big"}, "big.txt", b"a" * (8 * MIB)
    )
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    with watch_for_files(server_tmpdir, asgi_server.process.pid) as seen:
        conn.putrequest("POST", url)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.putheader(
            "Cookie", f"{session_cookie}={session}; {settings.CSRF_COOKIE_NAME}={csrf_cookie}"
        )
        conn.endheaders()
        for start in range(0, len(body), 256 * 1024):
            conn.send(body[start : start + 256 * 1024])
            time.sleep(0.01)  # streamed, so a temporary file would live long enough to be seen
        response = conn.getresponse()
        answer = response.read().decode()
    conn.close()

    assert response.status == 400, answer[:2000]
    assert "larger than the limit of 1,048,576 bytes (LIMIT_DOCUMENT_BYTES)" in answer
    assert seen == set(), seen
    assert os.listdir(server_tmpdir) == []
    with switch(alice):
        assert not Document.objects.exists()
