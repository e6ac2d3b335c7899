"""Fetching a web page for an agent (the fetch_url tool), through the same address policy as the
gateway's IRC connections (core/net_policy.py).

Every hop (the address asked for and each redirect) is resolved once and checked; the request
then goes to the checked IP address itself, with the name only in the Host header and in TLS
(the `sni_hostname` extension: the certificate is verified against the name). httpx never
resolves the name again, so a DNS answer that changes between the check and the connect (DNS
rebinding) reaches nothing. Redirects are followed here, not by httpx, so each one is checked.

The body is read up to a size limit and within a time limit; HTML becomes readable text (title,
headings, paragraphs, list items), plain text passes through, anything else is refused.
`fetch_bytes` is the same walk handing back the body as it came (knowledge imports read HTML and
PDF themselves).
"""

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from bs4 import BeautifulSoup
from bs4.element import Tag
from django.conf import settings

from core import net_policy

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain"})

# What is not text a reader wants: code, styling, embedded documents, site furniture.
_DROPPED = (
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "canvas",
    "iframe",
    "object",
    "embed",
    "nav",
    "footer",
    "aside",
    "form",
    "button",
    "select",
)
_BLOCKS = (
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "p",
    "li",
    "pre",
    "blockquote",
    "dt",
    "dd",
    "figcaption",
    "caption",
    "td",
    "th",
)


# Elements that are not blocks of text of their own but still part the words around them.
_PARTING = ("div", "section", "article", "main", "header", "table", "tr", "ul", "ol", "dl")


class FetchError(Exception):
    """Why the page could not be read, in words for the model."""


@dataclass(frozen=True)
class Download:
    """A response body as it arrived (up to the size limit), for a caller that reads it itself."""

    url: str  # where the body was found, after redirects
    content_type: str  # the media type, lowercased, without parameters
    charset: str | None
    body: bytes
    truncated: bool  # the body was longer than the size limit: only its start was read


@dataclass(frozen=True)
class Page:
    url: str  # where the page was found, after redirects
    content_type: str
    title: str
    text: str
    truncated: bool  # the body was longer than the size limit: only its start was read


def host_allowed(host: str, domains: Sequence[str]) -> bool:
    """Whether `host` is one of `domains` or below one; no domains means any host."""
    if not domains:
        return True
    host = host.lower().rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in domains)


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError):
        raise FetchError(f"“{url[:200]}” is not a web address.") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError("Only http:// and https:// addresses can be fetched.")
    if not parsed.raw_host:
        raise FetchError(f"“{url[:200]}” has no host name.")
    return parsed


def _host(url: httpx.URL) -> str:
    # The ASCII (IDNA) form: what is resolved, sent as Host and checked by TLS.
    return url.raw_host.decode("ascii")


def _host_header(url: httpx.URL) -> str:
    host = _host(url)
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return host if url.port is None else f"{host}:{url.port}"


def _too_slow(timeout: float) -> FetchError:
    return FetchError(f"The page did not arrive within the time limit ({timeout:g} s).")


def _remaining(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _too_slow(timeout)
    return left


def _send(
    url: httpx.URL,
    destination: net_policy.Destination,
    left: float,
    verify: ssl.SSLContext | bool = True,
    accept: str = "*/*",
) -> tuple[httpx.Client, httpx.Response]:
    """GET `url` from the checked addresses in turn; the response is open (streamed) and the
    caller closes it and its client."""
    headers = {
        "Host": _host_header(url),
        "User-Agent": f"Palaver-agent/1.0 (+{settings.PUBLIC_URL})",
        "Accept": accept,
        # Compressed bodies would be inflated before the size limit sees them.
        "Accept-Encoding": "identity",
    }
    extensions = {"sni_hostname": _host(url)} if url.scheme == "https" else {}
    # A client per hop: a pooled connection made for one name must never serve another, and
    # trust_env=False keeps proxy variables from sending the request somewhere unchecked.
    client = httpx.Client(timeout=left, trust_env=False, follow_redirects=False, verify=verify)
    last: Exception | None = None
    for ip in destination.addresses:
        request = client.build_request(
            "GET", url.copy_with(host=str(ip)), headers=headers, extensions=extensions
        )
        try:
            response = client.send(request, stream=True)
        except httpx.ConnectError as exc:
            last = exc
            continue
        return client, response
    client.close()
    assert last is not None  # at least one address was tried
    raise last


def fetch(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    allowed_domains: Sequence[str] = (),
    verify: ssl.SSLContext | bool = True,
) -> Page:
    """Read `url` as text. Raises FetchError for every refusal and failure. `verify` is the
    certificates trusted (httpx's: the certifi bundle), for tests to trust one of their own."""
    download = fetch_bytes(
        url,
        timeout=timeout,
        max_bytes=max_bytes,
        allowed_domains=allowed_domains,
        verify=verify,
        content_types=HTML_TYPES | TEXT_TYPES,
        refusal="only web pages (HTML) and plain text can be read",
    )
    if download.content_type in HTML_TYPES:
        title, text = html_text(download.body, download.charset)
    else:
        title, text = "", _decode(download.body, download.charset)
    return Page(
        url=download.url,
        content_type=download.content_type,
        title=title,
        text=text,
        truncated=download.truncated,
    )


def fetch_bytes(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    content_types: frozenset[str],
    refusal: str,
    allowed_domains: Sequence[str] = (),
    verify: ssl.SSLContext | bool = True,
    accept: str = "text/html,application/xhtml+xml,text/plain;q=0.9",
) -> Download:
    """The body of `url` if its media type is one of `content_types` (else FetchError saying
    `refusal`), read up to `max_bytes`, through the address policy at every hop."""
    deadline = time.monotonic() + timeout
    current = _parse(url)
    for hop in range(MAX_REDIRECTS + 1):
        host = _host(current)
        if not host_allowed(host, allowed_domains):
            raise FetchError(f"{host} is not among the sites this account lets agents read.")
        port = current.port or (443 if current.scheme == "https" else 80)
        try:
            destination = net_policy.resolve(host, port, timeout=_remaining(deadline, timeout))
            client, response = _send(
                current, destination, _remaining(deadline, timeout), verify, accept
            )
        except net_policy.NetPolicyError as exc:
            raise FetchError(f"Cannot fetch {current}: {exc}.") from None
        except httpx.TimeoutException:
            raise _too_slow(timeout) from None
        except httpx.HTTPError as exc:
            raise FetchError(f"Could not connect to {host}: {exc or type(exc).__name__}.") from None
        try:
            if response.status_code in REDIRECT_STATUSES and response.headers.get("location"):
                if hop == MAX_REDIRECTS:
                    raise FetchError(f"{url[:200]} redirects more than {MAX_REDIRECTS} times.")
                try:
                    current = _parse(str(current.join(response.headers["location"])))
                except httpx.InvalidURL:
                    raise FetchError("The page redirects to an address that is not one.") from None
                continue
            return _read(current, response, deadline, timeout, max_bytes, content_types, refusal)
        finally:
            response.close()
            client.close()
    raise AssertionError("unreachable")  # the loop returns or raises


def _read(
    url: httpx.URL,
    response: httpx.Response,
    deadline: float,
    timeout: float,
    max_bytes: int,
    content_types: frozenset[str],
    refusal: str,
) -> Download:
    if response.status_code >= 400:
        raise FetchError(f"{url} answered {response.status_code} {response.reason_phrase}.")
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in content_types:
        what = content_type or "of no stated type"
        raise FetchError(f"{url} is {what}; {refusal}.")
    body = bytearray()
    truncated = False
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                # Stop reading: the rest of the body is never downloaded.
                del body[max_bytes:]
                truncated = True
                break
            _remaining(deadline, timeout)
    except httpx.TimeoutException:
        raise _too_slow(timeout) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"Reading {url} failed: {exc or type(exc).__name__}.") from None
    return Download(
        url=str(url),
        content_type=content_type,
        charset=response.charset_encoding,
        body=bytes(body),
        truncated=truncated,
    )


def _decode(body: bytes, encoding: str | None) -> str:
    try:
        return body.decode(encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _squash(text: str) -> str:
    return " ".join(text.split())


def html_text(markup: bytes, encoding: str | None = None) -> tuple[str, str]:
    """(title, readable text) of an HTML document: headings as "#"-lines, paragraphs and list
    items one per line; scripts, styles and page furniture dropped."""
    soup = BeautifulSoup(markup, "html.parser", from_encoding=encoding)
    title = _squash(soup.title.get_text(" ")) if soup.title else ""
    for tag in soup.find_all(_DROPPED):
        tag.decompose()
    if soup.head is not None:
        soup.head.decompose()
    # Inline markup joins words ("<b>use</b>." is "use."); a block or a line break parts them.
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for block in soup.find_all((*_BLOCKS, *_PARTING)):
        block.insert_before(" ")
        block.insert_after(" ")
    lines: list[str] = []
    for element in soup.find_all(_BLOCKS):
        if not isinstance(element, Tag) or element.find_parent(_BLOCKS) is not None:
            continue  # its text is in its enclosing block's
        name = element.name
        # Preformatted text keeps its lines; elsewhere line breaks in the markup mean nothing.
        text = element.get_text().strip("\n") if name == "pre" else _squash(element.get_text())
        if not text:
            continue
        if name[0] == "h" and name[1:].isdigit():
            text = "#" * int(name[1:]) + " " + text
        elif name == "li":
            text = "- " + text
        lines.append(text)
    if not lines:
        # No structure to follow (text straight in <body> or in <div>s): every text line.
        body = soup.body or soup
        lines = [line for raw in body.get_text("\n").splitlines() if (line := _squash(raw))]
    return title, "\n".join(lines)
