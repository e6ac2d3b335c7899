"""Reading a link's preview: the page fetched through the address policy (llms.fetch.fetch_bytes,
which checks every redirect and bounds the size and the time), its title, description and image
read from Open Graph, Twitter card and plain HTML tags, and the image fetched the same way and
re-encoded.

Nothing here touches the database: media.services.previews keeps what this returns.
"""

import io
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from bs4 import BeautifulSoup
from bs4.element import Tag
from django.conf import settings
from PIL import Image, UnidentifiedImageError

from channels_app.formatting import _find_links, strip_irc_formatting
from llms.fetch import HTML_TYPES, FetchError, fetch_bytes
from media.models import MAX_URL_LENGTH

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Links previewed per line: a line of ten links gets the first three.
MAX_LINKS_PER_LINE = 3
# The image as served: at most this wide and high, whatever arrived.
THUMBNAIL_SIZE = (480, 480)
# Pillow's guard against decompression bombs, lowered: a preview never needs more pixels.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")


class PreviewError(Exception):
    """Why there is no preview (kept for the operator, never shown in the chat)."""


@dataclass(frozen=True)
class PageMeta:
    title: str
    description: str
    site_name: str
    image_url: str


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Preview:
    meta: PageMeta
    image: Thumbnail | None


def links_in(text: str) -> list[str]:
    """The http(s) links of a line as the chat shows them (the same finder), first ones first,
    at most MAX_LINKS_PER_LINE, each once."""
    found: list[str] = []
    for _start, _end, href in _find_links(strip_irc_formatting(text)):
        if not href.lower().startswith(("http://", "https://")) or len(href) > MAX_URL_LENGTH:
            continue
        if href not in found:
            found.append(href)
        if len(found) == MAX_LINKS_PER_LINE:
            break
    return found


def _squash(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _meta(soup: BeautifulSoup, *names: str) -> str:
    """The content of the first <meta> naming one of `names` (as property= or name=)."""
    for name in names:
        for attribute in ("property", "name"):
            tag = soup.find("meta", attrs={attribute: name})
            if isinstance(tag, Tag):
                content = tag.get("content")
                if isinstance(content, str) and content.strip():
                    return content.strip()
    return ""


def parse_page(markup: bytes, charset: str | None, page_url: str) -> PageMeta:
    """Title, description, site name and image address of an HTML page: Open Graph first, then
    Twitter cards, then <title> and the description meta tag."""
    soup = BeautifulSoup(markup, "html.parser", from_encoding=charset)
    title = _meta(soup, "og:title", "twitter:title")
    if not title and soup.title is not None:
        title = soup.title.get_text(" ")
    description = _meta(soup, "og:description", "twitter:description", "description")
    site_name = _meta(soup, "og:site_name") or (urlsplit(page_url).hostname or "")
    image = _meta(
        soup,
        "og:image:secure_url",
        "og:image:url",
        "og:image",
        "twitter:image",
        "twitter:image:src",
    )
    image_url = urljoin(page_url, image) if image else ""
    if not image_url.lower().startswith(("http://", "https://")) or len(image_url) > 2000:
        image_url = ""
    return PageMeta(
        title=_squash(title, 300),
        description=_squash(description, 1000),
        site_name=_squash(site_name, 200),
        image_url=image_url,
    )


def thumbnail(data: bytes) -> Thumbnail:
    """The image decoded and encoded again at most THUMBNAIL_SIZE: what is served is pixels
    Pillow wrote, whatever the bytes that arrived carried besides."""
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning (over MAX_IMAGE_PIXELS) refuses the image too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_FORMATS) as source:
                source.seek(0)  # the first frame of an animation
                # A JPEG decodes at a fraction of its size when that is enough.
                source.draft("RGB", THUMBNAIL_SIZE)
                image = source.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PreviewError(f"the image could not be read: {exc}") from None
    except Image.DecompressionBombWarning:
        raise PreviewError("the image has too many pixels") from None
    image.thumbnail(THUMBNAIL_SIZE)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    out = io.BytesIO()
    if has_alpha:
        image.convert("RGBA").save(out, format="PNG", optimize=True)
        content_type = "image/png"
    else:
        image.convert("RGB").save(out, format="JPEG", quality=82, optimize=True)
        content_type = "image/jpeg"
    return Thumbnail(out.getvalue(), content_type, image.width, image.height)


def fetch_preview(url: str) -> Preview:
    """The preview of `url`; PreviewError when the page gives none. The image is optional: one
    that cannot be fetched or read leaves the preview without it."""
    timeout = settings.LINK_PREVIEW_TIMEOUT_SECONDS
    try:
        page = fetch_bytes(
            url,
            timeout=timeout,
            max_bytes=settings.LINK_PREVIEW_MAX_PAGE_BYTES,
            content_types=HTML_TYPES | IMAGE_TYPES,
            refusal="only web pages and images get a preview",
            accept="text/html,application/xhtml+xml;q=0.9,image/*;q=0.8",
        )
    except FetchError as exc:
        raise PreviewError(str(exc)) from None
    if page.content_type in IMAGE_TYPES:
        # A link straight to an image: the image is the preview.
        if page.truncated:
            raise PreviewError("the image is larger than the size limit")
        name = urlsplit(page.url).path.rsplit("/", 1)[-1]
        host = urlsplit(page.url).hostname or ""
        meta = PageMeta(title=_squash(name, 300), description="", site_name=host, image_url="")
        return Preview(meta=meta, image=thumbnail(page.body))
    meta = parse_page(page.body, page.charset, page.url)
    if not (meta.title or meta.description):
        raise PreviewError("the page has no title or description")
    return Preview(meta=meta, image=_image(meta.image_url) if meta.image_url else None)


def _image(url: str) -> Thumbnail | None:
    try:
        download = fetch_bytes(
            url,
            timeout=settings.LINK_PREVIEW_TIMEOUT_SECONDS,
            max_bytes=settings.LINK_PREVIEW_MAX_IMAGE_BYTES,
            content_types=IMAGE_TYPES,
            refusal="only PNG, JPEG, GIF and WebP images are shown",
            accept="image/png,image/jpeg,image/gif,image/webp",
        )
        if download.truncated:
            return None  # a cut image would not decode; a bigger one is not worth the bytes
        return thumbnail(download.body)
    except (FetchError, PreviewError):
        return None
