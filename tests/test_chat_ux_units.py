"""The server side of the chat's daily use (issue 11, items 1, 2, 12): lines rendered in Python
(the same markup as before, escaped, the unread divider, folded runs, 12/24-hour times), the
cid an input carries to the gateway, /part and /close off the sidebar, /join named back to the
page, and the buffer reopened by /chat/."""

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from channels_app.models import Channel, Message
from channels_app.selectors import chat as selectors
from channels_app.templatetags.chat_lines import clock_text, day_clock_text, render_lines
from tenancy import switch
from tests.conftest import signed_in_client
from tests.test_chat import Published, make_channel, make_server, published, say

__all__ = ["published"]  # a fixture, used here by name

T0 = datetime(2026, 11, 23, 13, 5, 9, tzinfo=UTC)


def _line(n: int, kind: str = "message", sender: str = "carol", text: str = "hi") -> selectors.Line:
    message = Message(
        id=n, channel_id=1, kind=kind, sender=sender, text=text, server_time=T0, tags={}
    )
    return selectors.Line(
        message=message,
        day=date(2026, 11, 23),
        new_day=n == 1,
        nick_class=f"nick-c{selectors.nick_colour(sender)}",
        is_self=sender == "me",
    )


# --- times -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "h24", "h12"),
    [(0, "00:05", "12:05 AM"), (9, "09:05", "9:05 AM"), (12, "12:05", "12:05 PM"),
     (23, "23:05", "11:05 PM")],
)  # fmt: skip
def test_clock_in_either_format(hour: int, h24: str, h12: str) -> None:
    moment = T0.replace(hour=hour)
    with timezone.override(UTC):
        assert clock_text(moment, "24h") == h24
        assert clock_text(moment, "12h") == h12
        assert clock_text(moment, "12h", seconds=True) == h12.replace(":05", ":05:09")
        assert day_clock_text(moment, "12h") == f"23 Nov 2026, {h12}"


def test_clock_in_the_current_zone() -> None:
    import zoneinfo

    with timezone.override(zoneinfo.ZoneInfo("America/New_York")):
        assert clock_text(T0, "24h") == "08:05"


# --- lines ---------------------------------------------------------------------------------------


def test_every_kind_renders_its_words_and_irc_text_stays_text() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    kinds = [
        ("message", hostile, "&lt;img src=x onerror=alert(1)&gt;"),
        ("action", "waves", "waves"),
        ("notice", "psst", "-<span"),
        ("kick", "bob too loud", "kicked"),
        ("nick", "carol2", "is now known as"),
        ("mode", "+o bob", "sets mode +o bob"),
        ("topic", "new", "changed the topic to: new"),
    ]
    with timezone.override(UTC):
        for n, (kind, text, expected) in enumerate(kinds, start=1):
            html = render_lines([_line(n, kind, sender=hostile, text=text)])
            assert expected in html, kind
            assert "<img" not in html, kind
            assert f'data-id="{n}"' in html and f'class="line line-{kind}' in html


def test_the_divider_goes_above_the_first_unread_line_said_by_someone_else() -> None:
    lines = [_line(1), _line(2), _line(3, sender="me"), _line(4, kind="join"), _line(5)]
    with timezone.override(UTC):
        html = render_lines(lines, unread_after=2)
        # Not above our own line 3, nor the join: above line 5.
        assert re.search(r'id="chat-unread".*?</li>\n<li class="line line-message" id="m5"', html)
        assert html.count("chat-unread") == 1
        assert "chat-unread" not in render_lines(lines, unread_after=5)
        assert "chat-unread" not in render_lines(lines, unread_after=None)


def test_runs_of_joins_parts_and_quits_fold_and_a_lone_one_does_not() -> None:
    lines = [
        _line(1),
        _line(2, "join", "alice"),
        _line(3, "join", "bob"),
        _line(4, "join", "alice"),  # named once
        _line(5, "quit", "carol"),
        _line(6),
        _line(7, "part", "dave"),
    ]
    with timezone.override(UTC):
        html = render_lines(lines)
    assert html.count('class="line line-run"') == 1
    summary = re.search(r'<span class="run-summary">(.*?)</span> <button', html)
    assert summary is not None
    text = re.sub(r"<[^>]+>", "", summary.group(1))
    assert text == "alice, bob joined; carol quit"
    assert html.count('data-run="run-2" hidden') == 4
    assert 'id="m7" data-id="7" data-day="2026-11-23" data-sender="dave">' in html  # not folded


def test_a_run_breaks_at_a_new_day() -> None:
    first, second = _line(2, "join", "a"), _line(3, "join", "b")
    second = selectors.Line(**{**second.__dict__, "new_day": True})
    with timezone.override(UTC):
        html = render_lines([first, second])
    assert "line-run" not in html and html.count('class="day"') == 1


# --- the page and the input ----------------------------------------------------------------------


def test_the_page_shows_the_divider_and_the_accounts_time_format(alice: User) -> None:
    with switch(alice):
        channel = make_channel(make_server())
        first = say(channel, "old", at=T0)
        say(channel, "new", at=T0 + timedelta(minutes=1))
        Channel.objects.filter(pk=channel.pk).update(last_read_message_id=first.pk)
    account = alice.account
    account.settings = {"time_format": "12h"}
    account.save()
    client = signed_in_client(alice)
    client.cookies["palaver_tz"] = "UTC"
    html = client.get(reverse("chat:channel", args=[channel.pk])).content.decode()
    assert html.count('id="chat-unread"') == 1
    assert ">1:05 PM</time>" in html and ">1:06 PM</time>" in html
    assert 'data-time-format="12h"' in html


def test_an_inputs_cid_travels_with_each_command(
    alice: User, published: Published
) -> None:  # fmt: skip
    with switch(alice):
        channel = make_channel(make_server())
    client = signed_in_client(alice)
    url = reverse("chat:send", args=[channel.pk])
    assert client.post(url, {"text": "a\nb", "cid": "c123"}).status_code == 204
    got = published(str(alice.account.pk), expect=2)
    assert [c["cid"] for c in got] == ["c123", "c123"]
    # A cid that is not a short token is dropped, not passed on.
    assert client.post(url, {"text": "x", "cid": "<script>"}).status_code == 204
    (command,) = published(str(alice.account.pk), expect=1)
    assert "cid" not in command


def test_part_and_close_take_the_channel_off_the_sidebar_now(
    alice: User, published: Published
) -> None:
    with switch(alice):
        server = make_server()
        here, other, kept = (make_channel(server, n) for n in ("#here", "#other", "#kept"))
    client = signed_in_client(alice)
    response = client.post(reverse("chat:send", args=[here.pk]), {"text": "/part #other bye"})
    assert response.status_code == 204 and "HX-Redirect" not in response
    response = client.post(reverse("chat:send", args=[here.pk]), {"text": "/close"})
    assert response["HX-Redirect"] == reverse("chat:index")
    lines = [c["line"] for c in published(str(alice.account.pk), expect=2)]
    assert lines == ["PART #other :bye", "PART #here"]
    with switch(alice):
        assert set(Channel.objects.filter(autojoin=False).values_list("name", flat=True)) == {
            "#here",
            "#other",
        }
        entry = selectors.sidebar(alice.account.pk)[0]
        assert [b.channel.name for b in entry.channels] == ["#kept"]
        # The open one stays listed while it is on screen.
        entry = selectors.sidebar(alice.account.pk, open_channel_id=other.pk)[0]
        assert [b.channel.name for b in entry.channels] == ["#kept", "#other"]
    # /chat/ goes to a listed buffer, never a left one.
    assert client.get(reverse("chat:index"))["Location"] == reverse("chat:channel", args=[kept.pk])


def test_join_names_the_channel_for_the_page_to_open(alice: User, published: Published) -> None:
    with switch(alice):
        channel = make_channel(make_server())
    client = signed_in_client(alice)
    response = client.post(reverse("chat:send", args=[channel.pk]), {"text": "/join new,#two"})
    assert response.status_code == 204
    assert response["X-Join"] == "#new"
    (command,) = published(str(alice.account.pk), expect=1)
    assert command["line"] == "JOIN #new,#two"


def test_the_chat_reopens_the_buffer_last_open(alice: User) -> None:
    with switch(alice):
        server = make_server()
        make_channel(server, "#a")
        last = make_channel(server, "#z")
    client = signed_in_client(alice)
    client.get(reverse("chat:channel", args=[last.pk]))
    assert client.get(reverse("chat:index"))["Location"] == reverse("chat:channel", args=[last.pk])
