"""A web site on loopback for link-preview tests: a page with Open Graph tags and an image, and
the requests it received."""

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.sites import SiteHandler, base_url, serve


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


class Site(SiteHandler):
    paths: list[str] = []

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
    Site.paths = []
    with serve(Site) as server:
        yield base_url(server)
