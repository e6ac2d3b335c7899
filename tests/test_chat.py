"""The chat pages: scrollback, unread counts and read markers, the input's commands as gateway
commands on Redis, isolation between accounts, and IRC text that stays text."""

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from channels_app import events
from channels_app.models import Channel, ChannelUser, Message, Notification, Server
from channels_app.selectors import chat as selectors
from tenancy import switch
from tests.conftest import signed_in_client

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

Published = Callable[..., list[dict[str, Any]]]


def make_server(name: str = "Libera", nick: str = "alice") -> Server:
    return Server.objects.create(name=name, host="irc.libera.chat", nick=nick)


def make_channel(server: Server, name: str = "#palaver", kind: str = "channel") -> Channel:
    return Channel.objects.create(server=server, name=name, kind=kind)


def say(
    channel: Channel,
    text: str,
    *,
    at: datetime | int = 0,
    sender: str = "carol",
    kind: str = Message.Kind.MESSAGE,
) -> Message:
    moment = at if isinstance(at, datetime) else T0 + timedelta(seconds=at)
    return Message.objects.create(
        channel=channel, kind=kind, sender=sender, text=text, server_time=moment
    )


@pytest.fixture
def alice_chat(alice: User) -> dict[str, Any]:
    """Alice's Libera with #palaver, a conversation with bob, and the server buffer."""
    with switch(alice):
        server = make_server()
        return {
            "server": server,
            "channel": make_channel(server),
            "query": make_channel(server, "bob", Channel.Kind.QUERY),
            "server_buffer": make_channel(server, "*server*", "server"),
        }


# --- scrollback ---------------------------------------------------------------------------------


def test_history_pages_walk_back_in_order_without_overlap(alice: User) -> None:
    with switch(alice):
        channel = make_channel(make_server())
        other = make_channel(channel.server, "#other")
        ids = [say(channel, f"line {n}", at=n).pk for n in range(250)]
        say(other, "elsewhere", at=1000)

        latest = selectors.history_page(channel)
        assert [m.pk for m in latest.messages] == ids[-100:]
        assert latest.has_older
        second = selectors.history_page(channel, before_id=latest.messages[0].pk)
        assert [m.pk for m in second.messages] == ids[50:150]
        assert second.has_older
        third = selectors.history_page(channel, before_id=second.messages[0].pk)
        assert [m.pk for m in third.messages] == ids[:50]
        assert not third.has_older
        # A line of another channel is no anchor here.
        foreign = Message.objects.get(channel=other).pk
        assert selectors.history_page(channel, before_id=foreign).messages == []


def test_history_keyset_breaks_ties_on_id_and_follows_server_time(alice: User) -> None:
    with switch(alice):
        channel = make_channel(make_server())
        same_instant = [say(channel, f"burst {n}", at=10).pk for n in range(7)]
        # Stored later but said earlier (a server replaying history): it sorts first.
        early = say(channel, "from the past", at=5).pk
        late = say(channel, "after", at=20).pk
        expected = [early, *same_instant, late]

        seen: list[int] = []
        before: int | None = None
        while True:
            page = selectors.history_page(channel, before_id=before, limit=3)
            seen = [m.pk for m in page.messages] + seen
            if not page.has_older:
                break
            before = page.messages[0].pk
        assert seen == expected
        # Each boundary inside the burst gives exactly the lines before it.
        for index in range(1, len(expected)):
            page = selectors.history_page(channel, before_id=expected[index], limit=100)
            assert [m.pk for m in page.messages] == expected[:index]


def test_history_query_walks_the_channel_latest_index(alice: User) -> None:
    with switch(alice):
        channel = make_channel(make_server())
        anchor = [say(channel, f"l{n}", at=n % 40) for n in range(300)][150]
        with CaptureQueriesContext(connection) as queries:
            selectors.history_page(channel, before_id=anchor.pk)
        page_sql = queries.captured_queries[-1]["sql"]
        assert "ORDER BY" in page_sql
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE channels_app_message")
            cursor.execute(f"EXPLAIN {page_sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "message_channel_latest" in plan, plan
    # The keyset bound is an index condition, not a filter over the whole channel.
    assert re.search(r"Index Cond: .*server_time <=", plan), plan
    assert "Sort" not in plan, plan


def test_page_shows_latest_lines_and_load_older_link(alice: User, alice_chat: dict) -> None:
    with switch(alice):
        channel = alice_chat["channel"]
        messages = [say(channel, f"line number {n}", at=n) for n in range(130)]
    client = signed_in_client(alice)
    page = client.get(reverse("chat:channel", args=[channel.pk])).content.decode()
    assert "line number 129" in page and "line number 30<" in page
    assert "line number 29<" not in page
    older = reverse("chat:history", args=[channel.pk]) + f"?before={messages[30].pk}"
    assert older in page
    fragment = client.get(older).content.decode()
    assert "line number 0<" in fragment and "line number 29<" in fragment
    assert "line number 30<" not in fragment
    assert 'id="chat-older"' not in fragment
    # Without JavaScript the same page is a link.
    assert (
        "line number 0<"
        in client.get(f"/chat/{channel.pk}/?before={messages[30].pk}").content.decode()
    )


def test_lines_after_and_day_separators(alice: User, alice_chat: dict) -> None:
    with switch(alice):
        channel = alice_chat["channel"]
        first = say(channel, "on monday", at=datetime(2026, 11, 23, 10, tzinfo=UTC))
        say(channel, "still monday", at=datetime(2026, 11, 23, 11, tzinfo=UTC))
        say(channel, "on tuesday", at=datetime(2026, 11, 24, 9, tzinfo=UTC))
    client = signed_in_client(alice)
    page = client.get(reverse("chat:channel", args=[channel.pk])).content.decode()
    assert page.count('class="day"') == 2
    fragment = client.get(reverse("chat:lines", args=[channel.pk]) + f"?after={first.pk}")
    body = fragment.content.decode()
    assert "still monday" in body and "on tuesday" in body and "on monday" not in body
    # Monday's separator is already above the line fetched after; Tuesday's is new.
    assert body.count('class="day"') == 1 and 'data-day="2026-11-24"' in body
    assert fragment["X-More-Lines"] == "0"


def test_times_follow_the_browser_time_zone(alice: User, alice_chat: dict) -> None:
    with switch(alice):
        say(alice_chat["channel"], "late", at=datetime(2026, 11, 23, 23, 30, tzinfo=UTC))
    client = signed_in_client(alice)
    url = reverse("chat:channel", args=[alice_chat["channel"].pk])
    assert ">23:30</time>" in client.get(url).content.decode()
    client.cookies["palaver_tz"] = "Asia/Tokyo"
    page = client.get(url).content.decode()
    assert ">08:30</time>" in page and 'data-day="2026-11-24"' in page
    client.cookies["palaver_tz"] = "../../etc/passwd"
    assert client.get(url).status_code == 200


def test_around_opens_a_line_in_context_without_marking_newer_lines_read(
    alice: User, alice_chat: dict
) -> None:
    with switch(alice):
        channel = alice_chat["channel"]
        messages = [say(channel, f"line number {n}", at=n) for n in range(200)]
    client = signed_in_client(alice)
    page = client.get(f"/chat/{channel.pk}/?around={messages[20].pk}").content.decode()
    assert "line number 0<" in page and "line number 70<" in page
    assert "line number 71<" not in page
    assert f'data-target-id="{messages[20].pk}"' in page and 'data-live="0"' in page
    with switch(alice):
        channel.refresh_from_db()
        assert channel.last_read_message_id is None
    # A line that is not in this channel: the latest lines, live.
    page = client.get(f"/chat/{channel.pk}/?around=999999").content.decode()
    assert "line number 199<" in page and 'data-live="1"' in page
    assert "data-target-id" not in page


# --- unread counts and the read marker ----------------------------------------------------------


def _sidebar_counts(client: Client, channel: Channel) -> tuple[str, str]:
    html = client.get(reverse("chat:sidebar")).content.decode()
    item = re.search(rf'data-channel-id="{channel.pk}".*?</a>', html, re.S)
    assert item, html
    unread = re.search(r"data-unread(?: hidden)?[^>]*>(\d+)<", item.group())
    highlights = re.search(r"data-highlights(?: hidden)?[^>]*>(\d+)<", item.group())
    assert unread and highlights
    return unread.group(1), highlights.group(1)


@pytest.fixture
def account_events() -> Iterator[Callable[[User], list[dict[str, Any]]]]:
    """What is published on an account's live-event channel, read back from Redis."""
    pubsubs: list[Any] = []

    def subscribe(user: User) -> list[dict[str, Any]]:
        pubsub = events.redis_client().pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(events.events_channel(user.account_id))
        pubsubs.append(pubsub)
        got: list[dict[str, Any]] = []

        def read() -> list[dict[str, Any]]:
            # Until nothing more comes for a moment (an ignored confirmation also reads as None).
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 0.3:
                message = pubsub.get_message(timeout=0.05)
                if message is not None:
                    got.append(json.loads(message["data"]))
                    quiet_since = time.monotonic()
            return got

        return read  # type: ignore[return-value]

    yield subscribe
    for pubsub in pubsubs:
        pubsub.close()


def test_unread_counts_highlights_and_opening_a_channel_marks_nothing_read(
    alice: User, alice_chat: dict, account_events: Any
) -> None:
    channel = alice_chat["channel"]
    with switch(alice):
        say(channel, "hello", at=1)
        say(channel, "carol", at=2, sender="dave", kind=Message.Kind.JOIN)
        mention = say(channel, "alice: ping", at=3)
        say(channel, "waves", at=4, kind=Message.Kind.ACTION)
        Notification.objects.create(message=mention, kind=Notification.Kind.HIGHLIGHT)
    client = signed_in_client(alice)
    # Joins and parts are not unread lines.
    assert _sidebar_counts(client, channel) == ("3", "1")
    read_events = account_events(alice)

    # GET changes nothing: a link preview, a prefetch or a crawler opening the page must not
    # hide what the person has not seen.
    assert client.get(reverse("chat:channel", args=[channel.pk])).status_code == 200
    assert client.get(reverse("chat:index")).status_code == 302
    with switch(alice):
        channel.refresh_from_db()
        assert channel.last_read_message_id is None
        assert Notification.objects.filter(read_at__isnull=True).count() == 1
    assert _sidebar_counts(client, channel) == ("3", "1")
    assert read_events() == []


def test_unread_counts_stop_at_the_cap_and_highlights_stay_with_their_channel(
    alice: User, alice_chat: dict
) -> None:
    channel = alice_chat["channel"]
    with switch(alice):
        busy = make_channel(channel.server, "#busy")
        Message.objects.bulk_create(
            Message(
                channel=busy,
                kind=Message.Kind.MESSAGE,
                sender="carol",
                text=f"line {n}",
                server_time=T0 + timedelta(seconds=n),
            )
            for n in range(selectors.UNREAD_CAP + 5)
        )
        mention = say(channel, "alice: ping", at=1)
        Notification.objects.create(message=mention, kind=Notification.Kind.HIGHLIGHT)
        read = say(busy, "alice: seen", at=2)
        Notification.objects.create(
            message=read, kind=Notification.Kind.HIGHLIGHT, read_at=timezone.now()
        )
    client = signed_in_client(alice)
    html = client.get(reverse("chat:sidebar")).content.decode()
    item = re.search(rf'data-channel-id="{busy.pk}".*?</a>', html, re.S)
    assert item and re.search(r"data-unread[^>]*>999\+<", item.group()), html
    assert _sidebar_counts(client, channel) == ("1", "1")
    with switch(alice):
        (entry,) = selectors.sidebar(alice.account_id)
    counts = {b.channel.name: (b.unread, b.highlights) for b in entry.channels}
    assert counts == {"#busy": (selectors.UNREAD_CAP, 0), channel.name: (1, 1)}


def test_marking_read_is_a_post_that_tells_the_accounts_other_tabs(
    alice: User,
    bob: User,
    alice_chat: dict,
    account_events: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    channel = alice_chat["channel"]
    with switch(alice):
        first = say(channel, "hello", at=1)
        mention = say(channel, "alice: ping", at=3)
        Notification.objects.create(message=mention, kind=Notification.Kind.HIGHLIGHT)
        newer = say(channel, "are you there?", at=5)
        say(channel, "hello?", at=6)
    client = signed_in_client(alice)
    alice_events = account_events(alice)
    bob_events = account_events(bob)
    read_url = reverse("chat:read", args=[channel.pk])

    def post(url: str, data: dict[str, Any] | None = None) -> int:
        # The test's transaction never commits: run what waits for the commit.
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(url, data or {}).status_code

    assert client.get(read_url).status_code == 405
    assert post(read_url, {"up_to": mention.pk}) == 204
    assert _sidebar_counts(client, channel) == ("2", "0")
    assert alice_events() == [{"type": "read", "channel_id": channel.pk, "up_to": mention.pk}]

    # The marker never moves backwards, and a POST that moves nothing tells nobody.
    assert post(read_url, {"up_to": first.pk}) == 204
    with switch(alice):
        channel.refresh_from_db()
        assert channel.last_read_message_id == mention.pk
    assert len(alice_events()) == 1

    assert post(read_url, {"up_to": newer.pk}) == 204
    assert post(read_url) == 204
    assert _sidebar_counts(client, channel) == ("0", "0")
    assert [e["up_to"] for e in alice_events()[1:]] == [newer.pk, newer.pk + 1]

    # Another account's channel id is a 404 (bob has no channel with the id of alice's
    # conversation), and nothing moves or is published.
    query = alice_chat["query"]
    with switch(alice):
        say(query, "unread in the conversation")
    with switch(bob):
        make_channel(make_server("EFnet", "bob"))
        assert not Channel.objects.filter(pk=query.pk).exists()
    client = signed_in_client(bob)
    assert post(reverse("chat:read", args=[query.pk])) == 404
    with switch(alice):
        query.refresh_from_db()
        assert query.last_read_message_id is None
    assert bob_events() == []
    assert len(alice_events()) == 3


def test_sidebar_lists_servers_buffers_and_connection_state(alice: User, alice_chat: dict) -> None:
    redis = events.redis_client()
    key = events.server_state_key(alice.account.pk, alice_chat["server"].pk)
    with switch(alice):
        quiet = make_server("OFTC", "alice2")
    client = signed_in_client(alice)
    try:
        html = client.get(reverse("chat:sidebar")).content.decode()
        assert "not connected" in html and "OFTC" in html and "bob" in html
        redis.set(
            key,
            json.dumps(
                {
                    "type": "server_state",
                    "server_id": alice_chat["server"].pk,
                    "state": "disconnected",
                    "error": "Connection refused",
                    "next_retry": "2026-11-23T12:05:00+00:00",
                    "nick": "alice",
                }
            ),
        )
        html = client.get(reverse("chat:sidebar")).content.decode()
        assert "disconnected: Connection refused" in html
        assert "retrying at" in html and "12:05:00" in html
        redis.set(key, json.dumps({"state": "connected", "nick": "alice_"}))
        page = client.get(reverse("chat:channel", args=[alice_chat["channel"].pk])).content
        assert b"connected as alice_" in page
        # The input shows the nick the server knows us by.
        assert b'data-own-nick="alice_"' in page
    finally:
        redis.delete(key)
    assert quiet.pk


def test_members_sorted_by_rank_then_name_with_away_dimmed(alice: User, alice_chat: dict) -> None:
    channel = alice_chat["channel"]
    with switch(alice):
        for prefixes, nick, away in [
            ("", "zed", False),
            ("+", "Victor", False),
            ("@", "olga", True),
            ("~", "root", False),
            ("@+", "Anna", False),
            ("", "bert", False),
            ("%", "hal", False),
        ]:
            ChannelUser.objects.create(channel=channel, nick=nick, prefixes=prefixes, away=away)
    html = signed_in_client(alice).get(reverse("chat:info", args=[channel.pk])).content.decode()
    order = re.findall(r'data-nick="([^"]+)"', html)
    assert order == ["root", "Anna", "olga", "hal", "Victor", "bert", "zed"]
    assert re.search(r'class="member away" data-nick="olga"', html)
    assert '<span class="prefix">@</span><span class="nick' in html


def test_nick_colours_are_stable_and_case_blind() -> None:
    colours = {selectors.nick_colour(n) for n in ["alice", "ALICE", "Alice"]}
    assert len(colours) == 1
    spread = {selectors.nick_colour(f"nick{n}") for n in range(200)}
    assert spread == set(range(selectors.NICK_COLOURS))


def test_message_kinds_render_as_irc_clients_show_them(alice: User, alice_chat: dict) -> None:
    channel = alice_chat["channel"]
    with switch(alice):
        say(channel, "waves", sender="carol", kind=Message.Kind.ACTION)
        say(channel, "server maintenance", sender="ChanServ", kind=Message.Kind.NOTICE)
        say(channel, "carol@example.org", sender="dave", kind=Message.Kind.JOIN)
        say(channel, "bye", sender="dave", kind=Message.Kind.PART)
        say(channel, "troll flooding", sender="carol", kind=Message.Kind.KICK)
        say(channel, "dave_", sender="dave", kind=Message.Kind.NICK)
        say(channel, "+o carol", sender="ChanServ", kind=Message.Kind.MODE)
        say(channel, "Welcome!", sender="carol", kind=Message.Kind.TOPIC)
        say(channel, "\x02bold\x02 see https://palaver.example.org/x", sender="carol")
    html = signed_in_client(alice).get(reverse("chat:channel", args=[channel.pk])).content.decode()
    text = re.sub(r"<[^>]+>", "", html)
    for shown in [
        "*carol waves",
        "-ChanServ-server maintenance",
        "dave joined (carol@example.org)",
        "dave left (bye)",
        "carol kicked troll (flooding)",
        "dave is now known as dave_",
        "ChanServ sets mode +o carol",
        "carol changed the topic to: Welcome!",
    ]:
        assert shown in text, shown
    assert 'class="line line-action' in html and 'class="line line-join' in html
    assert '<span class="irc-bold">bold</span>' in html
    assert '<a href="https://palaver.example.org/x" rel="noopener noreferrer nofollow"' in html


# --- IRC text stays text -----------------------------------------------------------------------

PAYLOAD = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _tags(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag of the page as a browser's parser sees it."""
    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Collector().feed(html)
    return found


def test_html_and_script_in_irc_text_render_inert(alice: User, alice_chat: dict) -> None:
    channel = alice_chat["channel"]
    with switch(alice):
        channel.topic = PAYLOAD
        channel.save()
        ChannelUser.objects.create(channel=channel, nick="<svg/onload=alert(1)>")
        first = say(channel, "first")
        say(channel, PAYLOAD, sender="<b>evil</b>")
        say(channel, PAYLOAD, sender="x", kind=Message.Kind.ACTION)
        say(channel, f"troll {PAYLOAD}", sender="op", kind=Message.Kind.KICK)
        Channel.objects.create(server=channel.server, name="<i>q</i>", kind=Channel.Kind.QUERY)
    client = signed_in_client(alice)
    pages = [
        client.get(reverse("chat:channel", args=[channel.pk])),
        client.get(reverse("chat:lines", args=[channel.pk]) + f"?after={first.pk}"),
        client.get(reverse("chat:info", args=[channel.pk])),
        client.get(reverse("chat:sidebar")),
    ]
    for response in pages:
        html = response.content.decode()
        assert "<script>alert" not in html and "<img src=x" not in html and "<svg/" not in html
        assert "<b>evil" not in html and "<i>q" not in html
        tags = _tags(html)
        # No element carries an event handler or an inline style; the payload made no tags.
        assert not [(t, a) for t, attrs in tags for a, _ in attrs if a.startswith("on")]
        assert not [t for t, attrs in tags if "style" in dict(attrs)]
        assert not {t for t, _ in tags} & {"b", "i"}
        images = [dict(attrs).get("src") or "" for t, attrs in tags if t == "img"]
        assert all(src.startswith("/static/") for src in images)
        # Every script is a file from /static/: nothing inline for the CSP to refuse.
        scripts = [dict(attrs) for t, attrs in tags if t == "script"]
        assert all((s.get("src") or "").startswith("/static/") for s in scripts)
    page = pages[0]
    html = page.content.decode()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "script-src 'self'" in page["Content-Security-Policy"]
    assert "'unsafe-inline'" not in page["Content-Security-Policy"]


# --- the input: slash commands to gateway commands ----------------------------------------------


@pytest.fixture
def published() -> Iterator[Published]:
    """What the web publishes to the gateway, read back from Redis, for one account."""
    pubsub = events.redis_client().pubsub()
    pubsub.subscribe(events.GATEWAY_COMMANDS)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        confirmation = pubsub.get_message(timeout=0.2)
        if confirmation and confirmation["type"] == "subscribe":
            break

    def read(account_id: str, *, expect: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + (2.0 if expect else 0.15)
        while time.monotonic() < deadline and (len(got) < expect or not expect):
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is None:
                continue
            payload = events.open_command(message["data"]) or {}
            if payload.get("account_id") == account_id:
                got.append(payload)
        # Anything more would show up now.
        extra = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if extra is not None:
            payload = events.open_command(extra["data"]) or {}
            if payload.get("account_id") == account_id:
                got.append(payload)
        return got

    yield read
    pubsub.close()


def _send(client: Client, channel: Channel, text: str) -> Any:
    return client.post(reverse("chat:send", args=[channel.pk]), {"text": text})


def test_every_command_publishes_the_right_gateway_command(
    alice: User, alice_chat: dict, published: Published
) -> None:
    account = str(alice.account.pk)
    channel = alice_chat["channel"]
    server_id = channel.server_id

    def send(target: str, text: str, kind: str = "message") -> dict[str, Any]:
        return {
            "op": "send",
            "account_id": account,
            "server_id": server_id,
            "target": target,
            "text": text,
            "kind": kind,
        }

    def raw(line: str) -> dict[str, Any]:
        return {"op": "raw", "account_id": account, "server_id": server_id, "line": line}

    cases: list[tuple[str, list[dict[str, Any]]]] = [
        ("hello world", [send("#palaver", "hello world")]),
        ("//etc/motd is a path", [send("#palaver", "/etc/motd is a path")]),
        ("/me waves", [send("#palaver", "waves", "action")]),
        ("/msg bob hi  there", [send("bob", "hi  there")]),
        ("/msg #django hi", [send("#django", "hi")]),
        ("/notice #palaver heads up", [send("#palaver", "heads up", "notice")]),
        ("/join #django", [raw("JOIN #django")]),
        ("/join #secret s3cret", [raw("JOIN #secret s3cret")]),
        ("/j python", [raw("JOIN #python")]),
        ("/part", [raw("PART #palaver")]),
        ("/part see you", [raw("PART #palaver :see you")]),
        ("/part #django bye all", [raw("PART #django :bye all")]),
        ("/nick alice_", [raw("NICK alice_")]),
        ("/topic", [raw("TOPIC #palaver")]),
        ("/topic Welcome: be kind", [raw("TOPIC #palaver :Welcome: be kind")]),
        ("/topic #django Django talk", [raw("TOPIC #django :Django talk")]),
        ("/topic -delete", [raw("TOPIC #palaver :")]),
        # The buffer it was typed in rides along as a tag the gateway never sends on.
        ("/whois bob", [raw("@palaver/buffer=#palaver WHOIS bob")]),
        ("/WHOIS bob", [raw("@palaver/buffer=#palaver WHOIS bob")]),
        ("/list", []),  # opens the list page, which asks for the list (tests/test_servers_*)
        ("/away lunch, back at 2", [raw("AWAY :lunch, back at 2")]),
        ("/away", [raw("AWAY :Away")]),
        ("/back", [raw("AWAY")]),
        ("/kick troll spamming links", [raw("KICK #palaver troll :spamming links")]),
        ("/kick troll", [raw("KICK #palaver troll")]),
        ("/mode +o bob", [raw("MODE #palaver +o bob")]),
        ("/mode", [raw("MODE #palaver")]),
        ("/mode alice +i", [raw("MODE alice +i")]),
        ("/invite bob", [raw("INVITE bob #palaver")]),
        ("/invite bob #django", [raw("INVITE bob #django")]),
        ("/quote PRIVMSG NickServ :IDENTIFY pw", [raw("PRIVMSG NickServ :IDENTIFY pw")]),
        ("/close", [raw("PART #palaver")]),
        # A paste: one send per line, every line break gone, slashes said as they are.
        (
            "line one\r\nline two\n\n/quote QUIT :gone\rline four",
            [
                send("#palaver", "line one"),
                send("#palaver", "line two"),
                send("#palaver", "/quote QUIT :gone"),
                send("#palaver", "line four"),
            ],
        ),
    ]
    client = signed_in_client(alice)
    for text, expected in cases:
        response = _send(client, channel, text)
        assert response.status_code == 204, (text, response.content)
        got = published(account, expect=len(expected))
        assert got == expected, text
        for payload in got:
            assert not re.search(r"[\r\n\x00]", json.dumps(payload).replace("\\", "")), text
            assert not any("\r" in str(v) or "\n" in str(v) for v in payload.values())

    # In a conversation, text goes to the person.
    query = alice_chat["query"]
    assert _send(client, query, "/me nods").status_code == 204
    assert published(account, expect=1) == [send("bob", "nods", "action")]


def test_query_opens_a_conversation_and_close_removes_it(
    alice: User, alice_chat: dict, published: Published
) -> None:
    account = str(alice.account.pk)
    channel = alice_chat["channel"]
    client = signed_in_client(alice)
    response = _send(client, channel, "/query Dave hello Dave")
    assert response.status_code == 204
    with switch(alice):
        query = Channel.objects.get(name="Dave")
    assert query.kind == Channel.Kind.QUERY and query.server_id == channel.server_id
    assert response["HX-Redirect"] == reverse("chat:channel", args=[query.pk])
    assert published(account, expect=1)[0]["target"] == "Dave"
    # Again, in any case: the same conversation.
    response = _send(client, channel, "/query dave")
    assert response["HX-Redirect"] == reverse("chat:channel", args=[query.pk])
    assert published(account, expect=0) == []

    response = _send(client, query, "/close")
    assert response.status_code == 204 and response["HX-Redirect"] == reverse("chat:index")
    with switch(alice):
        assert not Channel.objects.filter(pk=query.pk).exists()


BAD_INPUT = [
    ("channel", "/dance", "Unknown command /dance"),
    ("channel", "", "Nothing to send"),
    ("channel", " \r\n ", "Nothing to send"),
    ("channel", "/join", "Usage: /join #channel [key]"),
    ("channel", "/join #a b c", "Too many arguments"),
    ("channel", "/join #bad:name", "not a valid channel name"),
    ("channel", "/join #c :key", "cannot start with"),
    ("channel", "/msg bob", "Nothing to send"),
    ("channel", "/msg b@d hi", "not a valid nick"),
    ("channel", "/notice", "Usage: /notice"),
    ("channel", "/query", "Usage: /query"),
    ("channel", "/query #channel", "not a valid nick"),
    ("channel", "/me", "Usage: /me"),
    ("channel", "/nick two words", "no spaces"),
    ("channel", "/whois", "Usage: /whois"),
    ("channel", "/whois a b", "One nick"),
    ("channel", "/back now", "no arguments"),
    ("channel", "/kick", "Usage: /kick"),
    ("channel", "/kick n!ck", "not a valid nick"),
    ("channel", "/mode +k :x", "cannot start with"),
    ("channel", "/invite", "Usage: /invite"),
    ("channel", "/invite bob #c extra", "Too many arguments"),
    ("channel", "/close now", "no arguments"),
    ("channel", "/quote", "Usage: /quote"),
    ("channel", "\n".join(f"line {n}" for n in range(21)), "21 lines"),
    ("channel", "x" * 5001, "more than 5000 characters"),
    ("query", "/kick bob", "works in a channel"),
    ("query", "/topic hi", "works in a channel"),
    ("query", "/part", "works in a channel"),
    ("query", "/invite carol", "works in a channel"),
    ("server_buffer", "hello", "server buffer"),
    ("server_buffer", "/me waves", "server buffer"),
    ("server_buffer", "/close", "server buffer stays"),
]


def test_bad_input_is_an_error_and_sends_nothing(
    alice: User, alice_chat: dict, published: Published
) -> None:
    client = signed_in_client(alice)
    for buffer, text, error in BAD_INPUT:
        response = _send(client, alice_chat[buffer], text)
        assert response.status_code == 400, (buffer, text)
        body = response.content.decode()
        assert error in body and body.startswith('<p class="error">'), (text, body)
    assert published(str(alice.account.pk), expect=0) == []
    with switch(alice):
        assert Channel.objects.count() == 3


def test_messages_per_minute_are_limited_per_account(
    alice: User, alice_chat: dict, published: Published, settings: Any
) -> None:
    settings.LIMIT_MESSAGES_PER_MINUTE = 25
    account = str(alice.account.pk)
    client = signed_in_client(alice)
    channel = alice_chat["channel"]
    paste = "\n".join(f"line {i}" for i in range(20))
    assert _send(client, channel, paste).status_code == 204
    assert len(published(account, expect=20)) == 20
    # 20 more would pass 25: refused whole, said where it was typed, nothing sent or counted.
    refused = _send(client, channel, paste)
    assert refused.status_code == 400
    body = refused.content.decode()
    assert body.startswith('<p class="error">') and "25 lines a minute" in body
    assert published(account, expect=0) == []
    for text in ("one", "/me two", "/msg bob three", "/quote PING four", "five"):
        assert _send(client, channel, text).status_code == 204, text
    assert len(published(account, expect=5)) == 5
    assert _send(client, channel, "sixth").status_code == 400


def test_send_needs_csrf(alice: User, alice_chat: dict) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert _send(client, alice_chat["channel"], "hi").status_code == 403


# --- isolation ----------------------------------------------------------------------------------


def _chat_urls(channel: Channel, message: Message) -> list[str]:
    return [
        reverse("chat:channel", args=[channel.pk]),
        reverse("chat:channel", args=[channel.pk]) + f"?around={message.pk}",
        reverse("chat:history", args=[channel.pk]) + f"?before={message.pk}",
        reverse("chat:lines", args=[channel.pk]) + "?after=0",
        reverse("chat:info", args=[channel.pk]),
        reverse("chat:send", args=[channel.pk]),
        reverse("chat:read", args=[channel.pk]),
    ]


def test_other_account_gets_404_on_every_chat_url(
    alice: User, bob: User, alice_chat: dict, published: Published
) -> None:
    with switch(alice):
        message = say(alice_chat["channel"], "alice's secret")
    with switch(bob):
        bob_server = make_server("EFnet", "bob")
    bob_client = signed_in_client(bob)
    ids = [alice_chat[k] for k in ("channel", "query", "server_buffer")]
    for channel in ids:
        for url in _chat_urls(channel, message):
            for method in ("get", "post"):
                response = getattr(bob_client, method)(url, {"text": "/quote QUIT", "up_to": 1})
                assert response.status_code == 404, f"{method.upper()} {url}"
    assert published(str(bob.account.pk), expect=0) == []
    assert published(str(alice.account.pk), expect=0) == []
    # Naming alice's channel as the open one shows bob only his own.
    html = bob_client.get(reverse("chat:sidebar") + f"?open={ids[0].pk}").content.decode()
    assert "EFnet" in html and "Libera" not in html and "#palaver" not in html
    assert bob_server.pk
    # Alice reaches all of them.
    alice_client = signed_in_client(alice)
    for url in _chat_urls(alice_chat["channel"], message):
        response = alice_client.get(url)
        assert response.status_code in (200, 405), url


def test_signed_out_visitor_is_sent_to_sign_in(alice: User, alice_chat: dict) -> None:
    with switch(alice):
        message = say(alice_chat["channel"], "hi")
    client = Client()
    urls = [
        reverse("chat:index"),
        reverse("chat:sidebar"),
        reverse("chat:events"),
        *_chat_urls(alice_chat["channel"], message),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("accounts:sign_in"))


def test_index_opens_the_last_buffer_or_explains(alice: User, bob: User, alice_chat: dict) -> None:
    client = signed_in_client(alice)
    response = client.get(reverse("chat:index"))
    assert response.status_code == 302
    query = alice_chat["query"]
    client.get(reverse("chat:channel", args=[query.pk]))
    assert client.get(reverse("chat:index"))["Location"] == reverse("chat:channel", args=[query.pk])
    page = signed_in_client(bob).get(reverse("chat:index"))
    assert page.status_code == 200 and b"Add a server" in page.content
