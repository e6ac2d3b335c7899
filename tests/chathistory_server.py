"""A scripted IRC server offering IRCv3 `draft/chathistory`, for the gateway's backfill tests and
benchmarks/recovery_chathistory.py.

This is the one fake IRC server the tests allow themselves, because no real one can be had
here: no server packaged for this machine offers chathistory (InspIRCd 3 and ngIRCd lack it;
Debian's `ergo` package is an unrelated chemistry program, not the Ergo IRC server). It is
written from the spec, not from the gateway, and tests/test_chathistory_server.py checks it
against the spec with a raw socket client (tests/ircd.py's IrcBot, whose parser is not the
gateway's). What it follows (ircv3.net/specs/extensions/chathistory, batch, message-tags,
message-ids, server-time, capability-negotiation):

- CAP LS [302] lists the offered capabilities; CAP REQ is all or nothing (ACK, or NAK of the
  whole request); CAP LIST; registration waits for CAP END once CAP was used.
- 001-004, then 005 with CHATHISTORY=<max messages per request> (and MSGREFTYPES=msgid,
  timestamp) when `draft/chathistory` is offered, then 422.
- PRIVMSG and NOTICE carry `msgid` (to clients with message-tags) and `time` (server-time, with
  milliseconds); every one said in a channel or between two nicks is kept in order, times
  strictly increasing.
- CHATHISTORY BEFORE / AFTER / LATEST / AROUND / BETWEEN <target> <msgid=… | timestamp=…>
  [<second selector>] <limit>, LATEST also with `*`; the limit is cut to the CHATHISTORY token.
  The reply is `BATCH +ref chathistory <target>`, the lines tagged batch=ref in ascending order,
  `BATCH -ref` (an empty batch when nothing matches; plain lines to a client without `batch`).
  Only PRIVMSG and NOTICE are played back: `draft/event-playback` is not offered.
- Errors as standard replies: FAIL CHATHISTORY INVALID_PARAMS (unknown subcommand, too few or
  too many parameters, a selector or limit that cannot be read), INVALID_TARGET (a channel the
  client is not in, a nick it never talked with), MESSAGE_ERROR (a msgid the server does not
  hold, e.g. expired). 421 for CHATHISTORY when the capability is not offered.
- Not implemented: TARGETS, the `*` target (all direct messages), labeled-response.

It runs on an asyncio loop of its own thread, on 127.0.0.1. Lines can be said in it by
connected clients or by `say(nick, target, text)` for someone who is not connected (a
"phantom": the line is relayed and kept as if they were). `refuse()` closes every connection
and turns new ones away (ERROR, then close) until `allow()`: the gateway's connection dropped
while the channel talks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.ircd import IrcLine

HOST = "127.0.0.1"
SERVER_NAME = "history.test"
DEFAULT_CAPS = ("batch", "draft/chathistory", "message-tags", "server-time")
SUBCOMMANDS = ("BEFORE", "AFTER", "LATEST", "AROUND", "BETWEEN")
_TAG_ESCAPES = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})


def format_time(at: datetime) -> str:
    """server-time's format: UTC, milliseconds, a Z."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime | None:
    if not value.endswith("Z"):
        return None
    try:
        return datetime.strptime(value[:-1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    except ValueError:
        return None


def line(command: str, *params: str, source: str = SERVER_NAME, tags: dict[str, str] | None = None
         ) -> str:  # fmt: skip
    parts = []
    if tags:
        parts.append("@" + ";".join(f"{k}={v.translate(_TAG_ESCAPES)}" for k, v in tags.items()))
    parts += [f":{source}", command, *params[:-1]]
    if params:
        last = params[-1]
        # A message's text always as the trailing parameter, as servers relay it.
        colon = command in ("PRIVMSG", "NOTICE") or not last or " " in last or last[0] == ":"
        parts.append(f":{last}" if colon else last)
    return " ".join(parts)


def fold(name: str) -> str:
    return name.lower()


@dataclass(frozen=True)
class Said:
    """A PRIVMSG or NOTICE as the server keeps it."""

    msgid: str
    at: datetime
    source: str  # nick!user@host
    command: str
    target: str
    text: str

    @property
    def nick(self) -> str:
        return self.source.split("!", 1)[0]

    @functools.cached_property
    def time(self) -> str:
        return format_time(self.at)

    @functools.cached_property
    def body(self) -> str:
        """The line after its tags, as relayed: formatted once (a benchmark replays 10,000)."""
        return line(self.command, self.target, self.text, source=self.source)


@dataclass
class History:
    """One buffer's lines in order, findable by msgid and by time."""

    lines: list[Said] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    by_msgid: dict[str, int] = field(default_factory=dict)

    def add(self, said: Said) -> None:
        self.by_msgid[said.msgid] = len(self.lines)
        self.lines.append(said)
        self.times.append(said.at)

    def expire(self, count: int) -> None:
        """Forget the oldest `count` lines, as a server whose history is kept for a while."""
        del self.lines[:count], self.times[:count]
        self.by_msgid = {s.msgid: i for i, s in enumerate(self.lines)}


@dataclass(eq=False)
class Client:
    writer: asyncio.StreamWriter
    nick: str = ""
    user: str = ""
    caps: set[str] = field(default_factory=set)
    negotiating: bool = False
    registered: bool = False
    channels: set[str] = field(default_factory=set)

    @property
    def source(self) -> str:
        return f"{self.nick}!{self.user or self.nick}@{HOST}"

    def send(self, text: str) -> None:
        if not self.writer.is_closing():
            self.writer.write(text.encode() + b"\r\n")


class ChathistoryServer:
    def __init__(self, *, caps: Iterable[str] = DEFAULT_CAPS, max_messages: int = 50) -> None:
        self.caps = tuple(caps)
        self.max_messages = max_messages
        self.port = 0
        self.clients: list[Client] = []
        self.channels: dict[str, set[Client]] = {}  # folded name -> members
        self.names: dict[str, str] = {}  # folded channel name -> as first joined
        self.histories: dict[Any, History] = {}  # folded channel, or frozenset of two nicks
        self.received: list[str] = []  # every line a client sent, raw
        self.received_at: list[float] = []  # and when (time.monotonic())
        self.accepted_at: list[float] = []  # when each connection was accepted
        # Called (on the server's loop) before each CHATHISTORY reply is computed: a test makes
        # the channel talk at that moment (a live line racing the history).
        self.before_reply: Callable[[str], None] | None = None
        self._refusing = False
        self._ids = itertools.count(1)
        self._last_at = datetime.now(UTC) - timedelta(hours=1)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="chathistory-server")  # fmt: skip

    # -- running -------------------------------------------------------------------------------

    def start(self) -> ChathistoryServer:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, HOST, self.port or 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            for client in list(self.clients):
                client.writer.close()
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> ChathistoryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return fn(*args, **kwargs)

        return self._call(call())

    # -- what a test does ----------------------------------------------------------------------

    def say(self, nick: str, target: str, text: str, *, notice: bool = False) -> Said:
        """`nick` (connected or not) says `text` in a channel or to a nick: kept and relayed."""
        return self._run(self._say, f"{nick}!{nick}@{HOST}", target, text,
                         "NOTICE" if notice else "PRIVMSG")  # fmt: skip

    def add_history(self, nick: str, target: str, texts: list[str], *, start: datetime) -> None:
        """Lines said while nobody listened, one millisecond apart from `start`: kept, not
        relayed (a benchmark's 10,000 missed lines, made at once)."""
        self._run(self._add_history, nick, target, texts, start)

    def relay(self, nick: str, channel: str, texts: list[str]) -> list[Said]:
        """`nick` says every one of `texts` in `channel` at once: kept and relayed (a
        benchmark's live flood, the reference for its backfill)."""

        def flood() -> list[Said]:
            return [self._say(f"{nick}!{nick}@{HOST}", channel, t, "PRIVMSG") for t in texts]

        return self._run(flood)

    def history(self, target: str, other: str | None = None) -> list[Said]:
        """A channel's lines, or those between the nicks `target` and `other`."""
        key = fold(target) if other is None else frozenset({fold(target), fold(other)})
        return self._run(lambda: list(self.histories.get(key, History()).lines))

    def expire(self, channel: str, count: int) -> None:
        self._run(lambda: self.histories[fold(channel)].expire(count))

    def refuse(self) -> None:
        """Drop every client and turn new ones away until allow()."""

        def drop() -> None:
            self._refusing = True
            for client in list(self.clients):
                client.send(line("ERROR", "Closing link: the server is refusing connections"))
                client.writer.close()

        self._run(drop)

    def allow(self) -> None:
        self._run(lambda: setattr(self, "_refusing", False))

    def commands(self, command: str) -> list[IrcLine]:
        """What clients sent of one command, parsed."""
        return [line for line, _ in self.commands_at(command)]

    def commands_at(self, command: str) -> list[tuple[IrcLine, float]]:
        """What clients sent of one command, parsed, with when it arrived."""
        lines = self._run(lambda: list(zip(self.received, self.received_at, strict=True)))
        parsed = [(IrcLine.parse(raw), at) for raw, at in lines]
        return [(line, at) for line, at in parsed if line.command == command.upper()]

    def joined(self, channel: str) -> set[str]:
        return self._run(lambda: {c.nick for c in self.channels.get(fold(channel), set())})

    # -- the protocol ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Client(writer)
        self.accepted_at.append(time.monotonic())
        if self._refusing:
            client.send(line("ERROR", "Closing link: the server is refusing connections"))
            writer.close()
            return
        self.clients.append(client)
        try:
            while not reader.at_eof():
                raw = await reader.readline()
                if not raw.strip():
                    continue
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.received.append(text)
                self.received_at.append(time.monotonic())
                self._handle(client, IrcLine.parse(text))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._part_all(client)
            with contextlib.suppress(ValueError):
                self.clients.remove(client)
            writer.close()

    def _handle(self, client: Client, msg: IrcLine) -> None:
        handler = getattr(self, f"_on_{msg.command.lower()}", None)
        if handler is None:
            if client.registered:
                client.send(line("421", client.nick, msg.command, "Unknown command"))
            return
        if not client.registered and msg.command not in ("CAP", "NICK", "USER", "PING"):
            client.send(line("451", "*", "You have not registered"))
            return
        handler(client, msg)

    def _numeric(self, client: Client, code: str, *params: str) -> None:
        client.send(line(code, client.nick or "*", *params))

    def _on_cap(self, client: Client, msg: IrcLine) -> None:
        sub = msg.params[0].upper() if msg.params else ""
        if sub == "LS":
            client.negotiating = True
            client.send(line("CAP", client.nick or "*", "LS", " ".join(self.caps)))
        elif sub == "REQ":
            client.negotiating = True
            wanted = msg.params[-1].split() if len(msg.params) > 1 else []
            names = [w.lstrip("-") for w in wanted]
            if not wanted or any(n not in self.caps for n in names):
                client.send(line("CAP", client.nick or "*", "NAK", " ".join(wanted)))
                return
            for cap in wanted:
                if cap.startswith("-"):
                    client.caps.discard(cap[1:])
                else:
                    client.caps.add(cap)
            client.send(line("CAP", client.nick or "*", "ACK", " ".join(wanted)))
        elif sub == "LIST":
            client.send(line("CAP", client.nick or "*", "LIST", " ".join(sorted(client.caps))))
        elif sub == "END":
            client.negotiating = False
            self._maybe_register(client)
        else:
            self._numeric(client, "410", sub or "*", "Invalid CAP command")

    def _on_nick(self, client: Client, msg: IrcLine) -> None:
        if not msg.params:
            self._numeric(client, "431", "No nickname given")
            return
        nick = msg.params[0]
        if any(fold(c.nick) == fold(nick) for c in self.clients if c is not client):
            self._numeric(client, "433", nick, "Nickname is already in use")
            return
        client.nick = nick
        self._maybe_register(client)

    def _on_user(self, client: Client, msg: IrcLine) -> None:
        client.user = msg.params[0] if msg.params else "user"
        self._maybe_register(client)

    def _maybe_register(self, client: Client) -> None:
        if client.registered or client.negotiating or not client.nick or not client.user:
            return
        client.registered = True
        self._numeric(client, "001", f"Welcome to the history test network {client.source}")
        self._numeric(client, "002", f"Your host is {SERVER_NAME}")
        self._numeric(client, "003", "This server was created for a test")
        self._numeric(client, "004", SERVER_NAME, "chathistory-1", "i", "nt")
        tokens = ["CHANTYPES=#", "PREFIX=(ov)@+", "CASEMAPPING=ascii", "NETWORK=History"]
        if "draft/chathistory" in self.caps:
            tokens += [f"CHATHISTORY={self.max_messages}", "MSGREFTYPES=msgid,timestamp"]
        self._numeric(client, "005", *tokens, "are supported by this server")
        self._numeric(client, "422", "MOTD File is missing")

    def _on_ping(self, client: Client, msg: IrcLine) -> None:
        client.send(line("PONG", SERVER_NAME, msg.params[0] if msg.params else ""))

    def _on_quit(self, client: Client, msg: IrcLine) -> None:
        client.send(line("ERROR", "Closing link"))
        client.writer.close()

    def _on_join(self, client: Client, msg: IrcLine) -> None:
        for name in msg.params[0].split(",") if msg.params else []:
            if not name.startswith("#"):
                self._numeric(client, "403", name, "No such channel")
                continue
            key = fold(name)
            members = self.channels.setdefault(key, set())
            name = self.names.setdefault(key, name)
            if client in members:
                continue
            members.add(client)
            client.channels.add(key)
            for member in members:
                member.send(line("JOIN", name, source=client.source, tags=self._tags(member)))
            self._numeric(client, "353", "=", name, " ".join(c.nick for c in members))
            self._numeric(client, "366", name, "End of /NAMES list.")

    def _on_part(self, client: Client, msg: IrcLine) -> None:
        key = fold(msg.params[0]) if msg.params else ""
        members = self.channels.get(key, set())
        if client in members:
            for member in members:
                member.send(line("PART", self.names[key], source=client.source))
            members.discard(client)
            client.channels.discard(key)

    def _part_all(self, client: Client) -> None:
        for key in client.channels:
            self.channels.get(key, set()).discard(client)
        client.channels.clear()

    def _on_privmsg(self, client: Client, msg: IrcLine) -> None:
        if len(msg.params) < 2:
            self._numeric(client, "461", msg.command, "Not enough parameters")
            return
        self._say(client.source, msg.params[0], msg.params[1], msg.command, sender=client)

    _on_notice = _on_privmsg

    def _tags(self, client: Client, said: Said | None = None, batch: str = "") -> dict[str, str]:
        tags: dict[str, str] = {}
        if batch:
            tags["batch"] = batch
        if said is not None and "message-tags" in client.caps:
            tags["msgid"] = said.msgid
        if "server-time" in client.caps:
            tags["time"] = said.time if said is not None else format_time(datetime.now(UTC))
        return tags

    def _next_at(self, at: datetime | None = None) -> datetime:
        # Strictly increasing at millisecond resolution, so timestamp selectors are exact.
        at = max(at or datetime.now(UTC), self._last_at + timedelta(milliseconds=1))
        self._last_at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        return self._last_at

    def _keep(self, source: str, target: str, text: str, command: str, at: datetime) -> Said:
        said = Said(f"hist-{next(self._ids):07d}-{secrets.token_hex(3)}", at, source, command,
                    target, text)  # fmt: skip
        self._history_of(said.nick, target, create=True).add(said)  # type: ignore[union-attr]
        return said

    def _history_of(self, nick: str, target: str, *, create: bool = False) -> History | None:
        key: Any = fold(target) if target.startswith("#") else frozenset({fold(nick), fold(target)})
        if create:
            return self.histories.setdefault(key, History())
        return self.histories.get(key)

    def _say(self, source: str, target: str, text: str, command: str,
             sender: Client | None = None) -> Said:  # fmt: skip
        said = self._keep(source, target, text, command, self._next_at())
        if target.startswith("#"):
            receivers = set(self.channels.get(fold(target), set()))
        else:
            receivers = {c for c in self.clients if fold(c.nick) == fold(target)}
        receivers.discard(sender)  # no echo-message here
        for receiver in receivers:
            receiver.send(
                line(command, target, text, source=source, tags=self._tags(receiver, said))
            )
        return said

    def _add_history(self, nick: str, target: str, texts: list[str], start: datetime) -> None:
        source = f"{nick}!{nick}@{HOST}"
        for i, text in enumerate(texts):
            self._keep(source, target, text, "PRIVMSG",
                       self._next_at(start + timedelta(milliseconds=i)))  # fmt: skip

    # CHATHISTORY

    def _fail(self, client: Client, code: str, *context: str) -> None:
        client.send(line("FAIL", "CHATHISTORY", code, *context))

    def _on_chathistory(self, client: Client, msg: IrcLine) -> None:
        if "draft/chathistory" not in self.caps:
            self._numeric(client, "421", "CHATHISTORY", "Unknown command")
            return
        params = msg.params
        sub = params[0].upper() if params else "*"
        if sub not in SUBCOMMANDS:
            self._fail(client, "INVALID_PARAMS", sub, "Unknown command")
            return
        wanted = 5 if sub == "BETWEEN" else 4
        if len(params) < wanted:
            self._fail(client, "INVALID_PARAMS", sub, "Insufficient parameters")
            return
        if len(params) > wanted:
            self._fail(client, "INVALID_PARAMS", sub, "Too many parameters")
            return
        target, selectors, limit_text = params[1], params[2:-1], params[-1]
        if not limit_text.isdigit() or int(limit_text) < 1:
            self._fail(client, "INVALID_PARAMS", sub, limit_text, "Invalid limit")
            return
        limit = int(limit_text)
        if self.max_messages:
            limit = min(limit, self.max_messages)
        if target.startswith("#"):
            history = self._history_of(client.nick, target)
            if fold(target) not in client.channels:
                self._fail(client, "INVALID_TARGET", sub, target, "Messages could not be retrieved")
                return
            history = history or History()
        else:
            history = self._history_of(client.nick, target)
            if history is None:
                self._fail(client, "INVALID_TARGET", sub, target, "Messages could not be retrieved")
                return
        if self.before_reply is not None:
            self.before_reply(target)
        positions: list[tuple[int, int] | None] = []
        for selector in selectors:
            position = self._position(history, selector, star=sub == "LATEST")
            if isinstance(position, str):
                code = "MESSAGE_ERROR" if position == "unknown" else "INVALID_PARAMS"
                context = [target] if code == "MESSAGE_ERROR" else [selector]
                self._fail(client, code, sub, *context, f"Cannot use {selector}: {position}")
                return
            positions.append(position)
        chosen = self._select(history.lines, sub, positions, limit)
        self._reply(client, self.names.get(fold(target), target), chosen)

    def _position(self, history: History, selector: str, *, star: bool
                  ) -> tuple[int, int] | str | None:  # fmt: skip
        """Where a selector falls: (first index after it, first index at or after it); None
        for LATEST's `*`; or why it cannot be used."""
        if selector == "*" and star:
            return None
        kind, _, value = selector.partition("=")
        if kind == "msgid" and value:
            index = history.by_msgid.get(value)
            if index is None:
                return "unknown"
            return (index + 1, index)
        if kind == "timestamp":
            at = parse_time(value)
            if at is None:
                return "invalid timestamp"
            return (bisect.bisect_right(history.times, at), bisect.bisect_left(history.times, at))
        return "invalid message reference"

    @staticmethod
    def _select(lines: list[Said], sub: str, positions: list[tuple[int, int] | None], limit: int
                ) -> list[Said]:  # fmt: skip
        first = positions[0]
        if first is None:  # LATEST *
            return lines[-limit:]
        after, at = first
        if sub == "AFTER":
            return lines[after:][:limit]
        if sub == "BEFORE":
            return lines[max(0, at - limit) : at]
        if sub == "LATEST":
            return lines[after:][-limit:]
        if sub == "AROUND":
            start = max(0, at - limit // 2)
            return lines[start : start + limit]
        # BETWEEN: counted from the first selector towards the second, both excluded.
        second = positions[1]
        assert second is not None
        second_after, second_at = second
        if after <= second_at:
            return lines[after:second_at][:limit]
        return lines[second_after:at][-limit:]

    def _reply(self, client: Client, target: str, chosen: list[Said]) -> None:
        ref = ""
        if "batch" in client.caps:
            ref = secrets.token_hex(4)
            client.send(line("BATCH", f"+{ref}", "chathistory", target))
        for said in chosen:
            tags = self._tags(client, said, ref)
            # Tag values here (hex, digits, a time) need no escaping.
            prefix = "@" + ";".join(f"{k}={v}" for k, v in tags.items()) + " " if tags else ""
            client.send(prefix + said.body)
        if ref:
            client.send(line("BATCH", f"-{ref}"))
