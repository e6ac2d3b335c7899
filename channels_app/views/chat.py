"""The chat: one page per buffer, and the small fragments its script swaps in live.

Every view that names a channel looks it up in the caller's schema first, so a channel id of
another account is a 404 whatever the method."""

import contextlib
import zoneinfo
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone

from agents.selectors import enabled_agent_nicks
from channels_app.models import Channel, Message
from channels_app.selectors import chat as selectors
from channels_app.selectors.chat import ServerEntry
from channels_app.services import chat as services
from channels_app.slash_commands import CommandError

TIMEZONE_COOKIE = "palaver_tz"
LAST_CHANNEL_KEY = "chat_last_channel"

View = Callable[..., HttpResponse]


def _browser_timezone(view: View) -> View:
    """Times and day separators in the browser's zone (chat.js keeps it in a cookie)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        name = request.COOKIES.get(TIMEZONE_COOKIE, "")
        zone: Any = timezone.get_default_timezone()
        if name and len(name) < 64:
            # A name that is not a zone ("America", "../x", garbage) keeps the default.
            with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                zone = zoneinfo.ZoneInfo(name)
        with timezone.override(zone):
            return view(request, *args, **kwargs)

    return wrapper


def _channel_or_404(channel_id: int) -> Channel:
    return get_object_or_404(Channel.objects.select_related("server"), pk=channel_id)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _account_id(request: HttpRequest) -> str:
    return str(request.user.account_id)  # type: ignore[union-attr]


def _own_nick(entry: ServerEntry | None, channel: Channel) -> str:
    if entry is not None and entry.state.nick:
        return entry.state.nick
    return channel.server.nick


def _own_nick_for(request: HttpRequest, channel: Channel) -> str:
    """The nick the gateway says we have on the channel's server, else the configured one."""
    state = selectors.server_states(
        request.user.account_id,  # type: ignore[union-attr]
        [channel.server_id],
    )[channel.server_id]
    return state.nick or channel.server.nick


def _time_format(request: HttpRequest) -> str:
    """The account's "24h" or "12h" (selectors.settings.time_format), once per request."""
    from channels_app.templatetags.chat_lines import request_time_format

    return request_time_format({"request": request})


def _sidebar_context(request: HttpRequest, open_channel: Channel | None) -> dict[str, Any]:
    return {
        "servers": selectors.sidebar(
            request.user.account_id,  # type: ignore[union-attr]
            open_channel_id=open_channel.pk if open_channel else None,
        ),
        "open_channel_id": open_channel.pk if open_channel else None,
        "time_format": _time_format(request),
    }


@login_required
def index(request: HttpRequest) -> HttpResponse:
    """Back to the buffer last open, else the first one; a page that says what to do when
    there is none yet."""
    last = request.session.get(LAST_CHANNEL_KEY)
    listed = selectors.listed_buffers()
    channel = listed.filter(pk=last).first() if isinstance(last, int) else None
    if channel is None:
        channel = listed.order_by("server__name", "kind", "name").first()
    if channel is not None:
        return HttpResponseRedirect(reverse("chat:channel", args=[channel.pk]))
    return render(request, "channels_app/chat.html", _sidebar_context(request, None))


@login_required
@_browser_timezone
def channel_page(request: HttpRequest, channel_id: int) -> HttpResponse:
    """A buffer: its latest lines (or, with ?before=<id>, an older page; with ?around=<id>, the
    lines around one line), the topic and members, the input. It changes nothing in the
    account: the page's script marks the buffer read (POST to `read`) once it is shown."""
    channel = _channel_or_404(channel_id)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    # Where the live stream starts, read before anything else on the page: a line stored from
    # here on is replayed by the stream even if the page missed it.
    last_event_id = selectors.newest_message_id()
    before = _int(request.GET.get("before"))
    around = _int(request.GET.get("around"))
    context_page = selectors.around_page(channel, around) if around is not None else None
    if context_page is not None and context_page.messages:
        messages, has_older, has_newer = (
            context_page.messages,
            context_page.has_older,
            context_page.has_newer,
        )
    else:
        # A line that is not (or no longer) here: the latest lines instead.
        around = None
        page = selectors.history_page(channel, before_id=before)
        messages, has_older = page.messages, page.has_older
        has_newer = before is not None
    # Which buffer to reopen is this browser's preference, kept in its session, not account
    # state.
    if not has_newer and request.session.get(LAST_CHANNEL_KEY) != channel.pk:
        request.session[LAST_CHANNEL_KEY] = channel.pk
    context = _sidebar_context(request, channel)
    entry = next((s for s in context["servers"] if s.server.pk == channel.server_id), None)
    own_nick = _own_nick(entry, channel)
    agent_nicks = enabled_agent_nicks()  # for the lines and the members: one query
    context.update(
        {
            "channel": channel,
            "entry": entry,
            "own_nick": own_nick,
            "own_nick_class": f"nick-c{selectors.nick_colour(own_nick)}",
            "lines": selectors.lines(messages, own_nick=own_nick, agent_nicks=agent_nicks),
            "has_older": has_older,
            # The "new messages" divider: above the first line said after the read marker as
            # it was before this page (the page moves the marker once it shows the lines).
            "unread_after": channel.last_read_message_id,
            # Not the latest lines: live lines are not appended below them.
            "has_newer": has_newer,
            "target_id": around,
            "members": selectors.members(channel, agent_nicks=agent_nicks),
            "last_event_id": last_event_id,
            "timezone_name": timezone.get_current_timezone_name(),
        }
    )
    return render(request, "channels_app/chat.html", context)


@login_required
@_browser_timezone
def history(request: HttpRequest, channel_id: int) -> HttpResponse:
    """An older page of lines, for scrolling back (fragment)."""
    channel = _channel_or_404(channel_id)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    before = _int(request.GET.get("before"))
    if before is None:
        return HttpResponse("Say which line to load before (?before=<id>).", status=400)
    page = selectors.history_page(channel, before_id=before)
    return render(
        request,
        "channels_app/_chat_lines.html",
        {
            "channel": channel,
            "lines": selectors.lines(page.messages, own_nick=_own_nick_for(request, channel)),
            "has_older": page.has_older,
            "time_format": _time_format(request),
        },
    )


@login_required
@_browser_timezone
def lines_after(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Lines stored after ?after=<id>, for a page that is live (fragment). X-More-Lines says
    there are more to fetch."""
    channel = _channel_or_404(channel_id)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    after = _int(request.GET.get("after")) or 0
    limit = 200
    messages = selectors.lines_after(channel, after, limit=limit + 1)
    more = len(messages) > limit
    previous_day = selectors.day_of(channel, after) if after else None
    response = render(
        request,
        "channels_app/_chat_lines.html",
        {
            "channel": channel,
            "lines": selectors.lines(
                messages[:limit],
                previous_day=previous_day,
                own_nick=_own_nick_for(request, channel),
            ),
            "has_older": False,
            "time_format": _time_format(request),
        },
    )
    response["X-More-Lines"] = "1" if more else "0"
    return response


@login_required
def channel_info(request: HttpRequest, channel_id: int) -> HttpResponse:
    """The topic and member list (fragment), re-fetched when the gateway says they changed."""
    channel = _channel_or_404(channel_id)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    return render(
        request,
        "channels_app/_chat_info.html",
        {"channel": channel, "members": selectors.members(channel)},
    )


@login_required
def sidebar(request: HttpRequest) -> HttpResponse:
    """Servers, buffers, unread counts and connection state (fragment)."""
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    open_id = _int(request.GET.get("open"))
    open_channel = Channel.objects.filter(pk=open_id).first() if open_id else None
    return render(
        request, "channels_app/_chat_sidebar.html", _sidebar_context(request, open_channel)
    )


@login_required
def send(request: HttpRequest, channel_id: int) -> HttpResponse:
    """What was typed into the input: 204 when it went to the gateway (with HX-Redirect when
    another buffer should open, X-Join naming a channel being joined), 400 and an error
    fragment when nothing was sent. `cid`, the page's id for the input, comes back in a
    send_error event if the gateway could not send it or the server refused it."""
    channel = _channel_or_404(channel_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    text = request.POST.get("text", "")
    cid = request.POST.get("cid", "")
    try:
        outcome = services.send_input(
            account_id=_account_id(request), channel=channel, text=text, cid=cid
        )
    except CommandError as exc:
        return _input_error(request, str(exc))
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        return _input_error(request, "Could not reach the IRC gateway; nothing was sent.", 503)
    response = HttpResponse(status=204)
    if outcome.open_channel is not None and outcome.open_channel.pk != channel.pk:
        response["HX-Redirect"] = reverse("chat:channel", args=[outcome.open_channel.pk])
    elif outcome.open_page:
        response["HX-Redirect"] = outcome.open_page
    elif outcome.closed:
        request.session.pop(LAST_CHANNEL_KEY, None)
        response["HX-Redirect"] = reverse("chat:index")
    elif outcome.join:
        # The page opens the channel once the gateway has joined it (it is in the sidebar).
        response["X-Join"] = outcome.join[0]
    return response


def _is_redis_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, redis.RedisError)


def _input_error(request: HttpRequest, message: str, status: int = 400) -> HttpResponse:
    return render(request, "channels_app/_chat_error.html", {"error": message}, status=status)


@login_required
def read(request: HttpRequest, channel_id: int) -> HttpResponse:
    """The page has shown the channel up to `up_to` (default: its newest line)."""
    channel = _channel_or_404(channel_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    newest = selectors.newest_message_id(channel)
    up_to = _int(request.POST.get("up_to"))
    # Never past the newest line: a marker beyond it would hide lines not yet seen.
    up_to = newest if up_to is None else min(up_to, newest)
    if up_to and Message.objects.filter(channel=channel, pk=up_to).exists():
        services.mark_read(account_id=_account_id(request), channel=channel, up_to=up_to)
    return HttpResponse(status=204)
