"""A black-box isolation probe over real HTTP (issue 6, item 9).

The app runs under uvicorn as in production. Two people sign up through the sign-up form; the
first creates one of everything through the site's own forms, every typed value carrying a
random marker, and every secret a recognisable value. Then:

1. the first account's pages are crawled (every same-origin URL any attribute names, every form,
   GET forms submitted), and no response may contain a stored secret or its ciphertext, not even
   a form re-rendered with errors right after a secret was typed into it;
2. every URL and every form found is replayed as the second account (with its own CSRF token and
   the first account's ids and values) and as an anonymous visitor: the second account gets
   403/404/405 on the first account's objects, the visitor is sent to sign in (or gets
   403/404/405, or a public page), and no response carries the first account's marker, ids or
   secrets;
3. the first account's rows (its schema and its public rows) are the same before and after the
   replays, and the gateway was asked nothing on its behalf;
4. the second account's live stream carries none of the first account's events;
5. every pattern of the URLconf was reached, or is in EXCLUDED_ROUTES with a reason: pages added
   later are probed without anyone remembering to.

Values the second account and the visitor send have the first account's marker swapped for
their own, so the first marker in a response is always a leak, never an echo of the request.
"""

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from django.db import connection
from django.urls import resolve, reverse

from accounts.models import Account, User
from agents.models import Agent, Task
from agents.services.schedules import create_schedule, pause_schedule
from channels_app import events
from channels_app.models import Channel, ChannelUser, Message, Notification
from core import crypto
from exports.models import Export
from exports.services import build_export_now
from exports.storage import folder_of, storage
from knowledge.models import Chunk, Document
from knowledge.services import index_document_now
from llms.tools import KNOWLEDGE_BASE_TOOLS
from media.models import Upload
from tenancy import switch
from tests.http_probe import (
    REDIRECTS,
    Browser,
    Crawl,
    Form,
    Response,
    all_routes,
    crawl,
    has_arguments,
    parse_forms,
    parse_urls,
    route_of,
)
from tests.test_chat_e2e import AsgiServer, asgi_server  # noqa: F401 (a fixture)

# URL patterns the probe does not reach, with the reason. Keep this short: anything else the
# crawl cannot reach from the first account's pages fails the test.
EXCLUDED_ROUTES: dict[str, str] = {
    "admin:": "Django admin: operators only (staff), always on the public schema; "
    "tests/test_admin.py covers it",
    # Coming with password reset (issue 6, item 6).
    "accounts:password_reset_confirm": "reached only through the link in the reset email, "
    "which carries a one-time token; the password reset tests follow it",
    "accounts:deletion_pending": "answers only while the account's deletion is pending (the "
    "probe's account is not); tests/test_account_deletion.py checks another account gets 404",
    "accounts:deletion_cancel": "the deletion page's button, shown only while the account's "
    "deletion is pending; tests/test_account_deletion.py checks another account gets 404",
    "media:preview_image": "named only in the previews fragment chat-previews.js asks for with "
    "line ids; tests/test_previews.py checks another account and a visitor get nothing",
    "media:serve_upload": "public by design (the IRC channel's people have no account), on "
    "UPLOADS_PUBLIC_URL's origin, found by a 128-bit token; tests/test_uploads.py covers it",
    "channels:channel_list_join": "its forms appear only once the gateway has left a /list "
    "reply in Redis; tests/test_servers_pages.py checks another account gets 404 on it",
}
# What the second account may get for a URL or form that names the first account's objects.
REFUSED = frozenset({403, 404, 405})
PASSWORD = "probe horse battery staple"
# Tool settings cannot carry the marker (a time zone is a time zone): one nobody else picks.
TIMEZONE_A = "Pacific/Chatham"


def excluded(route: str | None) -> bool:
    return route is not None and any(route.startswith(prefix) for prefix in EXCLUDED_ROUTES)


def marker() -> str:
    # Starts with a letter and has only [a-z0-9], so it is a valid nick, channel, host label
    # and model name, and HTML escaping never changes it.
    return "m" + secrets.token_hex(5)


def form_errors(response: Response) -> str:
    return " | ".join(re.findall(r'class="error"[^>]*>([^<]*)<', response.text))[:500]


def create(
    browser: Browser,
    page: str,
    values: dict[str, str | list[str]],
    *,
    files: dict[str, tuple[str, bytes, str]] | None = None,
    every_choice: bool = False,
) -> str:
    """Fill in the form on `page` as a person would and submit it; where it redirected to."""
    form = browser.form_on(page, *values, *(files or {}))
    response = browser.submit(form, form.data(values, every_choice=every_choice), files)
    assert response.status in REDIRECTS, (
        f"{browser.name}: {form.method.upper()} {form.action} -> {response.status}: "
        f"{form_errors(response) or response.text[:500]}"
    )
    return response.location


def pk_of(location: str) -> int:
    return int(resolve(urlsplit(location).path).kwargs["pk"])


def sign_up(browser: Browser, *, mark: str) -> None:
    create(
        browser,
        reverse("accounts:sign_up"),
        {"account_name": f"{mark} account", "email": f"{mark}@example.org", "password": PASSWORD},
    )
    assert browser.signed_in


def sign_in(browser: Browser, *, mark: str) -> None:
    create(
        browser,
        reverse("accounts:sign_in"),
        {"email": f"{mark}@example.org", "password": PASSWORD},
    )


# --- the first account's things ----------------------------------------------------------------


def create_everything(alice: Browser, mark: str, secret: dict[str, str]) -> None:
    """One of everything, through the forms. Every typed value carries `mark`."""
    server = pk_of(
        create(
            alice,
            reverse("channels:server_create"),
            {
                "name": f"{mark} server",
                # The address policy allows loopback in tests; nothing connects here anyway.
                "host": "127.0.0.1",
                "port": "6667",
                "nick": f"{mark}nick",
                "alt_nicks": f"{mark}alt",
                "username": f"{mark}user",
                "realname": f"{mark} real name",
                "password": secret["server password"],
                "sasl_username": f"{mark}sasl",
                "sasl_password": secret["SASL password"],
            },
        )
    )
    create(
        alice,
        reverse("channels:channel_create", args=[server]),
        {"kind": "channel", "name": f"#{mark}chan", "key": secret["channel key"]},
    )
    kb = pk_of(
        create(
            alice,
            reverse("knowledge:kb_create"),
            {"name": f"{mark} handbook", "description": f"{mark} what we know"},
        )
    )
    document_page = reverse("knowledge:document_create", args=[kb])
    create(alice, document_page, {"title": f"{mark} pasted", "text": f"{mark} pasted words"})
    upload = (f"{mark}upload.txt", f"{mark} uploaded words\n".encode(), "text/plain")
    create(alice, document_page, {"title": ""}, files={"file": upload})
    provider_page = reverse("llms:provider_create")
    llm = next(v for v in alice.form_on(provider_page, "llm").choices["llm"] if v)
    create(
        alice,
        provider_page,
        {
            "llm": llm,
            "api_key": secret["API key"],
            "enabled_models": f"{mark}model\n{mark}other",
            "default_model": f"{mark}model",
        },
    )
    tools = parse_urls(alice.get(reverse("llms:tool_list")), alice.base_url)
    for tool_page in sorted(u for u in tools if route_of(u) == "llms:tool_edit"):
        if resolve(urlsplit(tool_page).path).kwargs["slug"] in KNOWLEDGE_BASE_TOOLS:
            # Not switched on or off (agents with a knowledge base have it): settings only.
            create(alice, tool_page, {"setting_max_passages": "7"})
            continue
        form = alice.form_on(tool_page, "enabled")
        values: dict[str, str | list[str]] = {"enabled": "on"}
        if "setting_timezone" in dict(form.fields):
            values["setting_timezone"] = TIMEZONE_A
        create(alice, tool_page, values)
    # Every offered channel, knowledge base and tool ticked; the first provider chosen.
    create(
        alice,
        reverse("agents:agent_create"),
        {
            "name": f"{mark} agent",
            "nick": f"{mark}bot",
            "model": f"{mark}model",
            "system_prompt": f"{mark} be helpful",
        },
        every_choice=True,
    )
    # A scheduled task (its agent and channel: the first offered), so its actions are probed.
    create(
        alice,
        reverse("agents:task_list"),
        {"prompt": f"{mark} summarise the day", "repeat": "every day at 09:00"},
        every_choice=True,
    )
    create(alice, reverse("history:chat_settings"), {"highlight_words": f"{mark}hl"})


def insert_history(account: Account, mark: str) -> None:
    """What a browser cannot create (the gateway and the agents write these): lines, more than
    a page of them so the chat offers older ones, a member, notifications, an agent run."""
    start = datetime.now(UTC) - timedelta(days=1)
    with switch(account):
        channel = Channel.objects.get(name=f"#{mark}chan")
        Message.objects.bulk_create(
            Message(
                channel=channel,
                sender=f"{mark}carol",
                text=f"{mark} line {n} {mark}hl" if n % 50 == 0 else f"{mark} line {n}",
                server_time=start + timedelta(seconds=n),
            )
            for n in range(150)
        )
        highlights = Message.objects.filter(text__endswith=f"{mark}hl").order_by("pk")
        first, *rest = list(highlights)
        Notification.objects.create(
            message=first, kind=Notification.Kind.HIGHLIGHT, read_at=datetime.now(UTC)
        )
        for message in rest:
            Notification.objects.create(message=message, kind=Notification.Kind.HIGHLIGHT)
        ChannelUser.objects.create(channel=channel, nick=f"{mark}member", prefixes="@")
        channel.topic = f"{mark} topic"
        channel.save(update_fields=["topic"])
        Task.objects.create(
            agent=Agent.objects.get(),
            status=Task.Status.SUCCEEDED,
            input=f"{mark} asked",
            output=f"{mark} answered",
        )
        # A paused scheduled task besides the active one the form made: its page offers resume.
        paused = create_schedule(
            agent=Agent.objects.get(),
            prompt=f"{mark} weekly report",
            channel=channel,
            when=None,
            repeat="every monday at 10:00",
            timezone="UTC",
            created_by=f"{mark}",
        )
        pause_schedule(schedule=paused)
        # A file dropped into the chat (its row: the file itself is served by token alone, and
        # its page and delete form are what the probe replays).
        Upload.objects.create(
            token=secrets.token_urlsafe(16),
            name=f"{mark}.txt",
            content_type="text/plain",
            size=10,
            channel_name=channel.name,
        )
        # The documents indexed, as a worker would: the knowledge base's search finds passages,
        # and links to them (the document's anchors, the short links agents cite).
        for document_id in Document.objects.values_list("pk", flat=True):
            index_document_now(document_id=document_id)
        assert Chunk.objects.exists()
        # One of them queued again for a worker (as "Re-index" leaves it): the knowledge base
        # page then polls its document list, and the probe follows that fragment's URL too.
        Document.objects.filter(pk=Document.objects.values("pk")[:1]).update(
            status=Document.Status.QUEUED
        )
        # An export of the account, built as its worker builds it: its page and its download.
        export = Export.objects.create(requested_by=f"{mark}@example.org")
        assert build_export_now(export_id=export.pk) is not None


# --- what the first account owns, as rows ------------------------------------------------------


def stored_ciphertexts(account: Account) -> list[str]:
    """The encrypted columns as stored: a page must not show these either."""
    schema = connection.ops.quote_name(account.schema_name)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT password, sasl_password FROM {schema}.channels_app_server")
        values = [v for row in cursor.fetchall() for v in row]
        cursor.execute(f"SELECT key FROM {schema}.channels_app_channel")
        values += [v for (v,) in cursor.fetchall()]
        cursor.execute("SELECT api_key FROM llms_accountllm WHERE account_id = %s", [account.pk])
        values += [v for (v,) in cursor.fetchall()]
    return [v for v in values if v]


def snapshot(account: Account) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the account's schema, and its rows in public (found by their account_id or
    user_id column, so tables added later are included)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    user_ids = list(User.objects.filter(account=account).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema IN (%s, 'public') ORDER BY 1, 2",
            [account.schema_name],
        )
        columns: dict[tuple[str, str], set[str]] = {}
        for schema, table, column in cursor.fetchall():
            columns.setdefault((schema, table), set()).add(column)
        for (schema, table), names in columns.items():
            name = f"{connection.ops.quote_name(schema)}.{connection.ops.quote_name(table)}"
            if schema == account.schema_name:
                cursor.execute(f"SELECT * FROM {name}")
            elif table == Account._meta.db_table:
                cursor.execute(f"SELECT * FROM {name} WHERE id = %s", [account.pk])
            elif "account_id" in names:
                cursor.execute(f"SELECT * FROM {name} WHERE account_id = %s", [account.pk])
            elif "user_id" in names:
                cursor.execute(f"SELECT * FROM {name} WHERE user_id = ANY(%s)", [user_ids])
            else:
                continue
            rows[f"{schema}.{table}"] = sorted(cursor.fetchall(), key=repr)
    return rows


def readable(command: str) -> str:
    """A gateway command as the gateway reads it: JSON, or JSON sealed with the deployment's
    keys. (The channel is shared by every Redis database, so other runs' commands, sealed with
    other keys, pass through as they are.)"""
    if command.startswith("{"):
        return command
    try:
        return crypto.decrypt(command)
    except crypto.SecretDecryptionError:
        return command


@contextmanager
def gateway_commands() -> Iterator[list[str]]:
    """Everything published to the gateway meanwhile."""
    pubsub = events.redis_client().pubsub()
    pubsub.subscribe(events.GATEWAY_COMMANDS)
    seen: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                seen.append(readable(message["data"].decode()))

    thread = threading.Thread(target=listen, name="gateway-commands", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)
        pubsub.close()


# --- the live stream ---------------------------------------------------------------------------


class StreamReader:
    """GET /chat/events/ with a browser's cookies, on a thread; reads until `until` matches the
    text so far or nothing arrives for `quiet` seconds."""

    def __init__(
        self,
        browser: Browser,
        url: str,
        *,
        quiet: float,
        until: Callable[[str], bool] = lambda text: False,
    ) -> None:
        self.text = ""
        self.status = 0
        self.content_type = ""
        self.until = until
        self.opened = threading.Event()
        self.done = threading.Event()
        self.client = httpx.Client(
            base_url=browser.base_url, cookies=browser.http.cookies, timeout=quiet
        )
        self.thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self.thread.start()
        assert self.opened.wait(10), f"{browser.name}: the stream did not open"
        assert self.status == 200 and self.content_type.startswith("text/event-stream"), (
            f"{browser.name}: {url} -> {self.status} {self.content_type}"
        )

    def _read(self, url: str) -> None:
        try:
            with self.client.stream("GET", url) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                for chunk in response.iter_text():
                    self.text += chunk
                    self.opened.set()
                    if self.until(self.text):
                        break
        except httpx.TimeoutException:
            pass
        finally:
            self.opened.set()
            self.done.set()
            self.client.close()


# --- the probe ---------------------------------------------------------------------------------


def allowed_for_visitor(response: Response, public: set[str]) -> bool:
    path = urlsplit(response.url).path
    if response.status in REDIRECTS:
        return urlsplit(response.location).path == reverse("accounts:sign_in")
    return response.status in REFUSED or (path in public and response.status < 500)


@pytest.fixture
def export_files(transactional_db: None) -> Iterator[None]:
    """The archives insert_history has a worker's code build are deleted with the test."""
    yield
    store = storage()
    for account_id in Account.objects.values_list("pk", flat=True):
        with contextlib.suppress(FileNotFoundError):
            for name in store.listdir(folder_of(account_id))[1]:
                store.delete(f"{folder_of(account_id)}/{name}")


@pytest.fixture
def browsers(asgi_server: AsgiServer) -> Iterator[Callable[[str], Browser]]:  # noqa: F811
    opened: list[Browser] = []

    def browser(name: str) -> Browser:
        opened.append(Browser(asgi_server.url, name))
        return opened[-1]

    yield browser
    for each in opened:
        each.close()


def test_another_account_and_a_visitor_see_and_change_nothing_of_an_account(
    browsers: Callable[[str], Browser], export_files: None
) -> None:
    started = time.monotonic()
    mark_a, mark_b, mark_visitor = marker(), marker(), marker()
    secret = {
        "server password": f"srvpass-{secrets.token_hex(8)}",
        "SASL password": f"saslpass-{secrets.token_hex(8)}",
        "channel key": f"chankey{secrets.token_hex(6)}",
        "API key": f"sk-probe-{secrets.token_hex(12)}",
    }
    alice, bob, visitor = browsers("first account"), browsers("second account"), browsers("visitor")
    problems: list[str] = []

    with gateway_commands() as commands:
        sign_up(alice, mark=mark_a)
        create_everything(alice, mark_a, secret)
        account = User.objects.select_related("account").get(email=f"{mark_a}@example.org").account
        insert_history(account, mark_a)
        ciphertexts = stored_ciphertexts(account)
        assert len(ciphertexts) == 4, ciphertexts
        sign_up(bob, mark=mark_b)
        # The listener works: the first account's own changes reached the gateway.
        assert any(str(account.pk) in c for c in commands), commands

        def skip(url: str) -> bool:
            return route_of(url) is None or excluded(route_of(url))

        # The notifications page early: opening a channel marks its highlights read (a GET
        # that changes state, issue 6 item 8), and "Mark all read" shows only while some are
        # unread.
        crawl_a = crawl(
            alice, ["/", reverse("history:notifications")], skip=skip, fill_get_forms=mark_a
        )
        crawl_b = crawl(bob, ["/"], skip=skip, fill_get_forms=mark_b)
        crawl_visitor = crawl(visitor, ["/"], skip=skip, fill_get_forms=mark_visitor)
        public = {urlsplit(u).path for u, r in crawl_visitor.pages.items() if r.status == 200}
        own_paths_b = {urlsplit(u).path for u in crawl_b.urls}

        # 1. The first account's own pages never show a secret.
        hidden = list(secret.values()) + ciphertexts
        for response in crawl_a.pages.values():
            problems += findings(response, alice.name, hidden)
        problems += secrets_typed_into_invalid_forms(alice, crawl_a, hidden)
        assert mark_a in crawl_a.pages["/"].text, "the first account's dashboard shows its data"

        # 2. The others' own pages, then the replays. The first account's objects are named by
        # paths with values in them that the second account's own pages never name.
        leaks = [mark_a, TIMEZONE_A, str(account.pk), account.schema_name, *hidden]
        for who, pages in ((bob, crawl_b.pages), (visitor, crawl_visitor.pages)):
            for response in pages.values():
                problems += findings(response, who.name, leaks)

        def names_first_accounts_object(url: str) -> bool:
            return has_arguments(url) and urlsplit(url).path not in own_paths_b

        as_bob = Replayer(
            bob,
            {mark_a: mark_b, TIMEZONE_A: "Asia/Kathmandu"},
            leaks,
            problems,
            first_accounts=names_first_accounts_object,
        )
        as_visitor = Replayer(
            visitor,
            {mark_a: mark_visitor, TIMEZONE_A: "America/St_Johns"},
            leaks,
            problems,
            public=public,
        )
        before = snapshot(account)
        commands_before = len(commands)
        for url in sorted(crawl_a.urls):
            as_bob.get(url)
            as_visitor.get(url)
        visitor.get(reverse("accounts:sign_in"))  # a CSRF cookie, as any visitor has
        posts = post_targets(crawl_a)
        # Objects first: once the second account has created things of its own, its ids could
        # coincide with the first account's.
        posts.sort(key=lambda form: not names_first_accounts_object(form.action))
        for form in posts:
            as_bob.post(form)
            if not bob.signed_in:  # the sign-out form
                sign_in(bob, mark=mark_b)
            as_visitor.post(form)

        # 3. Nothing of the first account changed, and nobody asked the gateway for it.
        after = snapshot(account)
        for table in sorted(before.keys() | after.keys()):
            if before.get(table) != after.get(table):
                problems.append(f"the replays changed the first account's rows in {table}")
        for command in commands[commands_before:]:
            if str(account.pk) in command:
                problems.append(f"a replay made the web ask the gateway: {command}")

    # 4. The live stream: an event of the first account reaches its own stream only.
    problems += stream_problems(alice, bob, account, mark_a)

    # 5. Every URL pattern was reached.
    reached = {route_of(u) for c in (crawl_a, crawl_b, crawl_visitor) for u in c.urls}
    missing = sorted(r for r in all_routes() - reached if not excluded(r))
    assert not missing, (
        f"URL patterns the probe never reached: {missing}. Link them from a page, or add them "
        "to EXCLUDED_ROUTES with the reason."
    )
    assert not problems, "\n".join(problems)

    requests = alice.requests + bob.requests + visitor.requests
    print(  # figures for a reader of `pytest -s`
        f"probe: {len(crawl_a.pages)} pages and {len(crawl_a.forms)} forms of the first account, "
        f"{len(crawl_a.urls)} URLs replayed, {len(posts)} POSTs each as the second account and "
        f"a visitor, {requests} requests, {len(reached)} URL patterns, "
        f"{time.monotonic() - started:.1f} s"
    )


def findings(response: Response, who: str, leaks: list[str]) -> list[str]:
    found = []
    text = response.everything()
    if response.status >= 500:
        found.append(f"{who}: {response.method} {response.url} -> {response.status}")
    for value in leaks:
        if value in text:
            found.append(f"{who}: {response.method} {response.url} shows {value!r}")
    return found


def secrets_typed_into_invalid_forms(
    alice: Browser, crawl_a: Crawl, hidden: list[str]
) -> list[str]:
    """A form that is re-rendered with errors must not hand back a secret just typed into it."""
    found = []
    for form in crawl_a.forms.values():
        blank = [n for n in form.required if n not in form.passwords and n not in form.choices]
        if form.method != "post" or not form.passwords or not blank:
            continue
        typed = f"typed-{secrets.token_hex(8)}"
        values: dict[str, str | list[str]] = {name: typed for name in form.passwords}
        values[blank[0]] = ""  # invalid on purpose, so nothing is saved
        response = alice.submit(alice_form(alice, form), form.data(values))
        if response.status != 400:
            found.append(
                f"{alice.name}: {form.action} with {blank[0]} blank -> {response.status}, not 400"
            )
        found += findings(response, alice.name, [typed, *hidden])
    return found


def alice_form(alice: Browser, form: Form) -> Form:
    # The page again, for a fresh CSRF token after the crawl.
    return next(f for f in parse_forms(alice.get(form.page)) if f.key == form.key)


def post_targets(crawl_a: Crawl) -> list[Form]:
    """Every POST form, and a bare POST to every other URL found (a script's data-*-url, a
    link): a view that forgets to check the method or the owner shows up either way."""
    forms = [f for f in crawl_a.forms.values() if f.method == "post"]
    actions = {f.action for f in forms}
    for url in sorted(crawl_a.urls - actions):
        forms.append(Form("", "post", url, False, [], {}, [], [], []))
    return forms


@dataclass
class Replayer:
    """Someone replaying the first account's URLs and forms: the second account (who must be
    refused the first account's objects) or a visitor (who must be sent to sign in)."""

    who: Browser
    # The first account's distinctive values, and what this replayer types instead.
    disguise: dict[str, str]
    leaks: list[str]
    problems: list[str]
    first_accounts: Callable[[str], bool] | None = None
    public: set[str] | None = None  # a visitor's: the pages anyone may see

    def disguised(self, value: str) -> str:
        for own, other in self.disguise.items():
            value = value.replace(own, other)
        return value

    def get(self, url: str) -> None:
        response = self.who.get(urlunsplit(urlsplit(url)._replace(query=self.disguised_query(url))))
        self.check(response, url)

    def disguised_query(self, url: str) -> str:
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
        return urlencode([(k, self.disguised(v)) for k, v in pairs])

    def post(self, form: Form) -> None:
        data = {
            name: [self.disguised(value) for value in values]
            for name, values in form.data(every_choice=True).items()
        }
        data["csrfmiddlewaretoken"] = [self.who.csrf_token]
        url = urlunsplit(urlsplit(form.action)._replace(query=self.disguised_query(form.action)))
        self.check(self.who.request("POST", url, data), form.action)

    def check(self, response: Response, url: str) -> None:
        self.problems.extend(findings(response, self.who.name, self.leaks))
        if response.status >= 500:
            return  # reported already
        if self.public is not None:
            if allowed_for_visitor(response, self.public):
                return
            expected = "a redirect to sign in, 403, 404 or 405"
        elif self.first_accounts is not None and self.first_accounts(url):
            if response.status in REFUSED:
                return
            expected = "403, 404 or 405"
        else:
            return  # the second account's own page: only leaks and 500s count
        self.problems.append(
            f"{self.who.name}: {response.method} {response.url} -> {response.status}, "
            f"not {expected}"
        )


def stream_problems(alice: Browser, bob: Browser, account: Account, mark: str) -> list[str]:
    events_url = reverse("chat:events")
    live = f"{mark} live line"
    bob_stream = StreamReader(bob, events_url, quiet=2)
    alice_stream = StreamReader(alice, events_url, quiet=10, until=lambda text: live in text)
    with switch(account):
        channel = Channel.objects.get(name__endswith="chan")
        message = Message.objects.create(
            channel=channel, sender=f"{mark}carol", text=live, server_time=datetime.now(UTC)
        )
    # As the gateway publishes a stored line (channels_app/events.py).
    payload = {
        "type": "message",
        "id": message.pk,
        "channel_id": channel.pk,
        "server_id": channel.server_id,
        "kind": message.kind,
        "sender": message.sender,
        "text": message.text,
        "server_time": message.server_time.isoformat(),
        "msgid": "",
        "highlight": False,
    }
    client = events.redis_client()
    client.publish(events.events_channel(account.pk), events.encode(payload))
    client.close()
    alice_stream.done.wait(15)
    bob_stream.done.wait(15)
    found = []
    if live not in alice_stream.text:
        found.append(f"the first account's own stream did not carry its line: {alice_stream.text}")
    if mark in bob_stream.text or str(account.pk) in bob_stream.text:
        found.append(f"the second account's stream carried the first's event: {bob_stream.text}")
    return found
