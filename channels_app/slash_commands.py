"""What the chat input means: plain text or a slash command, turned into gateway commands
(channels_app.events.SendCommand and RawCommand).

`parse` is pure: it checks the arguments and plans what to do, raising CommandError with a
message for the person typing. channels_app.services.chat.send_input carries the plan out: the
few commands that change the buffers (/query, /close) write there, then the gateway commands
are published. No line that reaches the gateway contains CR, LF or NUL: a multi-line paste becomes
one send per line.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlencode

from django.core.exceptions import ValidationError
from django.urls import reverse

from channels_app.events import RawCommand, SendCommand
from channels_app.models import Channel
from channels_app.validators import validate_channel_name, validate_nick
from gateway.protocol import REPLY_BUFFER_TAG, format_line

MAX_INPUT = 5000
MAX_PASTE_LINES = 20
CHANNEL_PREFIXES = "#&+!"
NEWLINES = re.compile(r"\r\n|\r|\n")

USAGE = {
    "join": "/join #channel [key]",
    "part": "/part [#channel] [reason]",
    "msg": "/msg nick text",
    "query": "/query nick [text]",
    "me": "/me action",
    "notice": "/notice target text",
    "nick": "/nick newnick",
    "topic": "/topic [#channel] [new topic] (or -delete)",
    "whois": "/whois nick",
    "list": "/list [filter]",
    "away": "/away [reason]",
    "back": "/back",
    "kick": "/kick nick [reason]",
    "mode": "/mode [#channel|nick] modes [arguments]",
    "invite": "/invite nick [#channel]",
    "close": "/close",
    "quote": "/quote RAW IRC LINE",
    "ask": "/ask agent question",
}
ALIASES = {"j": "join", "leave": "part", "raw": "quote", "q": "query", "m": "msg"}


class CommandError(ValueError):
    """The input cannot be sent; the message says why, for the person who typed it."""


@dataclass(frozen=True)
class Plan:
    commands: Sequence[SendCommand | RawCommand] = field(default_factory=list)
    open_query: str = ""  # open (creating if needed) the conversation with this nick
    close_buffer: bool = False  # delete the current conversation
    ask: str = ""  # "agent question": a run of one of the account's agents, answering here
    open_page: str = ""  # a page to show after sending (/list: the channel list)
    # Channels being left (/part, /close): off the sidebar and autojoin at once.
    leave: Sequence[str] = field(default_factory=list)
    # Channels being joined (/join): the page opens the first once the gateway has it.
    join: Sequence[str] = field(default_factory=list)


# --- /ask -----------------------------------------------------------------------------------------
# The agents app answers /ask; channels_app does not import it. agents registers its handler
# when Django starts (agents.apps): handler(channel=, text="agent question", requested_by=)
# starts a run or raises CommandError.


class AskHandler(Protocol):
    def __call__(self, *, channel: Channel, text: str, requested_by: str) -> object: ...


_ask_handler: AskHandler | None = None


def set_ask_handler(handler: AskHandler) -> None:
    global _ask_handler
    _ask_handler = handler


def ask_handler() -> AskHandler | None:
    return _ask_handler


# --- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    channel: Channel
    account_id: str

    @property
    def server_id(self) -> int:
        return self.channel.server_id

    def send(
        self, target: str, text: str, kind: Literal["message", "action", "notice"] = "message"
    ) -> SendCommand:
        return SendCommand(
            account_id=self.account_id,
            server_id=self.server_id,
            target=target,
            text=text,
            kind=kind,
        )

    def raw(self, line: str) -> RawCommand:
        return RawCommand(account_id=self.account_id, server_id=self.server_id, line=line)

    def here(self, command: str) -> str:
        """The buffer's name as a message target, or an error in the server buffer."""
        if self.channel.kind not in (Channel.Kind.CHANNEL, Channel.Kind.QUERY):
            raise CommandError(
                f"{command} needs a channel or a conversation; this is the server buffer."
            )
        return self.channel.name

    def here_channel(self, command: str) -> str:
        if self.channel.kind != Channel.Kind.CHANNEL:
            raise CommandError(f"{command} works in a channel; name one or open one first.")
        return self.channel.name


def _lines(text: str) -> list[str]:
    """Non-blank lines, NUL removed, each with its line break gone."""
    return [line for line in NEWLINES.split(text.replace("\x00", "")) if line.strip()]


def _nick(value: str, usage: str) -> str:
    try:
        validate_nick(value)
    except ValidationError:
        raise CommandError(f"“{value}” is not a valid nick. Usage: {usage}") from None
    return value


def _channel(value: str, usage: str) -> str:
    try:
        validate_channel_name(value)
    except ValidationError:
        raise CommandError(f"“{value}” is not a valid channel name. Usage: {usage}") from None
    return value


def _target(value: str, usage: str) -> str:
    return _channel(value, usage) if value[:1] in CHANNEL_PREFIXES else _nick(value, usage)


def _is_channel(value: str) -> bool:
    return value[:1] in CHANNEL_PREFIXES


def _trailing(text: str) -> str:
    """A last parameter that may hold spaces."""
    return f" :{text}" if text else ""


def _require(args: str, name: str) -> str:
    if not args.strip():
        raise CommandError(f"Usage: {USAGE[name]}")
    return args.strip()


def _join(ctx: _Context, args: str) -> Plan:
    parts = _require(args, "join").split()
    if len(parts) > 2:
        raise CommandError(f"Too many arguments. Usage: {USAGE['join']}")
    names = [n if _is_channel(n) else f"#{n}" for n in parts[0].split(",") if n]
    for name in names:
        _channel(name, USAGE["join"])
    line = "JOIN " + ",".join(names)
    if len(parts) == 2:
        key = parts[1]
        if key.startswith(":"):
            raise CommandError("A channel key cannot start with “:”.")
        line += f" {key}"
    return Plan(commands=[ctx.raw(line)], join=names)


def _part(ctx: _Context, args: str) -> Plan:
    args = args.strip()
    first, _, rest = args.partition(" ")
    if first and _is_channel(first):
        channel, reason = _channel(first, USAGE["part"]), rest.strip()
    else:
        channel, reason = ctx.here_channel("/part"), args
    return Plan(commands=[ctx.raw(f"PART {channel}{_trailing(reason)}")], leave=[channel])


def _msg(ctx: _Context, args: str) -> Plan:
    target, _, text = _require(args, "msg").partition(" ")
    if not text.strip():
        raise CommandError(f"Nothing to send. Usage: {USAGE['msg']}")
    return Plan(commands=[ctx.send(_target(target, USAGE["msg"]), text.strip())])


def _notice(ctx: _Context, args: str) -> Plan:
    target, _, text = _require(args, "notice").partition(" ")
    if not text.strip():
        raise CommandError(f"Nothing to send. Usage: {USAGE['notice']}")
    return Plan(commands=[ctx.send(_target(target, USAGE["notice"]), text.strip(), "notice")])


def _query(ctx: _Context, args: str) -> Plan:
    nick, _, text = _require(args, "query").partition(" ")
    nick = _nick(nick, USAGE["query"])
    commands = [ctx.send(nick, text.strip())] if text.strip() else []
    return Plan(commands=commands, open_query=nick)


def _me(ctx: _Context, args: str) -> Plan:
    return Plan(commands=[ctx.send(ctx.here("/me"), _require(args, "me"), "action")])


def _nick_command(ctx: _Context, args: str) -> Plan:
    parts = _require(args, "nick").split()
    if len(parts) != 1:
        raise CommandError(f"A nick has no spaces. Usage: {USAGE['nick']}")
    return Plan(commands=[ctx.raw(f"NICK {_nick(parts[0], USAGE['nick'])}")])


def _topic(ctx: _Context, args: str) -> Plan:
    args = args.strip()
    first, _, rest = args.partition(" ")
    if first and _is_channel(first):
        channel, text = _channel(first, USAGE["topic"]), rest.strip()
    else:
        channel, text = ctx.here_channel("/topic"), args
    if text == "-delete":
        return Plan(commands=[ctx.raw(f"TOPIC {channel} :")])
    # Without text the server replies with the current topic.
    return Plan(commands=[ctx.raw(f"TOPIC {channel}{_trailing(text)}")])


def _whois(ctx: _Context, args: str) -> Plan:
    parts = _require(args, "whois").split()
    if len(parts) != 1:
        raise CommandError(f"One nick at a time. Usage: {USAGE['whois']}")
    nick = _nick(parts[0], USAGE["whois"])
    # The gateway shows the answer in this buffer: the tag names it (the gateway never sends
    # tags of a raw line on).
    tags = {REPLY_BUFFER_TAG: ctx.channel.name} if ctx.channel.kind != Channel.Kind.SERVER else {}
    line = format_line("WHOIS", nick, tags=tags).decode().rstrip("\r\n")
    return Plan(commands=[ctx.raw(line)])


def _list(ctx: _Context, args: str) -> Plan:
    """/list [filter]: the network's channels, on a page of their own (with Join buttons)."""
    # The page asks for the list as it opens (fetch=1): the command itself sends nothing.
    search = args.strip()
    url = reverse("channels:channel_list", args=[ctx.server_id])
    params = {"fetch": "1", **({"q": search} if search else {})}
    return Plan(open_page=f"{url}?{urlencode(params)}")


def _away(ctx: _Context, args: str) -> Plan:
    return Plan(commands=[ctx.raw(f"AWAY :{args.strip() or 'Away'}")])


def _back(ctx: _Context, args: str) -> Plan:
    if args.strip():
        raise CommandError(f"/back takes no arguments. Usage: {USAGE['back']}")
    return Plan(commands=[ctx.raw("AWAY")])


def _kick(ctx: _Context, args: str) -> Plan:
    nick, _, reason = _require(args, "kick").partition(" ")
    channel = ctx.here_channel("/kick")
    nick = _nick(nick, USAGE["kick"])
    return Plan(commands=[ctx.raw(f"KICK {channel} {nick}{_trailing(reason.strip())}")])


def _mode(ctx: _Context, args: str) -> Plan:
    parts = args.split()
    if any(p.startswith(":") for p in parts):
        raise CommandError(f"Mode arguments cannot start with “:”. Usage: {USAGE['mode']}")
    if not parts or parts[0][:1] in "+-":
        # Modes alone, or nothing (the server lists them), apply to the channel here.
        parts.insert(0, ctx.here_channel("/mode"))
    else:
        _target(parts[0], USAGE["mode"])
    return Plan(commands=[ctx.raw("MODE " + " ".join(parts))])


def _invite(ctx: _Context, args: str) -> Plan:
    parts = _require(args, "invite").split()
    if len(parts) > 2:
        raise CommandError(f"Too many arguments. Usage: {USAGE['invite']}")
    nick = _nick(parts[0], USAGE["invite"])
    if len(parts) == 2:
        channel = _channel(parts[1], USAGE["invite"])
    else:
        channel = ctx.here_channel("/invite")
    return Plan(commands=[ctx.raw(f"INVITE {nick} {channel}")])


def _close(ctx: _Context, args: str) -> Plan:
    if args.strip():
        raise CommandError(f"/close takes no arguments. Usage: {USAGE['close']}")
    if ctx.channel.kind == Channel.Kind.CHANNEL:
        return Plan(commands=[ctx.raw(f"PART {ctx.channel.name}")], leave=[ctx.channel.name])
    if ctx.channel.kind == Channel.Kind.QUERY:
        return Plan(close_buffer=True)
    raise CommandError("The server buffer stays while the server does: remove the server instead.")


def _ask(ctx: _Context, args: str) -> Plan:
    ctx.here("/ask")
    agent, _, question = _require(args, "ask").partition(" ")
    if not question.strip():
        raise CommandError(f"Ask {agent.rstrip(':,')} something. Usage: {USAGE['ask']}")
    return Plan(ask=args.strip())


def _quote(ctx: _Context, args: str) -> Plan:
    return Plan(commands=[ctx.raw(_require(args, "quote"))])


COMMANDS: dict[str, Callable[[_Context, str], Plan]] = {
    "join": _join,
    "part": _part,
    "msg": _msg,
    "query": _query,
    "me": _me,
    "notice": _notice,
    "nick": _nick_command,
    "topic": _topic,
    "whois": _whois,
    "list": _list,
    "away": _away,
    "back": _back,
    "kick": _kick,
    "mode": _mode,
    "invite": _invite,
    "close": _close,
    "quote": _quote,
    "ask": _ask,
}


def parse(text: str, *, channel: Channel, account_id: str) -> Plan:
    """What the input asks for. Raises CommandError and sends nothing when it cannot be done."""
    if len(text) > MAX_INPUT:
        raise CommandError(f"That is more than {MAX_INPUT} characters; paste it somewhere else.")
    ctx = _Context(channel=channel, account_id=str(account_id))
    lines = _lines(text)
    if not lines:
        raise CommandError("Nothing to send.")
    if len(lines) > 1:
        # A paste: every line is said as it is, slashes included.
        if len(lines) > MAX_PASTE_LINES:
            raise CommandError(
                f"That paste has {len(lines)} lines; {MAX_PASTE_LINES} at most at once."
            )
        target = ctx.here("Sending text")
        return Plan(commands=[ctx.send(target, line) for line in lines])
    line = lines[0]
    if line.startswith("//") or not line.startswith("/"):
        # "//" sends a line that starts with a slash.
        return Plan(commands=[ctx.send(ctx.here("Sending text"), line.removeprefix("/"))])
    name, _, args = line[1:].partition(" ")
    name = ALIASES.get(name.lower(), name.lower())
    handler = COMMANDS.get(name)
    if handler is None:
        known = ", ".join(f"/{c}" for c in COMMANDS)
        raise CommandError(f"Unknown command /{line[1:].split(' ', 1)[0]}. Commands: {known}.")
    return handler(ctx, args)
