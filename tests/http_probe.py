"""A small black-box web client for probes: a cookie-keeping HTTP client (httpx) that reads pages
the way a browser would (links, htmx and data-* URLs, forms with their successful controls;
parsed with BeautifulSoup) and crawls a site from a few start URLs.

It knows nothing of Palaver's views: only what the served HTML says. The one thing it asks
Django is which URL pattern a path belongs to (`route_of`), so a probe can tell which patterns
it covered.
"""

import logging
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import httpx
from bs4 import BeautifulSoup, Tag
from django.conf import settings
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, resolve

# One INFO line per request would bury a failure's own report.
logging.getLogger("httpx").setLevel(logging.WARNING)

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Controls a browser never submits by themselves.
UNSUBMITTED_INPUTS = frozenset({"submit", "button", "image", "reset"})
# Attributes whose value is a URL or may be one (htmx verbs, data-*-url, href, src, action).
URL_LIKE = re.compile(r"^/(?!/)")


@dataclass
class Response:
    method: str
    url: str
    status: int
    headers: httpx.Headers
    text: str
    # A text/event-stream answer: opened, then closed without reading (it never ends).
    stream: bool = False

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    @property
    def is_html(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/html")

    def everything(self) -> str:
        """What a leak could hide in: the body and every header value."""
        return self.text + "\n" + "\n".join(f"{k}: {v}" for k, v in self.headers.multi_items())


@dataclass
class Form:
    page: str
    method: str
    action: str
    multipart: bool
    # The successful controls as rendered: what a browser submits untouched.
    fields: list[tuple[str, str]]
    # Every value a checkbox, radio or select offers, by name.
    choices: dict[str, list[str]]
    files: list[str]
    passwords: list[str]
    required: list[str]
    # Radios and single selects: one value only.
    single: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        names = {n for n, _ in self.fields} | set(self.choices) | set(self.files)
        return (self.method, self.action, tuple(sorted(names)))

    def data(
        self, overrides: Mapping[str, str | list[str]] | None = None, *, every_choice: bool = False
    ) -> dict[str, list[str]]:
        """The submission: rendered values, every offered choice ticked if asked, overrides last."""
        data: dict[str, list[str]] = {}
        for name, value in self.fields:
            data.setdefault(name, []).append(value)
        if every_choice:
            for name, values in self.choices.items():
                data[name] = [v for v in values if v][:1] if name in self.single else list(values)
        for name, override in (overrides or {}).items():
            data[name] = [override] if isinstance(override, str) else list(override)
        return data


class Browser:
    """One person's browser: its own cookies (session, CSRF)."""

    def __init__(self, base_url: str, name: str) -> None:
        self.name = name
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    @property
    def csrf_token(self) -> str:
        return self.http.cookies.get(settings.CSRF_COOKIE_NAME) or ""

    @property
    def signed_in(self) -> bool:
        return bool(self.http.cookies.get(settings.SESSION_COOKIE_NAME))

    def request(
        self,
        method: str,
        url: str,
        data: Mapping[str, list[str]] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> Response:
        self.requests += 1
        headers = {}
        if method.upper() != "GET" and self.csrf_token:
            # As htmx sends it (base.html's hx-headers); a form's own field takes precedence.
            headers["X-CSRFToken"] = self.csrf_token
        kwargs: dict[str, Any] = {"headers": headers}
        if method.upper() == "GET":
            if data:
                url = with_query(url, data)
        else:
            kwargs["data"] = dict(data or {})
            if files:
                kwargs["files"] = dict(files)
        with self.http.stream(method.upper(), url, **kwargs) as response:
            stream = response.headers.get("content-type", "").startswith("text/event-stream")
            text = "" if stream else response.read().decode(errors="replace")
        return Response(
            method.upper(),
            url,
            response.status_code,
            response.headers,
            text,
            stream,
        )

    def get(self, url: str) -> Response:
        return self.request("GET", url)

    def submit(self, form: Form, data: Mapping[str, list[str]], files: Any = None) -> Response:
        return self.request(form.method, form.action, data, files)

    def form_on(self, page_url: str, *names: str) -> Form:
        """The form on `page_url` that has all these fields (the page is fetched now)."""
        response = self.get(page_url)
        assert response.status == 200, f"{self.name}: GET {page_url} -> {response.status}"
        for form in parse_forms(response):
            offered = {n for n, _ in form.fields} | set(form.choices) | set(form.files)
            if set(names) <= offered:
                return form
        raise AssertionError(f"{self.name}: no form with {names} on {page_url}")


def same_origin_path(base_url: str, page_url: str, value: str) -> str | None:
    """`value` as a path with query (no fragment) if it points into the site, else None."""
    absolute = urljoin(urljoin(base_url, page_url), value.strip())
    parts, base = urlsplit(absolute), urlsplit(base_url)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        return None
    return urlunsplit(("", "", parts.path or "/", parts.query, ""))


def with_query(url: str, data: Mapping[str, list[str]]) -> str:
    parts = urlsplit(url)
    pairs = [(k, v) for k, values in data.items() for v in values]
    return urlunsplit(parts._replace(query=urlencode(pairs)))


def _soup(response: Response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def parse_urls(response: Response, base_url: str) -> set[str]:
    """Every same-origin URL the page names in any attribute: links, form actions, src, htmx
    verbs, data-*-url (what a script would fetch)."""
    found: set[str] = set()
    for tag in _soup(response).find_all(True):
        for value in tag.attrs.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and URL_LIKE.match(item.strip()):
                    path = same_origin_path(base_url, response.url, item)
                    if path is not None:
                        found.add(path)
    return found


def parse_forms(response: Response) -> list[Form]:
    forms = []
    for element in _soup(response).find_all("form"):
        assert isinstance(element, Tag)
        action = same_origin_path(
            str(response.url), response.url, str(element.get("action") or response.url)
        )
        if action is None:
            continue
        form = Form(
            page=response.url,
            method=str(element.get("method") or "get").lower(),
            action=action,
            multipart="multipart" in str(element.get("enctype") or ""),
            fields=[],
            choices={},
            files=[],
            passwords=[],
            required=[],
        )
        for control in element.find_all(["input", "textarea", "select"]):
            _read_control(form, control)
        forms.append(form)
    return forms


def _read_control(form: Form, control: Tag) -> None:
    name = control.get("name")
    if not isinstance(name, str) or not name or control.has_attr("disabled"):
        return
    if control.has_attr("required"):
        form.required.append(name)
    if control.name == "textarea":
        # A browser drops the one newline that follows <textarea>; Django renders it.
        form.fields.append((name, control.get_text().removeprefix("\n")))
        return
    if control.name == "select":
        options = control.find_all("option")
        values = [str(o.get("value", o.get_text())) for o in options]
        form.choices[name] = values
        chosen = [str(o.get("value", o.get_text())) for o in options if o.has_attr("selected")]
        if not control.has_attr("multiple"):
            form.single.add(name)
            chosen = chosen[:1] or values[:1]
        form.fields.extend((name, v) for v in chosen)
        return
    kind = str(control.get("type") or "text").lower()
    value = str(control.get("value", ""))
    if kind in UNSUBMITTED_INPUTS:
        return
    if kind == "file":
        form.files.append(name)
    elif kind in ("checkbox", "radio"):
        form.choices.setdefault(name, []).append(value or "on")
        if kind == "radio":
            form.single.add(name)
        if control.has_attr("checked"):
            form.fields.append((name, value or "on"))
    else:
        if kind == "password":
            form.passwords.append(name)
        form.fields.append((name, value))


def route_of(url: str) -> str | None:
    """The URL pattern a path resolves to ("namespace:name"), or None outside the URLconf."""
    try:
        match = resolve(urlsplit(url).path)
    except Resolver404:
        return None
    return match.view_name


def has_arguments(url: str) -> bool:
    """Whether the path carries values of its own (ids, keys, slugs) in the pattern."""
    try:
        match = resolve(urlsplit(url).path)
    except Resolver404:
        return False
    return bool(match.args or match.kwargs)


def all_routes() -> set[str]:
    """Every URL pattern of the URLconf, named as `route_of` names them."""
    routes: set[str] = set()

    def walk(patterns: Iterable[Any], namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = namespace
                if pattern.namespace:
                    inner = f"{namespace}:{pattern.namespace}" if namespace else pattern.namespace
                walk(pattern.url_patterns, inner)
            elif isinstance(pattern, URLPattern):
                name = pattern.name or pattern.lookup_str
                routes.add(f"{namespace}:{name}" if namespace else name)

    walk(get_resolver().url_patterns, "")
    return routes


@dataclass
class Crawl:
    pages: dict[str, Response] = field(default_factory=dict)
    forms: dict[tuple[str, str, tuple[str, ...]], Form] = field(default_factory=dict)
    # Every same-origin URL seen anywhere (links, actions, attributes, redirects).
    urls: set[str] = field(default_factory=set)


def crawl(
    browser: Browser,
    seeds: Iterable[str],
    *,
    skip: Callable[[str], bool],
    fill_get_forms: str,
    per_route: int = 6,
) -> Crawl:
    """Breadth-first GETs over every same-origin URL the pages name, following redirects. GET
    forms are submitted too, with their first empty text field set to `fill_get_forms`.
    At most `per_route` distinct URLs per pattern (query-string variants are endless)."""
    result = Crawl()
    queue = deque(seeds)
    per = Counter[str | None]()

    def note(url: str) -> bool:
        """Keep `url` if it is new and its pattern has room; whether it was kept."""
        if url in result.urls or skip(url):
            return False
        route = route_of(url)
        if per[route] >= per_route:
            return False
        per[route] += 1
        result.urls.add(url)
        return True

    while queue:
        url = queue.popleft()
        if url in result.pages or not (url in result.urls or note(url)):
            continue
        response = browser.get(url)
        result.pages[url] = response
        if response.status in REDIRECTS:
            target = same_origin_path(browser.base_url, url, response.location)
            if target is not None:
                queue.append(target)
            continue
        if response.stream or response.status != 200 or not response.is_html:
            continue
        for found in sorted(parse_urls(response, browser.base_url)):
            if note(found):
                queue.append(found)
        for form in parse_forms(response):
            if skip(form.action) or form.key in result.forms:
                continue
            result.forms[form.key] = form
            note(form.action)
            if form.method == "get":
                queue.append(with_query(form.action, _filled(form, fill_get_forms)))
    return result


def _filled(form: Form, text: str) -> dict[str, list[str]]:
    data = form.data()
    for name, values in data.items():
        if values == [""] and name not in form.single:
            data[name] = [text]
            break
    return data
