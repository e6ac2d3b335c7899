"""{% load chat_lines %}: the chat's lines, and times of day, in the account's time format.

`{% chat_lines %}` renders a run of lines (channels_app.selectors.chat.Line) in Python, not
through a template per line: 100 lines through nested `{% include %}`s were two thirds of the
chat page's server time (issue 11, item 12); this is the same markup for a fraction of the cost
(benchmarks/chat_lines.py). Every piece of text from IRC goes through `escape` or
`render_irc_html` (which escapes everything it is given); the only markup is written here.

It also places the "new messages" divider (above the first line said after the read marker)
and folds runs of joins, parts and quits into one summary line that expands on demand.

`{% clock moment %}` and `{% day_clock moment %}` show a time of day ("14:05" / "2:05 PM"),
or a date with it, in the signed-in account's time format (selectors.settings.time_format).
"""

from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from channels_app.formatting import render_irc_html
from channels_app.selectors.chat import UNREAD_KINDS, Line

register = template.Library()

# Joins, parts and quits in a row fold into one line from this many on.
RUN_KINDS = frozenset({"join", "part", "quit"})
MIN_RUN = 2
RUN_VERBS = {"join": "joined", "part": "left", "quit": "quit"}
# Nicks named in a run's summary before "and N others".
RUN_NAMES = 6
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


# --- times of day --------------------------------------------------------------------------------


def _clock(local: datetime, time_format: str, *, seconds: bool = False) -> str:
    tail = f":{local.second:02d}" if seconds else ""
    if time_format == "12h":
        hour = local.hour % 12 or 12
        return f"{hour}:{local.minute:02d}{tail} {'AM' if local.hour < 12 else 'PM'}"
    return f"{local.hour:02d}:{local.minute:02d}{tail}"


def clock_text(moment: datetime, time_format: str, *, seconds: bool = False) -> str:
    """The time of day of an aware `moment` in the current time zone: "14:05" or "2:05 PM"."""
    return _clock(timezone.localtime(moment), time_format, seconds=seconds)


def day_clock_text(moment: datetime, time_format: str) -> str:
    """ "30 Nov 2026, 14:05" (or "…, 2:05 PM")."""
    local = timezone.localtime(moment)
    return f"{local.day} {_MONTHS[local.month - 1][:3]} {local.year}, " + _clock(local, time_format)


def request_time_format(context: template.Context | dict[str, Any]) -> str:
    """The time format of the page: the view's `time_format`, else the signed-in account's
    (read once per request)."""
    given = context.get("time_format")
    if given in ("24h", "12h"):
        return str(given)
    request = context.get("request")
    user = getattr(request, "user", None)
    if request is None or user is None or not getattr(user, "is_authenticated", False):
        return "24h"
    cached = getattr(request, "_palaver_time_format", None)
    if cached is None:
        from channels_app.selectors.settings import time_format

        account = getattr(user, "account", None)
        cached = time_format(account) if account is not None else "24h"
        request._palaver_time_format = cached
    return str(cached)


@register.simple_tag(takes_context=True)
def clock(context: template.Context, moment: datetime | None, seconds: bool = False) -> str:
    return (
        "" if moment is None else clock_text(moment, request_time_format(context), seconds=seconds)
    )


@register.simple_tag(takes_context=True)
def day_clock(context: template.Context, moment: datetime | None) -> str:
    return "" if moment is None else day_clock_text(moment, request_time_format(context))


# --- lines ---------------------------------------------------------------------------------------


def _nick(nick: str, css: str) -> str:
    return f'<span class="nick {css}">{escape(nick)}</span>'


def _badge(line: Line) -> str:
    if not line.agent_nick:
        return ""
    if line.agent_is_sender:
        return (
            '<span class="agent-badge" title="An agent of this account">'
            '<span class="visually-hidden">an </span>agent</span>'
        )
    agent = escape(line.agent_nick)
    return (
        f'<span class="agent-badge" title="Said by the agent {agent} through this connection">'
        f'<span class="visually-hidden">said by the </span>agent {agent}</span>'
    )


def _time(moment: datetime, time_format: str, zone: tzinfo) -> str:
    local = moment.astimezone(zone)
    title = f"{local.day} {_MONTHS[local.month - 1]} {local.year}, " + _clock(
        local, time_format, seconds=True
    )
    return (
        f'<time datetime="{local.isoformat()}" title="{title}">{_clock(local, time_format)}</time>'
    )


def _body(line: Line) -> str:
    """The sender and text columns of a line."""
    m = line.message
    kind = m.kind
    nick = _nick(m.sender, line.nick_class)
    if kind == "message":
        return (
            f'<span class="sender">{nick}</span>'
            f'<span class="text">{_badge(line)}{render_irc_html(m.text)}</span>'
        )
    if kind == "action":
        return (
            f'<span class="sender">*</span>'
            f'<span class="text">{nick}{_badge(line)} {render_irc_html(m.text)}</span>'
        )
    if kind == "notice":
        sender = f"-{nick}-" if m.sender else ""
        return (
            f'<span class="sender">{sender}</span>'
            f'<span class="text">{_badge(line)}{render_irc_html(m.text)}</span>'
        )
    if kind == "join":
        arrow = "→"
        text = f"{nick} joined"
        if m.text:
            text += f' <span class="muted">({escape(m.text)})</span>'
    elif kind in ("part", "quit"):
        arrow = "←"
        text = f"{nick} {'left' if kind == 'part' else 'quit'}"
        if m.text:
            text += f" ({render_irc_html(m.text)})"
    elif kind == "kick":
        arrow = "←"
        text = f"{nick} kicked {_nick(line.kick_victim, line.victim_class)}"
        if line.kick_reason:
            text += f" ({render_irc_html(line.kick_reason)})"
    else:
        arrow = "•"
        if kind == "nick":
            text = f"{nick} is now known as {_nick(m.text, line.text_nick_class)}"
        elif kind == "mode":
            text = f"{nick} sets mode {escape(m.text)}"
        elif kind == "topic":
            lead = f"{nick} changed the topic to: " if m.sender else "Topic: "
            text = lead + render_irc_html(m.text)
        else:
            text = render_irc_html(m.text)
    return f'<span class="sender">{arrow}</span><span class="text">{text}</span>'


def render_line(line: Line, time_format: str, zone: tzinfo, *, run: str = "") -> str:
    m = line.message
    classes = f"line line-{m.kind}"
    if getattr(m, "highlighted", False):
        classes += " line-highlight"
    if line.is_self:
        classes += " line-self"
    if line.agent_nick:
        classes += " line-agent"
    extra = ""
    if run:
        classes += " in-run"
        extra = f' data-run="{run}" hidden'
    return (
        f'<li class="{classes}" id="m{m.pk}" data-id="{m.pk}" data-day="{line.day.isoformat()}"'
        f' data-sender="{escape(m.sender)}"{extra}>{_time(m.server_time, time_format, zone)}'
        f"{_body(line)}</li>\n"
    )


def run_summary(run: Sequence[Line]) -> str:
    """ "alice, bob joined; carol quit": the nicks of each kind in the order they came."""
    by_kind: dict[str, list[Line]] = {}
    for line in run:
        names = by_kind.setdefault(line.message.kind, [])
        if all(n.message.sender.lower() != line.message.sender.lower() for n in names):
            names.append(line)
    parts = []
    for kind, names in by_kind.items():
        shown = ", ".join(_nick(n.message.sender, n.nick_class) for n in names[:RUN_NAMES])
        if len(names) > RUN_NAMES:
            shown += f" and {len(names) - RUN_NAMES} others"
        parts.append(f"{shown} {RUN_VERBS[kind]}")
    return "; ".join(parts)


def _render_run(run: list[Line], time_format: str, zone: tzinfo) -> str:
    first = run[0].message
    run_id = f"run-{first.pk}"
    head = (
        f'<li class="line line-run" id="{run_id}" data-day="{run[0].day.isoformat()}">'
        f"{_time(first.server_time, time_format, zone)}"
        f'<span class="sender">⇄</span><span class="text">'
        f'<span class="run-summary">{run_summary(run)}</span> '
        f'<button type="button" class="run-toggle" aria-expanded="false" '
        f'data-run="{run_id}">show {len(run)} lines</button></span></li>\n'
    )
    return head + "".join(render_line(line, time_format, zone, run=run_id) for line in run)


def _day(line: Line) -> str:
    return (
        f'<li class="day" data-day="{line.day.isoformat()}">'
        f"<span>{escape(line.day_label)}</span></li>\n"
    )


def render_lines(
    lines: Sequence[Line],
    *,
    time_format: str = "24h",
    unread_after: int | None = None,
    older_url: tuple[str, str] | None = None,
) -> SafeString:
    """The `<li>`s of `lines`: day separators, the unread divider above the first line said
    after `unread_after` (the read marker; None: no divider), runs of joins/parts/quits
    folded. `older_url`: (page url, fragment url) of the "Load older lines" link above."""
    out: list[str] = []
    zone = timezone.get_current_timezone()  # once: localtime() per line was a third of it
    if older_url is not None:
        page, fragment = older_url
        out.append(
            f'<li class="older" id="chat-older"><a class="button secondary small" '
            f'href="{escape(page)}" data-older-url="{escape(fragment)}">Load older lines</a>'
            "</li>"
        )
    divider_at = None
    if unread_after is not None:
        divider_at = next(
            (
                n
                for n, line in enumerate(lines)
                if line.message.pk > unread_after
                and line.message.kind in UNREAD_KINDS
                and not line.is_self
            ),
            None,
        )
    run: list[Line] = []

    def flush() -> None:
        if len(run) >= MIN_RUN:
            out.append(_render_run(run, time_format, zone))
        else:
            out.extend(render_line(line, time_format, zone) for line in run)
        run.clear()

    for n, line in enumerate(lines):
        if line.new_day:
            flush()
            out.append(_day(line))
        if n == divider_at:
            flush()
            out.append(
                '<li class="unread-divider" id="chat-unread"><span>New messages</span></li>\n'
            )
        if line.message.kind in RUN_KINDS:
            run.append(line)
            continue
        flush()
        out.append(render_line(line, time_format, zone))
    flush()
    return mark_safe("".join(out))  # noqa: S308 - every text above is escaped


@register.simple_tag(takes_context=True)
def chat_lines(context: template.Context) -> SafeString:
    """The lines of the context (`lines`, `channel`, `has_older`, `unread_after`)."""
    lines: Sequence[Line] = context.get("lines") or []
    older_url = None
    channel = context.get("channel")
    if context.get("has_older") and lines and channel is not None:
        first = lines[0].message.pk
        older_url = (
            f"{reverse('chat:channel', args=[channel.pk])}?before={first}",
            f"{reverse('chat:history', args=[channel.pk])}?before={first}",
        )
    return render_lines(
        lines,
        time_format=request_time_format(context),
        unread_after=context.get("unread_after"),
        older_url=older_url,
    )
