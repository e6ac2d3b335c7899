"""A web site on loopback for link-preview tests: a page with Open Graph tags and an image, and
the requests it received."""

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image


def png(
    width: int = 640, height: int = 320, colour: tuple[int, int, int] = (40, 120, 200)
) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


PAGE = b"""<!doctype html><html><head><title>Fallback title</title>
<meta property="og:title" content="The Palaver handbook">
<meta property="og:description" content="How to talk on IRC from a browser, and stay.">
<meta property="og:site_name" content="Palaver docs">
<meta property="og:image" content="/cover.png">
</head><body><p>Hello</p></body></html>"""

PLAIN = b"""<!doctype html><html><head><title>  Just a   title </title>
<meta name="description" content="A page without Open Graph tags.">
<meta name="twitter:image" content="/missing.png"></head><body></body></html>"""


class Site(BaseHTTPRequestHandler):
    paths: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, content_type: str, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        Site.paths.append(self.path)
        try:
            if self.path.startswith("/page"):
                self._send(200, "text/html; charset=utf-8", PAGE)
            elif self.path == "/plain":
                self._send(200, "text/html", PLAIN)
            elif self.path == "/cover.png":
                self._send(200, "image/png", png())
            elif self.path == "/photo.png":
                self._send(200, "image/png", png(100, 80, (200, 30, 30)))
            elif self.path == "/fake.png":
                self._send(200, "image/png", b"<script>alert(1)</script>")
            elif self.path == "/bare":
                self._send(200, "text/html", b"<p>no title here</p>")
            elif self.path == "/redirect-to-private":
                self._send(302, "text/plain", b"", Location="http://10.1.2.3/secret")
            else:
                self._send(404, "text/html", b"<p>gone</p>")
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def site() -> Iterator[str]:
    """The site's base address (http://127.0.0.1:<port>); Site.paths lists what was asked."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    server.daemon_threads = True
    Site.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
