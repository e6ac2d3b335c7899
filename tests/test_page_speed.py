"""Pages at speed (issue 11, item 12): the web's pooled database connections never carry one
account's search_path into another request and stay within the per-schema memory bound; the
main pages keep the number of queries they make (figures in docs/benchmarks.md, "Issue 11:
pages")."""

import http.client
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from channels_app.models import Channel, Message, Notification, Server
from config.database import connection_params
from tenancy import db_memory, switch
from tests.conftest import signed_in_client
from tests.factories import UserFactory
from tests.test_chat_e2e import AsgiServer, serving, uvicorn_env

# --- pooled connections under uvicorn ---------------------------------------------------------


def _users_with_servers(count: int) -> list[tuple[User, str]]:
    """`count` users in their own accounts, each with a server named after the account."""
    out = []
    for _ in range(count):
        user = cast(User, UserFactory())
        name = f"net-{uuid.uuid4().hex[:10]}"
        with switch(user):
            Server.objects.create(name=name, host="irc.example.org", nick="me")
        out.append((user, name))
    cast(Any, connection).set_schema_to_public()
    return out


def _get(server: AsgiServer, path: str, user: User) -> str:
    cookie_name = settings.SESSION_COOKIE_NAME
    session = signed_in_client(user).cookies[cookie_name].value
    parts = urlsplit(server.url)
    assert parts.hostname and parts.port
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": f"{cookie_name}={session}"})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, f"{path}: {response.status}"
        return body
    finally:
        conn.close()


def _web_backends(application_name: str) -> set[int]:
    """Backend pids the web has open (its connections carry `application_name`)."""
    params = connection_params(connection.settings_dict, dbname="postgres")
    with psycopg.connect(**params, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return {int(row[0]) for row in rows}


@pytest.fixture
def pooled_web(clean_schemas: None, tmp_path: Path) -> Iterator[Any]:
    """Start the web (uvicorn, DATABASE_POOL on, one pooled connection) with extra settings."""
    started: list[Any] = []

    def start(**extra: str) -> tuple[AsgiServer, str]:
        redis_url = settings.CACHES["default"]["LOCATION"]
        application_name = f"palaver-pool-{uuid.uuid4().hex[:8]}"
        env = uvicorn_env(redis_url) | {
            "DATABASE_POOL": "true",
            "DATABASE_POOL_MAX_SIZE": "1",
            "PGAPPNAME": application_name,
            **extra,
        }
        context = serving(env, tmp_path)
        server = context.__enter__()
        started.append(context)
        return server, application_name

    yield start
    for context in started:
        context.__exit__(None, None, None)


def test_one_pooled_connection_serves_accounts_in_turn_without_leaking(pooled_web: Any) -> None:
    """Alice's and Bob's requests alternate on the web's single pooled connection: each sees
    their own account's data only, and the connection is reused, not opened per request."""
    server, application_name = pooled_web()
    users = _users_with_servers(2)
    for _ in range(4):
        for (user, own), (_, other) in zip(users, reversed(users), strict=True):
            body = _get(server, reverse("channels:server_list"), user)
            assert own in body
            assert other not in body
    assert len(_web_backends(application_name)) == 1


def test_pooled_connection_is_recycled_after_the_schema_limit(pooled_web: Any) -> None:
    """With DATABASE_RECYCLE_AFTER_SCHEMAS=2 the pooled connection is retired once it has
    served two accounts, and the next request gets a new backend with the right data."""
    server, application_name = pooled_web(DATABASE_RECYCLE_AFTER_SCHEMAS="2")
    users = _users_with_servers(3)
    seen: set[int] = set()
    for user, own in users + users:
        assert own in _get(server, reverse("channels:server_list"), user)
        seen |= _web_backends(application_name)
    # Six requests over three accounts, two schemas per backend: at least three backends.
    assert len(seen) >= 3


@pytest.mark.django_db
def test_reset_puts_a_returned_connection_back_on_public() -> None:
    """The pool's reset: a connection handed back with an account's search_path waits in the
    pool on public."""
    params = connection_params(connection.settings_dict)
    with psycopg.connect(**params, autocommit=True) as raw:
        raw.execute('SET search_path = "account_x", public')
        db_memory.reset_pooled_connection(raw)
        row = raw.execute("SHOW search_path").fetchone()
        assert row is not None
        assert row[0] == "public"


@pytest.mark.django_db
def test_reset_retires_a_connection_past_the_schema_limit(settings: Any) -> None:
    settings.DATABASE_RECYCLE_AFTER_SCHEMAS = 3
    params = connection_params(connection.settings_dict)
    with psycopg.connect(**params, autocommit=True) as raw:
        state = db_memory._State()
        db_memory._states[raw] = state
        state.schemas.update({"a", "b"})
        before = db_memory.recycles["schemas"]
        db_memory.reset_pooled_connection(raw)
        assert db_memory.recycles["schemas"] == before
        assert not raw.closed
        state.schemas.add("c")
        raw._expire_at = 1e18  # as psycopg_pool sets it
        db_memory.reset_pooled_connection(raw)
        assert db_memory.recycles["schemas"] == before + 1
        assert raw._expire_at == 0.0


# --- queries per page --------------------------------------------------------------------------


@pytest.fixture
def busy_alice(alice: User) -> tuple[User, dict[str, int]]:
    """Alice with a server, three channels, 100 lines and five highlights."""
    from datetime import timedelta

    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.example.org", nick="alice")
        channels = [Channel.objects.create(server=server, name=n) for n in ("#a", "#b", "#c")]
        start = timezone.now() - timedelta(hours=1)
        messages = Message.objects.bulk_create(
            Message(
                channel=channels[0],
                sender=f"nick{n % 5}",
                text=f"line {n} https://example.org/{n}",
                server_time=start + timedelta(seconds=n),
            )
            for n in range(100)
        )
        Notification.objects.bulk_create(
            Notification(message=m, kind=Notification.Kind.HIGHLIGHT) for m in messages[-5:]
        )
    cast(Any, connection).set_schema_to_public()
    return alice, {"server": server.pk, "channel": channels[0].pk}


def _count_queries(client: Client, path: str) -> int:
    client.get(path)  # warm: a first request may fill caches
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    assert response.status_code == 200, f"{path}: {response.status_code}"
    return len(queries.captured_queries)


# What each main page costs, signed in, locked in: a new query on one of them is a choice to
# make in review, not an accident. The first two are the session (with its user and account,
# accounts.session_store) and the account's search_path; the SETs are counted as queries.
PAGE_QUERIES = {
    "dashboard": ("/", 6),
    "servers": ("/servers/", 4),
    "server": ("/servers/{server}/", 5),
    "chat": ("/chat/{channel}/", 11),
    "search": ("/search/?q=line", 12),
    "notifications": ("/notifications/", 5),
    "settings": ("/settings/chat/", 2),
    "agents": ("/agents/", 5),
    "knowledge": ("/knowledge/", 4),
}


@pytest.mark.parametrize("page", list(PAGE_QUERIES))
def test_queries_per_page(page: str, busy_alice: tuple[User, dict[str, int]]) -> None:
    user, ids = busy_alice
    template, expected = PAGE_QUERIES[page]
    client = signed_in_client(user)
    path = template.format(**ids)
    assert _count_queries(client, path) == expected
    # No query per row: more servers, channels, lines and highlights cost the same.
    with switch(user):
        for n in range(3):
            server = Server.objects.create(name=f"More {n}", host="irc.example.org", nick="al")
            channel = Channel.objects.create(server=server, name=f"#more{n}")
            message = Message.objects.create(
                channel=channel, sender="bob", text="alice: line", server_time=timezone.now()
            )
            Notification.objects.create(message=message, kind=Notification.Kind.HIGHLIGHT)
    cast(Any, connection).set_schema_to_public()
    assert _count_queries(client, path) == expected


# --- the session and its user in one query ------------------------------------------------------


def test_session_row_brings_its_user(alice: User) -> None:
    """The user comes with the session row (accounts.session_store): no query of its own."""
    client = signed_in_client(alice)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("history:chat_settings"))
    assert response.status_code == 200
    assert response.wsgi_request.user == alice
    sqls = [q["sql"] for q in queries.captured_queries]
    assert any('FROM "accounts_session"' in sql and '"accounts_user"' in sql for sql in sqls)
    assert not any(
        sql.lstrip().startswith("SELECT") and 'FROM "accounts_user"' in sql for sql in sqls
    )


def test_session_of_a_deactivated_user_is_signed_out(alice: User) -> None:
    """The user taken from the session row still passes the backend's checks."""
    client = signed_in_client(alice)
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert reverse("accounts:sign_in") in response["Location"]


def test_password_changed_elsewhere_signs_the_session_out(alice: User) -> None:
    """Django's session hash check still runs on the user taken from the session row."""
    client = signed_in_client(alice)
    alice.set_password("another long passphrase 42")
    alice.save(update_fields=["password"])
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302


def test_revoked_and_expired_sessions_sign_out_at_once(alice: User) -> None:
    """The session query compiled once (accounts.session_store) still reads the row on every
    request: a deleted row (revoked) and an expired one sign the browser out at once, and a
    session key that is no session's is no one's."""
    from accounts.models import Session

    revoked = signed_in_client(alice)
    assert revoked.get(reverse("dashboard")).status_code == 200
    key = revoked.cookies[settings.SESSION_COOKIE_NAME].value
    Session.objects.filter(session_key=key).delete()
    assert revoked.get(reverse("dashboard")).status_code == 302

    expired = signed_in_client(alice)
    assert expired.get(reverse("dashboard")).status_code == 200
    key = expired.cookies[settings.SESSION_COOKIE_NAME].value
    Session.objects.filter(session_key=key).update(expire_date=timezone.now())
    assert expired.get(reverse("dashboard")).status_code == 302

    stranger = Client()
    stranger.cookies[settings.SESSION_COOKIE_NAME] = "x" * 32
    assert stranger.get(reverse("dashboard")).status_code == 302


def test_session_query_loads_the_same_as_the_orm(alice: User) -> None:
    """The prepared query builds the session, its user and their account as
    select_related would, with the fields' converters applied."""
    from django.db import connections

    from accounts.models import Session
    from accounts.session_store import _session_query

    wrapper = connections["default"]
    client = signed_in_client(alice)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    orm = Session.objects.select_related("user__account").get(session_key=key)
    with CaptureQueriesContext(connection) as queries:
        session = _session_query(Session, wrapper).get(wrapper, key, timezone.now())
        assert session is not None
        assert session.user.account.name == alice.account.name
    assert len(queries.captured_queries) == 1
    for field in Session._meta.concrete_fields:
        assert getattr(session, field.attname) == getattr(orm, field.attname)
    assert session.user == alice
    assert session.user.account == alice.account
    assert _session_query(Session, wrapper).get(wrapper, "nope", timezone.now()) is None


# --- {% url %} reversed once per process ------------------------------------------------------


def test_url_tag_caches_names_without_arguments(rf: Any) -> None:
    """core.templatetags.url_cache replaces Django's {% url %}: the same URLs, `as` included;
    a name without arguments is reversed once; a tag with arguments is reversed each time;
    the script prefix is part of the key."""
    from django.template import Context, Template
    from django.urls import set_script_prefix

    from core.templatetags import url_cache

    url_cache.clear()
    template = Template(
        "{% url 'dashboard' %}|{% url 'channels:server_list' as s %}{{ s }}|"
        "{% url 'channels:server_detail' 7 %}|{% url 'nope:nothing' as n %}[{{ n }}]"
    )
    expected = (
        "|".join(
            [
                reverse("dashboard"),
                reverse("channels:server_list"),
                reverse("channels:server_detail", args=[7]),
            ]
        )
        + "|[]"
    )
    assert template.render(Context({})) == expected
    assert len(url_cache._urls) == 2
    assert template.render(Context({})) == expected
    try:
        set_script_prefix("/palaver/")
        assert template.render(Context({})).startswith("/palaver/|/palaver/servers/|")
    finally:
        set_script_prefix("/")
    assert template.render(Context({})) == expected


# --- the pool's settings ------------------------------------------------------------------------


def _settings_in_child(**env: str) -> "subprocess.CompletedProcess[str]":
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        "db = settings.DATABASES['default']; "
        "print(json.dumps({'age': db['CONN_MAX_AGE'], "
        "'pool': (db['OPTIONS'].get('pool') or {}).get('max_size'), "
        "'options': db['OPTIONS'].get('options')}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pool_settings() -> None:
    """The pool ignores DATABASE_CONN_MAX_AGE (set for Celery's workers, refused by Django
    with a pool) instead of failing the web's start; a pool of 0 connections is an error; JIT
    is off unless asked for."""
    pooled = _settings_in_child(
        DATABASE_POOL="true", DATABASE_POOL_MAX_SIZE="3", DATABASE_CONN_MAX_AGE="60"
    )
    assert pooled.returncode == 0, pooled.stderr
    assert json.loads(pooled.stdout) == {
        "age": 0,
        "pool": 3,
        "options": "-c jit=off -c search_path=public",
    }
    plain = _settings_in_child(DATABASE_POOL="false", DATABASE_CONN_MAX_AGE="60", DATABASE_JIT="1")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == {"age": 60, "pool": None, "options": None}
    empty = _settings_in_child(DATABASE_POOL="true", DATABASE_POOL_MAX_SIZE="0")
    assert empty.returncode != 0
    assert "DATABASE_POOL_MAX_SIZE" in empty.stderr


# --- the ASGI handler: sync views in one hop, async views as Django serves them -------------------


def test_handler_routes_async_views_to_djangos_path() -> None:
    """core.handlers sends the live stream (an async view) down Django's async path and every
    other path, an unknown one included, down the one-hop sync path."""
    from core.handlers import _is_async_view, _path_info

    urlconf = settings.ROOT_URLCONF
    assert _is_async_view(urlconf, "/chat/events/")
    assert not _is_async_view(urlconf, reverse("dashboard"))
    assert not _is_async_view(urlconf, reverse("channels:server_list"))
    assert not _is_async_view(urlconf, "/no/such/page/")
    assert _path_info({"path": "/palaver/chat/events/", "root_path": "/palaver"}) == (
        "/chat/events/"
    )
    assert _path_info({"path": "/", "root_path": ""}) == "/"
