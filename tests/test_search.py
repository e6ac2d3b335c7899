"""Full-text search over an account's history: web-search syntax, filters, newest first by
keyset, snippets that are escaped before they are marked, and one account never finds
another's lines."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import User
from channels_app.models import Channel, Message, Server
from channels_app.selectors.search import (
    Cursor,
    SearchQueryError,
    render_snippet,
    search_messages,
    strip_formatting,
)
from tenancy import NoTenantError, switch
from tests.helpers import T0, say


def texts(query: str, **filters: object) -> list[str]:
    return [hit.text for hit in search_messages(query, **filters).hits]  # type: ignore[arg-type]


@pytest.fixture
def world(alice: User) -> dict[str, Channel]:
    with switch(alice):
        libera = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        oftc = Server.objects.create(name="OFTC", host="irc.oftc.net", nick="alice")
        python = Channel.objects.create(server=libera, name="#python")
        debian = Channel.objects.create(server=oftc, name="#debian")
        say(python, "the deploy failed again last night", sender="Dave", minutes=1)
        say(python, "release notes are out", sender="erin", minutes=2)
        say(debian, "deploy went fine on debian", sender="dave", minutes=3)
        say(python, "release candidate deploy scheduled", sender="frank", minutes=4)
        say(debian, "stable release today", sender="erin", minutes=5)
        say(python, "", sender="deploy", minutes=6, kind=Message.Kind.JOIN)
    return {"python": python, "debian": debian}


def test_words_newest_first(alice: User, world: dict[str, Channel]) -> None:
    with switch(alice):
        assert texts("deploy") == [
            "release candidate deploy scheduled",
            "deploy went fine on debian",
            "the deploy failed again last night",
        ]
        # Every word must be there; case does not matter.
        assert texts("DEPLOY release") == ["release candidate deploy scheduled"]


def test_web_search_syntax(alice: User, world: dict[str, Channel]) -> None:
    with switch(alice):
        assert texts('"release notes"') == ["release notes are out"]
        assert texts('"notes release"') == []
        assert texts("deploy -debian -candidate") == ["the deploy failed again last night"]
        assert texts("notes OR stable") == ["stable release today", "release notes are out"]
        # The sender is part of what is searched, as in the index.
        assert texts("frank") == ["release candidate deploy scheduled"]


def test_joins_and_parts_are_not_results(alice: User, world: dict[str, Channel]) -> None:
    with switch(alice):
        assert "" not in texts("deploy")


def test_filters(alice: User, world: dict[str, Channel]) -> None:
    with switch(alice):
        assert texts("deploy", channel_id=world["debian"].pk) == ["deploy went fine on debian"]
        # Nick: exact, whatever the case.
        assert texts("deploy", nick="DAVE") == [
            "deploy went fine on debian",
            "the deploy failed again last night",
        ]
        assert texts("deploy", nick="dav") == []
        assert texts(
            "deploy OR release",
            since=T0 + timedelta(minutes=2),
            until=T0 + timedelta(minutes=4),
        ) == ["deploy went fine on debian", "release notes are out"]


def test_keyset_pages_neither_skip_nor_repeat(alice: User, world: dict[str, Channel]) -> None:
    with switch(alice):
        # Lines sharing one server time, as a burst replayed by the server would.
        for i in range(7):
            say(world["python"], f"burst line {i}", minutes=10)
        seen: list[str] = []
        cursor: Cursor | None = None
        while True:
            page = search_messages("burst", before=cursor, limit=3)
            seen += [hit.text for hit in page.hits]
            if page.next_cursor is None:
                break
            # Through the URL form, as the page's "Older results" link carries it.
            cursor = Cursor.decode(page.next_cursor.encode())
        assert seen == [f"burst line {i}" for i in reversed(range(7))]


def test_cursor_decoding_is_forgiving() -> None:
    cursor = Cursor(server_time=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC), id=42)
    assert Cursor.decode(cursor.encode()) == cursor
    for junk in ["", "abc", "1-", "-5", "1-2-3", "1.5-2", "999999999999999999-1"]:
        assert Cursor.decode(junk) is None, junk


def test_snippet_marks_matches_and_escapes_the_line(alice: User, world: dict[str, Channel]) -> None:
    with switch(alice):
        say(world["python"], "<script>alert('deploy')</script> & \x02bold deploy\x02", minutes=20)
        say(world["python"], "fake \ue000marker\ue001 then deploy", minutes=21)
        hits = search_messages("deploy").hits
    assert str(hits[0].snippet) == "fake marker then <mark>deploy</mark>"
    # Tag-like text is shown as it was said (ts_headline alone would drop it), escaped.
    assert str(hits[1].snippet) == (
        "&lt;script&gt;alert(&#x27;<mark>deploy</mark>&#x27;)&lt;/script&gt; &amp; "
        "bold <mark>deploy</mark>"
    )
    assert hits[0].url == f"/chat/{world['python'].pk}/?around={hits[0].id}"


def test_render_snippet_never_leaves_a_tag_open() -> None:
    assert str(render_snippet("a \ue000b")) == "a <mark>b</mark>"
    assert str(render_snippet("\ue001<i>")) == "&lt;i&gt;"
    assert strip_formatting("\x0304,12red\x03 \x1ditalic\x1d \x04ff0000hex") == "red italic hex"


@pytest.mark.parametrize("query", ["", "   ", "!!! ???", "\x00", "-"])
def test_nothing_to_search_for(alice: User, world: dict[str, Channel], query: str) -> None:
    with switch(alice), pytest.raises(SearchQueryError):
        search_messages(query)


def test_search_needs_an_account(db: None) -> None:
    with pytest.raises(NoTenantError):
        search_messages("deploy")


def test_query_uses_the_gin_index(alice: User, world: dict[str, Channel]) -> None:
    """The query's expression is the index's: with sequential and plain index scans off, the
    planner must still find a way, and the only one is a bitmap scan of message_search."""
    from channels_app.selectors.search import matching_messages

    with switch(alice):
        queryset = matching_messages("deploy")[:50]
        sql, params = queryset.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Bitmap Index Scan on message_search" in plan, plan


# --- the page ----------------------------------------------------------------------------------


def test_search_page(alice_client: Client, world: dict[str, Channel]) -> None:
    url = reverse("history:search")
    assert alice_client.get(url).status_code == 200
    response = alice_client.get(url, {"q": "deploy", "channel": str(world["python"].pk)})
    assert response.status_code == 200
    body = response.content.decode()
    assert "release candidate <mark>deploy</mark> scheduled" in body
    assert "deploy went fine on debian" not in body
    assert f"/chat/{world['python'].pk}/?around=" in body


def test_search_page_pages_by_keyset(alice: User, alice_client: Client) -> None:
    with switch(alice):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
        channel = Channel.objects.create(server=server, name="#busy")
        Message.objects.bulk_create(
            Message(channel=channel, text=f"ping number {i}", sender="bot", server_time=T0)
            for i in range(60)
        )
    first = alice_client.get(reverse("history:search"), {"q": "ping"})
    assert first.context["page"].next_cursor is not None
    assert len(first.context["page"].hits) == 50
    second = alice_client.get(reverse("history:search") + first.context["next_url"])
    assert len(second.context["page"].hits) == 10
    assert second.context["next_url"] == ""
    ids = {hit.id for hit in first.context["page"].hits + second.context["page"].hits}
    assert len(ids) == 60


@pytest.mark.parametrize(
    ("params", "friendly"),
    [
        ({"q": ""}, "Type a word or two"),
        ({"q": "?!"}, "punctuation alone"),
        ({"q": "deploy", "before": "garbage"}, None),
    ],
)
def test_search_page_friendly_on_bad_input(
    alice_client: Client, world: dict[str, Channel], params: dict[str, str], friendly: str | None
) -> None:
    response = alice_client.get(reverse("history:search"), params)
    assert response.status_code == 200
    if friendly:
        assert friendly in response.content.decode()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": "x" * 201}, "q"),
        ({"q": "deploy", "channel": "abc"}, "channel"),
        ({"q": "deploy", "since": "yesterday"}, "since"),
        ({"q": "deploy", "since": "2026-03-02", "until": "2026-03-01"}, "until"),
    ],
)
def test_search_page_form_errors(
    alice_client: Client, world: dict[str, Channel], params: dict[str, str], field: str
) -> None:
    response = alice_client.get(reverse("history:search"), params)
    assert response.status_code == 400
    assert field in response.context["form"].errors


def test_search_page_dates_are_inclusive_days(
    alice_client: Client, world: dict[str, Channel]
) -> None:
    day = T0.date().isoformat()
    response = alice_client.get(
        reverse("history:search"), {"q": "release", "since": day, "until": day}
    )
    assert len(response.context["page"].hits) == 3
    next_day = (T0.date() + timedelta(days=1)).isoformat()
    response = alice_client.get(reverse("history:search"), {"q": "release", "since": next_day})
    assert response.context["page"].hits == []
    assert "No lines match" in response.content.decode()


def test_script_in_a_line_stays_inert_on_the_page(
    alice: User, alice_client: Client, world: dict[str, Channel]
) -> None:
    with switch(alice):
        say(world["python"], '<script>alert("pwned")</script><img src=x onerror=alert(1)> deploy')
    body = alice_client.get(reverse("history:search"), {"q": "deploy"}).content.decode()
    assert "<script>alert" not in body
    assert "<img src=x" not in body
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in body


def test_another_accounts_lines_are_never_found(
    alice: User, bob: User, bob_client: Client, world: dict[str, Channel]
) -> None:
    with switch(bob):
        server = Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
        say(Channel.objects.create(server=server, name="#bob"), "bob deploys too")
        assert texts("deploy") == []
        assert texts("deploys") == ["bob deploys too"]
    response = bob_client.get(reverse("history:search"), {"q": "deploy"})
    assert response.context["page"].hits == []
    # Naming one of Alice's channels is not a way in: ids are per account, and Bob has no
    # channel with that id.
    with switch(bob):
        assert not Channel.objects.filter(pk=world["debian"].pk).exists()
    response = bob_client.get(
        reverse("history:search"), {"q": "deploy", "channel": str(world["debian"].pk)}
    )
    assert response.status_code == 400
    assert "channel" in response.context["form"].errors
    assert "#debian" not in response.content.decode()


def test_search_needs_sign_in(client: Client, db: None) -> None:
    response = client.get(reverse("history:search"), {"q": "deploy"})
    assert response.status_code == 302
    assert reverse("accounts:sign_in") in response["Location"]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"channel_id": "python"},
        {"nick": "dave"},
        {"since": T0 + timedelta(minutes=2), "until": T0 + timedelta(minutes=30)},
    ],
)
def test_both_ways_to_a_page_agree(
    alice: User, world: dict[str, Channel], filters: dict[str, object]
) -> None:
    """Through the index or walking newest first (search_messages picks by the planner's
    estimate), the same lines come back in the same order, page after page."""
    from channels_app.selectors.search import matching_messages, page_keys

    if filters.get("channel_id") == "python":
        filters = {"channel_id": world["python"].pk}
    with switch(alice):
        for i in range(12):
            say(world["python" if i % 3 else "debian"], f"deploy {i}", sender="Dave", minutes=7)
        for cursor_at in [None, 4]:
            messages = matching_messages("deploy OR release", **filters)  # type: ignore[arg-type]
            if cursor_at is not None:
                anchor = messages[cursor_at]
                messages = messages.filter(server_time__lte=anchor.server_time).exclude(
                    server_time=anchor.server_time, id__gte=anchor.pk
                )
            walked = page_keys(messages, 5, use_index=False)
            indexed = page_keys(messages, 5, use_index=True)
            assert walked == indexed
            assert walked == list(messages.values_list("id", "server_time")[:5])


def test_index_threshold_grows_with_history() -> None:
    from channels_app.selectors.search import MIN_INDEX_MATCHES, index_threshold

    assert index_threshold(-1, 51) == MIN_INDEX_MATCHES
    assert index_threshold(100, 51) == MIN_INDEX_MATCHES
    assert 12_000 < index_threshold(1_000_000, 51) < 13_000


def test_a_slow_walk_gives_way_to_the_index(
    alice: User, world: dict[str, Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels_app.selectors import search

    original = search.page_keys_sql

    def slow_walk(messages: Any, limit: int, *, use_index: bool) -> tuple[str, Any]:
        sql, params = original(messages, limit, use_index=use_index)
        if not use_index:  # as if the matches were far back: each line takes half a second
            sql = f"SELECT id, server_time FROM ({sql}) AS walk WHERE pg_sleep(0.5)::text = ''"
        return sql, params

    monkeypatch.setattr(search, "page_keys_sql", slow_walk)
    with switch(alice):
        messages = search.matching_messages("deploy")
        started = time.monotonic()
        keys = search.page_keys(messages, 2, use_index=False, walk_timeout_ms=50)
        assert time.monotonic() - started < 0.45
        assert keys == list(messages.values_list("id", "server_time")[:2])
        # The caller's transaction goes on, with its own settings back.
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone() == ("0",)
            cursor.execute("SHOW max_parallel_workers_per_gather")
            assert cursor.fetchone() != ("0",)


def test_walking_is_never_given_up_for_a_costlier_index_way() -> None:
    from channels_app.selectors.search import WALK_TIMEOUT_MS, walk_timeout_ms

    assert walk_timeout_ms(0) == WALK_TIMEOUT_MS
    assert walk_timeout_ms(12_000) == WALK_TIMEOUT_MS
    # A word in 700,000 lines: the index way costs seconds; walking is let run.
    assert walk_timeout_ms(700_000) >= 2_000
