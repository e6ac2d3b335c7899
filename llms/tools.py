"""The tools agents may call, defined in code. `sync_tool_catalog` mirrors them into llms.Tool.

Each tool declares the JSON-schema of its call parameters (what the LLM sees), the settings an
account may set for it (validated by llms.forms.ToolSettingsForm) and the function that runs it.
`execute_tool` is the one way a run calls a tool: it validates the arguments against the schema
first and never raises; whatever goes wrong becomes an error result the model reads.

A tool runs in the schema of the account whose agent called it (the runner is inside
`tenancy.switch(account)`) and reaches nothing else: account data through that schema, public
rows only through selectors that take `context.account`.
"""

import contextlib
import json
import logging
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jsonschema
from django.core.cache import cache

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from accounts.models import Account
    from agents.models import Agent, Task
    from channels_app.models import Channel

logger = logging.getLogger(__name__)


class ToolError(Exception):
    """What a tool says went wrong, in words the model (and the run page) can use."""


@dataclass(frozen=True)
class ToolContext:
    account: "Account"
    agent: "Agent"
    task: "Task | None"
    # This tool's settings for the account (its AccountTool row over the spec's defaults).
    settings: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    # What the model reads: the tool's output, or the error.
    content: str
    # The arguments as parsed; None when they were not valid JSON.
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolSetting:
    name: str
    label: str
    # "int", "bool", "choice" (one of `choices`), "timezone" (an IANA name) or "domains" (a
    # list of host names; a name covers its subdomains).
    kind: str
    default: Any
    min_value: int | None = None
    max_value: int | None = None
    help_text: str = ""
    choices: tuple[tuple[str, str], ...] = ()

    def clean(self, value: Any) -> Any:
        """The value as stored, or ValueError with what is wrong, in words for the form."""
        if self.kind == "int":
            number = int(value)
            if self.min_value is not None and number < self.min_value:
                raise ValueError(f"must be at least {self.min_value}")
            if self.max_value is not None and number > self.max_value:
                raise ValueError(f"must be at most {self.max_value}")
            return number
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "on", "yes"):
                return True
            if text in ("", "0", "false", "off", "no"):
                return False
            raise ValueError("must be yes or no")
        if self.kind == "choice":
            text = str(value)
            if text not in dict(self.choices):
                raise ValueError(f"“{text[:60]}” is not one of the choices")
            return text
        if self.kind == "timezone":
            text = str(value).strip()
            from llms.selectors import known_timezones

            if text not in known_timezones():
                raise ValueError(f"“{text}” is not a known time zone (e.g. Europe/Paris)")
            return text
        if self.kind == "domains":
            return clean_domains(value)
        raise ValueError(f"unknown setting kind {self.kind}")

    def display(self, value: Any) -> str:
        """The value as the tools page shows it."""
        if self.kind == "bool":
            return "yes" if value else "no"
        if self.kind == "choice":
            return dict(self.choices).get(str(value), str(value))
        if self.kind == "domains":
            return ", ".join(value) if value else "any public site"
        return str(value)


MAX_DOMAINS = 100
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def clean_domains(value: Any) -> list[str]:
    """Host names from a list or from text (one per line, or separated by commas or spaces),
    lower-cased, in their ASCII form, without duplicates. Raises ValueError."""
    items = value if isinstance(value, list | tuple) else re.split(r"[\s,]+", str(value or ""))
    domains: list[str] = []
    for item in items:
        text = str(item).strip().lower().rstrip(".")
        if text.startswith("*."):
            text = text[2:]  # "*.example.org": every name below it, which a name covers anyway
        if not text:
            continue
        if "://" in text or "/" in text:
            raise ValueError(f"“{text[:60]}” is an address; give only its host name")
        try:
            ascii_name = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"“{text[:60]}” is not a host name (e.g. docs.python.org)") from None
        labels = ascii_name.split(".")
        if (
            len(ascii_name) > 253
            or len(labels) < 2
            or not all(_HOST_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()
        ):
            raise ValueError(f"“{text[:60]}” is not a host name (e.g. docs.python.org)")
        if ascii_name not in domains:
            domains.append(ascii_name)
    if len(domains) > MAX_DOMAINS:
        raise ValueError(f"at most {MAX_DOMAINS} sites")
    return domains


@dataclass(frozen=True)
class ToolSpec:
    slug: str
    name: str
    description: str
    parameters: dict[str, Any]
    settings: tuple[ToolSetting, ...] = field(default_factory=tuple)
    # (context, validated arguments) -> what the model reads. Raises ToolError for a refusal.
    run: Callable[[ToolContext, dict[str, Any]], str] | None = None
    # False: the tool never touches the database, so the runner runs it on the run's own
    # thread, not on one of its few database threads (agents/runner/db.py), which a slow tool
    # (a fetch waiting for its timeout) would hold. current_time reads the account's time
    # zone (account_timezone): it needs the database.
    needs_database: bool = True
    # True: given to every agent that has a knowledge base, and only to those, without being
    # chosen on the agent or enabled for the account: choosing a knowledge base for an agent is
    # choosing it (knowledge_search). The account's AccountTool row holds only its settings.
    for_knowledge_bases: bool = False

    def default_settings(self) -> dict[str, Any]:
        return {s.name: s.default for s in self.settings}


# --- helpers the tools share -------------------------------------------------------------------

# The lines a reader wants: what people said, not joins, parts and mode changes.
_SPOKEN_KINDS = ("message", "notice", "action", "topic")
# An IRC line holds ~500 bytes, but a bridged or stored line may be longer.
MAX_LINE_CHARS = 600


def _in_own_account(context: ToolContext) -> bool:
    """Whether the database is inside the schema of the account whose agent calls the tool:
    anything else would read or write another account's rows, or public ones."""
    from tenancy import current_account

    current = current_account()
    return (
        current is not None
        and current.pk == context.account.pk
        and current.schema_name == context.account.schema_name
    )


def _no_such_channel(name: str) -> ToolError:
    # One answer for a channel that does not exist and one the agent may not use: the model
    # (and whoever steers it through a prompt) learns nothing about what else is there.
    return ToolError(f"No such channel: {name[:60]}.")


SCOPE_CHOICES = (
    ("agent", "Only the channels the agent sits in"),
    ("all", "Every channel of the account"),
)


def _scope_setting(label: str) -> ToolSetting:
    return ToolSetting(
        name="channels",
        label=label,
        kind="choice",
        default="agent",
        choices=SCOPE_CHOICES,
        help_text="Private conversations are never included, except those the agent sits in.",
    )


def _channels(context: ToolContext, *, everywhere: bool) -> "QuerySet[Channel]":
    """The buffers the agent may use: its own channels, plus (`everywhere`) every channel of
    the account. Only ever this schema's rows: another account's channels are not here."""
    from django.db.models import Q

    from channels_app.models import Channel

    allowed = Q(agents=context.agent)
    if everywhere:
        allowed |= Q(kind=Channel.Kind.CHANNEL)
    return Channel.objects.filter(allowed).distinct().select_related("server")


def _find_channel(channels: "QuerySet[Channel]", name: str, server: str = "") -> "Channel":
    name = name.strip()
    matches = list(channels.filter(name__iexact=name))
    if server.strip():
        matches = [c for c in matches if c.server.name.lower() == server.strip().lower()]
    if not matches:
        raise _no_such_channel(name)
    if len(matches) > 1:
        networks = ", ".join(sorted(c.server.name for c in matches))
        raise ToolError(f"{name} is on several networks ({networks}): name one as `server`.")
    return matches[0]


def _readable(context: ToolContext, arguments: dict[str, Any]) -> "Channel":
    everywhere = context.settings.get("channels") == "all"
    return _find_channel(
        _channels(context, everywhere=everywhere),
        arguments["channel"],
        arguments.get("server", ""),
    )


def _zone(context: ToolContext) -> zoneinfo.ZoneInfo:
    from llms.selectors import account_timezone

    return zoneinfo.ZoneInfo(account_timezone(account=context.account))


def _plain(text: str) -> str:
    """IRC text as the model reads it: formatting codes gone, a long line cut."""
    from channels_app.selectors.search import strip_formatting

    text = strip_formatting(text)
    return text[:MAX_LINE_CHARS] + "…" if len(text) > MAX_LINE_CHARS else text


def _line(kind: str, sender: str, text: str) -> str:
    text = _plain(text)
    if kind == "action":
        return f"* {sender} {text}"
    if kind == "notice":
        return f"-{sender}- {text}"
    if kind == "topic":
        return f"{sender} set the topic: {text}" if sender else f"Topic: {text}"
    if kind == "message":
        return f"<{sender}> {text}"
    # Comings and goings. A join's text is the person's user@host: not the model's business.
    said = f" ({text})" if text else ""
    return {
        "join": f"→ {sender} joined",
        "part": f"← {sender} left{said}",
        "quit": f"← {sender} quit{said}",
        "kick": f"← {sender} kicked {text}",
        "nick": f"• {sender} is now known as {text}",
        "mode": f"• {sender} sets mode {text}",
    }.get(kind, f"• {text}")


def _when(moment: datetime, zone: zoneinfo.ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


_CHANNEL_PARAMS: dict[str, Any] = {
    "channel": {"type": "string", "minLength": 1, "maxLength": 100, "description": "e.g. #python"},
    "server": {
        "type": "string",
        "maxLength": 100,
        "description": "The network's name, when the channel exists on more than one.",
    },
}


# --- the tools ---------------------------------------------------------------------------------


def _current_time(context: ToolContext, arguments: dict[str, Any]) -> str:
    zone = _zone(context)
    now = datetime.now(zone)
    return now.strftime(f"%A %d %B %Y, %H:%M:%S ({zone.key}, UTC%z)")


def _channel_history(context: ToolContext, arguments: dict[str, Any]) -> str:
    from channels_app.models import Message

    channel = _readable(context, arguments)
    most = int(context.settings.get("max_lines") or 50)
    limit = min(int(arguments.get("limit") or most), most)
    messages = Message.objects.filter(channel=channel)
    if not context.settings.get("include_events"):
        messages = messages.filter(kind__in=_SPOKEN_KINDS)
    newest = list(
        messages.order_by("-server_time", "-id").values_list(
            "kind", "sender", "text", "server_time"
        )[:limit]
    )
    zone = _zone(context)
    where = f"{channel.name} on {channel.server.name}"
    if not newest:
        return f"Nothing has been said in {where} yet."
    lines = [f"The last {len(newest)} lines of {where} (times in {zone.key}):"]
    for kind, sender, text, moment in reversed(newest):
        lines.append(f"{_when(moment, zone)} {_line(kind, sender, text)}")
    return "\n".join(lines)


def _search_history(context: ToolContext, arguments: dict[str, Any]) -> str:
    from channels_app.selectors.search import (
        SearchQueryError,
        matching_messages,
        normalize_query,
        search_messages,
    )

    most = int(context.settings.get("max_results") or 20)
    limit = min(int(arguments.get("limit") or most), most)
    everywhere = context.settings.get("channels") == "all"
    channels = _channels(context, everywhere=everywhere)
    rows: list[tuple[str, str, str, str, str, datetime]] = []
    try:
        if arguments.get("channel"):
            channel = _find_channel(channels, arguments["channel"], arguments.get("server", ""))
            # One channel: exactly the web search, its index choice included.
            page = search_messages(arguments["query"], channel_id=channel.pk, limit=limit)
            rows = [
                (h.channel_name, h.server_name, h.kind, h.sender, h.text, h.server_time)
                for h in page.hits
            ]
        else:
            query = normalize_query(arguments["query"])
            # The same match as the web search, over the channels the agent may search.
            rows = list(
                matching_messages(query)
                .filter(channel__in=channels.values("pk"))
                .values_list(
                    "channel__name",
                    "channel__server__name",
                    "kind",
                    "sender",
                    "text",
                    "server_time",
                )[:limit]
            )
    except SearchQueryError as exc:
        raise ToolError(str(exc)) from None
    if not rows:
        return "No lines match."
    zone = _zone(context)
    lines = [f"{len(rows)} matching lines, newest first (times in {zone.key}):"]
    for channel_name, server_name, kind, sender, text, moment in rows:
        lines.append(
            f"{_when(moment, zone)} {channel_name} ({server_name}) {_line(kind, sender, text)}"
        )
    return "\n".join(lines)


MAX_MEMBERS_LISTED = 300


def _channel_info(context: ToolContext, arguments: dict[str, Any]) -> str:
    from agents.models import Agent
    from channels_app.models import ChannelUser
    from channels_app.selectors.chat import prefix_rank

    channel = _readable(context, arguments)
    agents = {nick.lower() for nick in Agent.objects.values_list("nick", flat=True)}
    members = sorted(
        ChannelUser.objects.filter(channel=channel).values_list("nick", "prefixes", "away"),
        key=lambda m: (prefix_rank(m[1]), m[0].lower()),
    )
    lines = [f"{channel.name} on {channel.server.name}"]
    topic = channel.topic.strip()
    lines.append(f"Topic: {_plain(topic) if topic else '(none)'}")
    lines.append(f"Members ({len(members)}):" if members else "Members: none known")
    for nick, prefixes, away in members[:MAX_MEMBERS_LISTED]:
        notes = []
        if prefixes:
            notes.append(f"modes {prefixes}")
        if nick.lower() in agents:
            notes.append("an agent of this account")
        if away:
            notes.append("away")
        lines.append(f"- {nick}" + (f" ({', '.join(notes)})" if notes else ""))
    if len(members) > MAX_MEMBERS_LISTED:
        lines.append(f"… and {len(members) - MAX_MEMBERS_LISTED} more")
    return "\n".join(lines)


SEND_TOOL = "send_message"


# A run's lines live as long as any run may (a day is far past every step and time limit).
RUN_LINES_TTL = 24 * 3600


def _take_run_line(context: ToolContext, cap: int) -> str | None:
    """Count one line against the run's cap, or raise ToolError. One counter per run in Redis:
    INCR is atomic, so tool calls made at once cannot both slip past it, and it does not depend
    on when the run records its tool calls. Without a run (a call outside one) there is none."""
    if context.task is None:
        return None
    key = f"agent-tool-lines:{context.account.pk}:{context.task.pk}"
    cache.add(key, 0, timeout=RUN_LINES_TTL)
    try:
        sent = cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.add(key, 0, timeout=RUN_LINES_TTL)
        sent = cache.incr(key)
    if sent > cap:
        with contextlib.suppress(ValueError):
            cache.decr(key)
        raise ToolError(f"This run has already sent {cap} lines, the most it may.")
    return key


def _send_message(context: ToolContext, arguments: dict[str, Any]) -> str:
    from redis.exceptions import RedisError

    from agents import speech

    # Only where the agent sits, whatever the reading scope: it speaks under its own nick.
    channel = _find_channel(
        _channels(context, everywhere=False), arguments["channel"], arguments.get("server", "")
    )
    text = arguments["text"].strip()
    if any(c in text for c in "\r\n\x00"):
        raise ToolError("Send one line: the text may not contain line breaks.")
    if not text:
        raise ToolError("The text is empty.")
    longest = int(context.settings.get("max_length") or 400)
    if len(text) > longest:
        raise ToolError(f"The line is {len(text)} characters long; the most is {longest}.")
    cap = int(context.settings.get("max_lines_per_run") or 5)
    key = _take_run_line(context, cap)
    try:
        speech.say(
            account_id=context.account.pk,
            agent_id=context.agent.pk,
            server_id=channel.server_id,
            target=channel.name,
            text=text,
        )
    except RedisError:
        if key is not None:
            with contextlib.suppress(ValueError):
                cache.decr(key)  # not sent: it does not count
        raise ToolError("The line could not be sent: the IRC gateway is unreachable.") from None
    return f"Sent to {channel.name} on {channel.server.name}."


def _fetch_url(context: ToolContext, arguments: dict[str, Any]) -> str:
    from llms.fetch import FetchError, fetch

    timeout = int(context.settings.get("timeout_seconds") or 10)
    max_kb = int(context.settings.get("max_kilobytes") or 512)
    try:
        page = fetch(
            arguments["url"],
            timeout=timeout,
            max_bytes=max_kb * 1024,
            allowed_domains=list(context.settings.get("allowed_domains") or []),
        )
    except FetchError as exc:
        raise ToolError(str(exc)) from None
    parts = [f"URL: {page.url}"]
    if page.title:
        parts.append(f"Title: {page.title}")
    parts.append("")
    # The text goes into the model's context: its length is bounded too, not only the download.
    max_chars = int(context.settings.get("max_characters") or 20_000)
    text = page.text or "(the page has no text)"
    parts.append(text[:max_chars])
    if page.truncated:
        parts.append(f"\n[Truncated: the page is over {max_kb} KB; only its start was read.]")
    elif len(text) > max_chars:
        parts.append(
            f"\n[Truncated: the text is over {max_chars} characters; only its start is shown.]"
        )
    return "\n".join(parts)


def _schedule_task(context: ToolContext, arguments: dict[str, Any]) -> str:
    import importlib

    from llms.selectors import account_timezone

    when = (arguments.get("when") or "").strip() or None
    repeat = (arguments.get("repeat") or "").strip() or None
    if when is None and repeat is None:
        # Not in the schema: providers refuse anyOf at the top of a tool's parameters.
        raise ToolError("Say when to run it (`when`), how often (`repeat`), or both.")
    channel = _find_channel(
        _channels(context, everywhere=False), arguments["channel"], arguments.get("server", "")
    )
    # agents.services.schedules is written alongside this tool; imported when first used.
    schedules = importlib.import_module("agents.services.schedules")
    zone = account_timezone(account=context.account)
    try:
        schedule = schedules.create_schedule(
            agent=context.agent,
            prompt=arguments["prompt"].strip(),
            channel=channel,
            when=when,
            repeat=repeat,
            timezone=zone,
            created_by=f"agent {context.agent.nick}",
        )
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    next_run = getattr(schedule, "next_run_at", None)
    at = f"; next run {_when(next_run, zoneinfo.ZoneInfo(zone))} ({zone})" if next_run else ""
    return f"Scheduled in {channel.name} on {channel.server.name}{at}."


KNOWLEDGE_TOOL = "knowledge_search"
# A passage shorter than this share of the limit is not cut at a sentence's end: at a word's.
_SENTENCE_CUT_SHARE = 0.6


def trim_passage(text: str, limit: int) -> str:
    """A passage as the model reads it: at most `limit` characters, cut after the last sentence
    that fits (or at a word when that would lose too much), with "[…]" where it was cut. Runs
    of blank lines become one; code keeps its line breaks and indentation."""
    text = re.sub(r"\n\s*\n\s*\n+", "\n\n", text.replace("\x00", "").strip())
    if len(text) <= limit:
        return text
    head = text[:limit]
    sentence = max(head.rfind(end) for end in (". ", "! ", "? ", ".\n", "\n\n"))
    if sentence >= limit * _SENTENCE_CUT_SHARE:
        head = head[: sentence + 1]
    elif " " in head[int(limit * _SENTENCE_CUT_SHARE) :]:
        head = head[: head.rfind(" ")]
    return head.rstrip() + " […]"


def _knowledge_search(context: ToolContext, arguments: dict[str, Any]) -> str:
    from knowledge.links import citation_url
    from knowledge.retrieval import retrieve

    # Only the running agent's knowledge bases, read in the account's own schema.
    knowledge_bases = list(context.agent.knowledge_bases.all())
    if not knowledge_bases:
        raise ToolError("This agent has no knowledge base to search.")
    most = int(context.settings.get("max_passages") or 5)
    limit = min(int(arguments.get("limit") or most), most)
    hits = retrieve(query=arguments["query"], knowledge_bases=knowledge_bases, limit=limit)
    if not hits:
        return (
            "No passage matches. Try other words (fewer, or the document's own terms); "
            '"a phrase" in quotes, -word to exclude, this OR that.'
        )
    names = {kb.pk: kb.name for kb in knowledge_bases}
    longest = int(context.settings.get("max_characters") or 1500)
    parts = [
        f"{len(hits)} passage{'s' if len(hits) != 1 else ''}, best first. When your answer "
        "uses one, cite it by its link, written out as it is (plain text, no Markdown)."
    ]
    for number, hit in enumerate(hits, 1):
        where = " > ".join(hit.heading_path)
        source = f"“{hit.document_title}”" + (f" > {where}" if where else "")
        if hit.page is not None:
            source += f", page {hit.page}"
        kb = names.get(hit.knowledge_base_id, "")
        parts.append(
            f"[{number}] {source}"
            + (f" (knowledge base {kb})" if len(names) > 1 and kb else "")
            + f"\nLink: {citation_url(hit)}\n{trim_passage(hit.text, longest)}"
        )
    return "\n\n".join(parts)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        slug="current_time",
        name="Current time",
        description="Tells the current date and time in the account's time zone.",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
        run=_current_time,
        settings=(
            ToolSetting(
                name="timezone",
                label="Time zone",
                kind="timezone",
                default="UTC",
                help_text="IANA name, e.g. Europe/Berlin. It is the account's time zone: "
                "schedules and the times other tools show use it too.",
            ),
        ),
    ),
    ToolSpec(
        slug="channel_history",
        name="Channel history",
        description="Reads the latest lines said in a channel (time, nick, text), oldest first.",
        parameters={
            "type": "object",
            "properties": {
                **_CHANNEL_PARAMS,
                "limit": {"type": "integer", "minimum": 1, "maximum": 200},
            },
            "required": ["channel"],
            "additionalProperties": False,
        },
        run=_channel_history,
        settings=(
            ToolSetting(
                name="max_lines",
                label="Most lines per call",
                kind="int",
                default=50,
                min_value=1,
                max_value=200,
            ),
            _scope_setting("Channels agents may read"),
            ToolSetting(
                name="include_events",
                label="Include joins, parts, quits and mode changes",
                kind="bool",
                default=False,
                help_text="Otherwise only what people said (and topic changes).",
            ),
        ),
    ),
    ToolSpec(
        slug="search_history",
        name="Search history",
        description="Full-text search of what was said in channels, newest first. Words must "
        'all appear; "a phrase" in quotes, -word to exclude, this OR that.',
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 200},
                **_CHANNEL_PARAMS,
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        run=_search_history,
        settings=(
            ToolSetting(
                name="max_results",
                label="Most results per call",
                kind="int",
                default=20,
                min_value=1,
                max_value=50,
            ),
            _scope_setting("Channels agents may search"),
        ),
    ),
    ToolSpec(
        slug="channel_info",
        name="Channel info",
        description="A channel's topic and who is in it (nick, channel modes, which are agents).",
        parameters={
            "type": "object",
            "properties": dict(_CHANNEL_PARAMS),
            "required": ["channel"],
            "additionalProperties": False,
        },
        run=_channel_info,
        settings=(_scope_setting("Channels agents may look at"),),
    ),
    ToolSpec(
        slug=SEND_TOOL,
        name="Send message",
        description="Says one line in a channel the agent sits in (besides its answer).",
        parameters={
            "type": "object",
            "properties": {
                **_CHANNEL_PARAMS,
                "text": {"type": "string", "minLength": 1, "maxLength": 2000},
            },
            "required": ["channel", "text"],
            "additionalProperties": False,
        },
        run=_send_message,
        settings=(
            ToolSetting(
                name="max_lines_per_run",
                label="Most lines per run",
                kind="int",
                default=5,
                min_value=1,
                max_value=20,
            ),
            ToolSetting(
                name="max_length",
                label="Longest line (characters)",
                kind="int",
                default=400,
                min_value=20,
                max_value=450,
                help_text="IRC cuts lines past about 450 characters.",
            ),
        ),
    ),
    ToolSpec(
        slug="fetch_url",
        name="Fetch URL",
        description="Reads a public web page (HTML or plain text) and returns its text.",
        parameters={
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1, "maxLength": 2000},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        run=_fetch_url,
        needs_database=False,
        settings=(
            ToolSetting(
                name="timeout_seconds",
                label="Time limit (seconds)",
                kind="int",
                default=10,
                min_value=1,
                max_value=60,
            ),
            ToolSetting(
                name="max_kilobytes",
                label="Size limit (KB)",
                kind="int",
                default=512,
                min_value=1,
                max_value=5120,
                help_text="Reading stops here; the agent is told the page was cut.",
            ),
            ToolSetting(
                name="max_characters",
                label="Most characters of text returned",
                kind="int",
                default=20_000,
                min_value=500,
                max_value=200_000,
                help_text="What the model reads of the page, about four characters a token.",
            ),
            ToolSetting(
                name="allowed_domains",
                label="Allowed sites",
                kind="domains",
                default=[],
                help_text="Host names, one per line; each covers its subdomains. "
                "Empty: any public site.",
            ),
        ),
    ),
    ToolSpec(
        slug="schedule_task",
        name="Schedule task",
        description="Schedules a prompt for this agent to run later in one of its channels, "
        "once (`when`), repeating (`repeat`), or from a time on.",
        parameters={
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
                **_CHANNEL_PARAMS,
                "when": {
                    "type": "string",
                    "maxLength": 100,
                    "description": 'e.g. "2026-12-01 09:00" or "in 10 minutes"',
                },
                "repeat": {
                    "type": "string",
                    "maxLength": 100,
                    "description": 'A cron line ("0 9 * * *") or "every day at 09:00"',
                },
            },
            "required": ["prompt", "channel"],
            "additionalProperties": False,
        },
        run=_schedule_task,
    ),
    ToolSpec(
        slug=KNOWLEDGE_TOOL,
        name="Knowledge search",
        description="Searches the agent's knowledge bases and returns the best passages, each "
        "with its document, section, page and a link to cite. A plain question finds passages "
        "with any of its words, the best matching first; to require words, use search syntax: "
        '"a phrase" in quotes, -word to exclude, this OR that.',
        parameters={
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 500,
                    "description": "What to look for: the question, or its key words.",
                },
                "limit": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        run=_knowledge_search,
        for_knowledge_bases=True,
        settings=(
            ToolSetting(
                name="max_passages",
                label="Most passages per search",
                kind="int",
                default=5,
                min_value=1,
                max_value=20,
            ),
            ToolSetting(
                name="max_characters",
                label="Longest passage returned (characters)",
                kind="int",
                default=1500,
                min_value=200,
                max_value=6000,
                help_text="A longer passage is cut after its last whole sentence.",
            ),
        ),
    ),
)

TOOLS_BY_SLUG = {tool.slug: tool for tool in TOOLS}
# Tools an agent gets by having a knowledge base, never by being chosen (ToolSpec).
KNOWLEDGE_BASE_TOOLS = tuple(tool.slug for tool in TOOLS if tool.for_knowledge_bases)


def agent_tools(*, account: "Account", agent: "Agent") -> list[tuple[ToolSpec, dict[str, Any]]]:
    """The tools this agent may call now, each with its settings for the account: chosen on
    the agent, enabled for the account, defined in this code (a retired tool is left out);
    and, when the agent has a knowledge base, the knowledge tools (ToolSpec.for_knowledge_bases)
    with the account's settings for them, if it saved any."""
    from llms.models import AccountTool

    chosen = set(agent.tools.values_list("slug", flat=True)) - set(KNOWLEDGE_BASE_TOOLS)
    configs = AccountTool.objects.filter(
        account=account, enabled=True, tool__slug__in=chosen, tool__is_available=True
    ).select_related("tool")
    tools = []
    for config in configs:
        spec = TOOLS_BY_SLUG.get(config.tool.slug)
        if spec is not None and spec.run is not None:
            tools.append((spec, {**spec.default_settings(), **(config.settings or {})}))
    if KNOWLEDGE_BASE_TOOLS and agent.knowledge_bases.exists():
        saved = dict(
            AccountTool.objects.filter(
                account=account, tool__slug__in=KNOWLEDGE_BASE_TOOLS
            ).values_list("tool__slug", "settings")
        )
        for slug in KNOWLEDGE_BASE_TOOLS:
            spec = TOOLS_BY_SLUG[slug]
            tools.append((spec, {**spec.default_settings(), **(saved.get(slug) or {})}))
    return sorted(tools, key=lambda pair: pair[0].slug)


def execute_tool(
    *, context: ToolContext, spec: ToolSpec, arguments: str | dict[str, Any]
) -> ToolResult:
    """Validate `arguments` (JSON text from the model, or a parsed object) against the spec's
    schema and run the tool. Never raises: a bad call or a failure is an error result."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError as exc:
            return ToolResult(False, f"The arguments are not valid JSON: {exc}.")
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        return ToolResult(False, "The arguments must be a JSON object.")
    try:
        jsonschema.validate(parsed, spec.parameters)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return ToolResult(
            False, f"Invalid arguments{f' at {where}' if where else ''}: {exc.message}", parsed
        )
    if spec.run is None:
        return ToolResult(False, f"The tool {spec.slug} cannot be run.", parsed)
    if not _in_own_account(context):
        logger.error("tool %s called outside its account's schema: refused", spec.slug)
        return ToolResult(False, f"The tool {spec.slug} is not available here.", parsed)
    try:
        return ToolResult(True, spec.run(context, parsed), parsed)
    except ToolError as exc:
        return ToolResult(False, str(exc), parsed)
    except Exception:
        # The arguments may hold anything the conversation did: they are not logged.
        logger.exception("tool %s failed", spec.slug)
        return ToolResult(False, f"The tool {spec.slug} failed unexpectedly.", parsed)
