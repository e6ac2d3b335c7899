"""One IRC connection of one account's server: registration, capabilities, SASL, keepalive,
reconnection with backoff, autojoin, and turning what the server says into stored records.

It never touches the database: records go to the gateway's Store, connection state to Redis.
"""

import asyncio
import base64
import collections
import contextlib
import functools
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from aiolimiter import AsyncLimiter
from django.conf import settings

from channels_app.events import ServerStateEvent
from core import net_policy
from gateway import chathistory, lists, protocol
from gateway.protocol import IrcLine, ParseError
from gateway.redaction import hide_secrets
from gateway.storage import SERVER_BUFFER, Joined, Line, Members, Record, Topic, highlight_pattern

logger = logging.getLogger(__name__)

WANTED_CAPS = frozenset(
    {
        "server-time",
        "message-tags",
        "echo-message",
        "multi-prefix",
        "away-notify",
        "account-notify",
        "extended-join",
        "userhost-in-names",
        "cap-notify",
        "batch",
        # The browser's id of a line (its cid) goes out as the line's label: the server's
        # error for it comes back with the same label, however many lines went to that target.
        "labeled-response",
        chathistory.CAP,
    }
)
CONNECT_TIMEOUT = 20.0
REGISTRATION_TIMEOUT = 60.0
# Silence after which we PING the server, and how long it then has to answer.
IDLE_PING_SECONDS = 90.0
PING_TIMEOUT_SECONDS = 60.0
# A connection must stay up this long before the backoff resets, so a server that drops us
# right after registration is not hammered.
STABLE_SECONDS = 60.0
JOINS_PER_BURST = 5
JOIN_BURST_SECONDS = 1.0
CTCP_REPLIES_PER_MINUTE = 6
# Read-rate tokens taken at once (see _take_read_credit).
READ_CHUNK = 20
VERSION = "Palaver (hosted IRC client)"
# Marks a stored line the user's connection sent for an agent (Agent.presence "user"), with the
# agent's nick as its value: listeners (the agents) tell an agent's words from the user's.
AGENT_TAG = "palaver/agent"
# How long a line sent for an agent waits for its echo to be marked as the agent's.
AGENT_ECHO_SECONDS = 60.0
# How long after a line was sent an error numeric naming its target or command is taken to be
# the server's answer to it (the browser shows it next to the line); how many are remembered.
SEND_ERROR_SECONDS = 10.0
RECENT_SENDS = 32


REPLY_BUFFER_TAG = protocol.REPLY_BUFFER_TAG
# Marks the lines of one /whois answer, with the nick as its value.
WHOIS_TAG = "palaver/whois"
MAX_PENDING_WHOIS = 20
MAX_WHOIS_FACTS = 30


def _duration(seconds: int) -> str:
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts[:2]) or f"{seconds} s"


def describe_whois(line: IrcLine) -> str:
    """One WHOIS reply as a sentence: "alice is ~a@example.org (Alice Liddell)"."""
    p = line.params
    nick = p[1]
    code = line.command
    if code == "311" and len(p) >= 6:
        return f"{nick} is {p[2]}@{p[3]} ({p[5]})"
    if code == "312" and len(p) >= 4:
        return f"{nick} is connected to {p[2]} ({p[3]})"
    if code == "319" and len(p) >= 3:
        return f"{nick} is in {p[2].strip()}"
    if code == "330" and len(p) >= 3:
        return f"{nick} is logged in as {p[2]}"
    if code == "301" and len(p) >= 3:
        return f"{nick} is away: {p[2]}"
    if code == "317" and len(p) >= 4 and p[2].isdigit():
        text = f"{nick} has been idle {_duration(int(p[2]))}"
        if p[3].isdigit():
            signon = datetime.fromtimestamp(int(p[3]), UTC).strftime("%Y-%m-%d %H:%M UTC")
            text += f", signed on {signon}"
        return text
    # 313 (operator), 338 (actual host), 671 (secure connection), 378, 379, 276, 335 and the
    # others: the server's own words, after the nick.
    return f"{nick} " + " ".join(p[2:]).strip()


class RecordSink(Protocol):
    """Where a connection's records go: the gateway's Store, or nothing (an agent's own
    connection, whose channels the user's connection already stores)."""

    def put(self, record: Record) -> None: ...

    def run_sync(
        self, fn: Any, *args: Any, account_id: uuid.UUID | None = None
    ) -> "asyncio.Future[Any]": ...


@dataclass
class ServerConfig:
    """What the gateway needs of a Server row, read once in the account's schema."""

    account_id: uuid.UUID
    server_id: int
    name: str
    host: str
    port: int
    tls: bool
    tls_verify: bool
    nick: str
    alt_nicks: list[str]
    username: str
    realname: str
    password: str
    sasl_username: str
    sasl_password: str
    autojoin: dict[str, str] = field(default_factory=dict)  # channel name -> key

    def connection_key(self) -> tuple[Any, ...]:
        """Fields whose change needs a new connection (channels only need a JOIN or PART)."""
        return (
            self.host, self.port, self.tls, self.tls_verify, self.nick, tuple(self.alt_nicks),
            self.username, self.realname, self.password, self.sasl_username, self.sasl_password,
        )  # fmt: skip


class ConnectionLost(Exception):
    pass


# A line the user sends: command, parameters, and what to do once it is on the wire.
# command, parameters, what runs once it is on the wire, its tags (a label)
Outgoing = tuple[str, tuple[str, ...], Callable[[], None] | None, dict[str, str] | None]


class SendQueueFull(ValueError):
    """The user sends faster than the flood protection lets lines out, for too long."""


def next_backoff(delay: float) -> tuple[float, float]:
    """(how long to wait now, the delay after the next failure): doubling, never past
    GATEWAY_RECONNECT_MAX_SECONDS, with jitter so connections dropped together do not return
    together."""
    cap = settings.GATEWAY_RECONNECT_MAX_SECONDS
    wait = min(cap, delay) * random.uniform(0.8, 1.2)  # noqa: S311 (jitter)
    return min(cap, wait), min(cap, delay * 2)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may make the gateway hold or do (config/settings.py explains each)."""

    members_per_channel: int
    caps: int
    channels: int
    lines_per_second: float
    line_burst: int
    send_burst: int
    send_interval: float
    send_queue: int
    notice_seconds: float

    @classmethod
    def from_settings(cls) -> "Limits":
        return cls(
            members_per_channel=settings.GATEWAY_MAX_MEMBERS_PER_CHANNEL,
            caps=settings.GATEWAY_MAX_CAPS,
            channels=settings.LIMIT_CHANNELS_PER_SERVER,
            lines_per_second=settings.GATEWAY_MAX_LINES_PER_SECOND,
            line_burst=settings.GATEWAY_LINE_BURST,
            send_burst=settings.GATEWAY_SEND_BURST,
            send_interval=settings.GATEWAY_SEND_INTERVAL_SECONDS,
            send_queue=settings.GATEWAY_SEND_QUEUE_MAX,
            notice_seconds=settings.GATEWAY_REFUSAL_NOTICE_SECONDS,
        )


def token_bucket(burst: float, per_second: float) -> AsyncLimiter:
    """`burst` at once, then `per_second` on average."""
    return AsyncLimiter(burst, burst / per_second)


class IrcConnection:
    # The capabilities asked for (a subclass may want fewer).
    wanted_caps: frozenset[str] = WANTED_CAPS

    def __init__(
        self,
        config: ServerConfig,
        store: RecordSink,
        *,
        report_state: Callable[[ServerStateEvent], None],
        highlight_words: Callable[[], Sequence[str]],
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.report_state = report_state
        self.highlight_words = highlight_words
        self.tls_context = tls_context
        self.nick = config.nick
        self.caps: set[str] = set()
        self.isupport: dict[str, str | None] = {}
        self.prefix_modes, self.prefix_symbols = "ov", "@+"
        self.casemapping = "rfc1459"
        self.registered = False
        self.joined: dict[str, str] = {}  # casefolded channel -> display name
        self.members: dict[
            str, dict[str, str]
        ] = {}  # casefolded channel -> casefolded nick -> prefixes
        self._names_pending: dict[str, list[tuple[str, str, bool]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._offered: set[str] = set()
        self._sasl_in_progress = False
        self._cap_negotiating = True
        self._caps_seen = 0
        self._autojoin_task: asyncio.Task[None] | None = None
        self._backfill: chathistory.Backfill | None = None
        self._backfill_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_received = 0.0
        self._nick_attempt = 0
        self._ctcp_times: list[float] = []
        self.limits = Limits.from_settings()
        self._refused_at: dict[str, float] = {}  # kind of refusal -> when it was last said
        # Flood protection for what the user sends: the lines wait here, in order. Made on the
        # first send (an idle connection should cost little: DESIGN.md's 20 KB).
        self._outbox: collections.deque[Outgoing] | None = None
        self._send_bucket: AsyncLimiter | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._read_bucket: AsyncLimiter | None = None  # a fresh one per session
        self._read_credit = 0
        self.state = "disconnected"
        self.last_error = ""
        self._me: tuple[str, str, str] = ("", "", "")  # nick, casemapping, folded nick
        # "user@host" of our prefix as the server relays our lines; None until seen.
        self.own_user_host: str | None = None
        self._highlight: tuple[Sequence[str] | None, str, re.Pattern[str] | None] = (None, "", None)
        # Lines sent for agents whose echo is still to come: (deadline, folded target, text,
        # agent nick). Made on the first such line.
        self._agent_lines: collections.deque[tuple[float, str, str, str]] | None = None
        # A /list being received, and the /whois replies being gathered: folded nick ->
        # (buffer to show it in, sentences so far). Made when first needed.
        self._channel_list: lists.ChannelList | None = None
        self._whois: dict[str, tuple[str, list[str]]] | None = None
        # The browser's id of a line the user sent, for telling the page why it was refused:
        # lines still in the outbox (cid -> how many), and those on the wire lately
        # (deadline, cid, command, folded names the server's error may quote). The manager
        # sets `on_send_error`; made on the first such line.
        self.on_send_error: Callable[[str, str], None] | None = None
        # labeled-response batches open now: reference -> label.
        self._label_batches: dict[str, str] | None = None
        self._waiting: dict[str, int] | None = None
        self._recent_sends: collections.deque[tuple[float, str, str, frozenset[str]]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"irc-{self.config.server_id}")

    async def stop(self, reason: str = "Palaver: disconnecting") -> None:
        self._stopping = True
        if self._writer is not None and self.registered:
            try:
                self._send("QUIT", reason)
                await asyncio.wait_for(self._writer.drain(), 2)
            except (OSError, TimeoutError, ValueError):
                pass
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._pump_task is not None:
            self._pump_task.cancel()
        self._set_state("disconnected", error="", next_retry=None)

    async def _run(self) -> None:
        delay = settings.GATEWAY_RECONNECT_FIRST_SECONDS
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._session()
                error = "the server closed the connection"
            except asyncio.CancelledError:
                raise
            except ConnectionLost as exc:
                error = str(exc)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                error = _describe(exc)
            except Exception as exc:  # a bug must cost one connection a reconnect, not the gateway
                logger.exception("server %s: unexpected error", self.config.server_id)
                error = f"internal error: {exc}"
            finally:
                self._close_writer()
            if self._stopping:
                return
            if self.registered and time.monotonic() - started >= STABLE_SECONDS:
                delay = settings.GATEWAY_RECONNECT_FIRST_SECONDS
            self.registered = False
            wait, delay = next_backoff(delay)
            self._server_line("system", f"Disconnected: {error}. Reconnecting in {wait:.0f} s.")
            self._set_state(
                "disconnected", error=error, next_retry=datetime.now(UTC) + timedelta(seconds=wait)
            )
            await asyncio.sleep(wait)

    def _close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # already broken
                self._writer.close()
            self._writer = None

    # -- one session -------------------------------------------------------------------------

    async def _session(self) -> None:
        c = self.config
        self._set_state("connecting", error="", next_retry=None)
        ssl_arg: ssl.SSLContext | None = None
        if c.tls:
            ssl_arg = self.tls_context or ssl.create_default_context()
            if not c.tls_verify:
                ssl_arg = ssl.create_default_context()
                ssl_arg.check_hostname = False
                ssl_arg.verify_mode = ssl.CERT_NONE
        # Through the address policy at every attempt (a refusal raises before any packet).
        reader, writer = await asyncio.wait_for(
            net_policy.open_connection(
                c.host, c.port, ssl_context=ssl_arg, limit=protocol.MAX_LINE_BYTES * 2
            ),
            CONNECT_TIMEOUT,
        )
        self._writer = writer
        self._reset_session_state()
        self._send("CAP", "LS", "302")
        if c.password:
            self._send("PASS", c.password)
        self._send("NICK", self.nick)
        self._send("USER", c.username or c.nick, "0", "*", c.realname or c.nick)
        keepalive = asyncio.create_task(self._keepalive())
        registration = asyncio.get_running_loop().call_later(
            REGISTRATION_TIMEOUT, self._registration_timeout
        )
        skipping = False
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    # Far longer than any server may send: discard it up to its newline.
                    await reader.readexactly(exc.consumed)
                    skipping = True
                    continue
                except asyncio.IncompleteReadError:
                    return
                if skipping:
                    skipping = False  # the tail of the oversized line
                    continue
                if not self._read_credit:
                    await self._take_read_credit()
                self._read_credit -= 1
                self._last_received = time.monotonic()
                try:
                    line = protocol.parse_line(raw)
                except ParseError:
                    logger.debug("server %s: unparseable line skipped", c.server_id)
                    continue
                try:
                    if "batch" in line.tags and self._backfill is not None:
                        take = self._backfill.take(line)
                        if take.requested:
                            self._read_credit += 1  # we asked for it (chathistory.py)
                        if take.history:
                            self._history_line(line)
                            continue
                    await self._handle(line)
                except ConnectionLost:
                    raise
                except Exception:
                    # The gateway survives any line a server sends.
                    logger.exception("server %s: failed to handle %s", c.server_id, line.command)
        finally:
            registration.cancel()
            keepalive.cancel()
            self._drop_outbox()
            if self._autojoin_task is not None:
                self._autojoin_task.cancel()
            if self._backfill_task is not None:
                self._backfill_task.cancel()

    async def _take_read_credit(self) -> None:
        """Lines may be read at GATEWAY_MAX_LINES_PER_SECOND: taken from the bucket READ_CHUNK
        at a time, since a bucket call costs as much as handling a line."""
        chunk = min(READ_CHUNK, self.limits.line_burst)
        if self._read_bucket is None:
            self._read_bucket = token_bucket(self.limits.line_burst, self.limits.lines_per_second)
        if not self._read_bucket.has_capacity(chunk):
            # Read slower: TCP holds the rest at the server, nothing here grows.
            self._refuse(
                "rate",
                f"The server sends more than {self.limits.lines_per_second:g} lines a second; "
                "reading it slower.",
            )
        await self._read_bucket.acquire(chunk)
        self._read_credit = chunk

    def _reset_session_state(self) -> None:
        self.nick = self.config.nick
        self._label_batches = None
        self._nick_attempt = 0
        self.caps = set()
        self.isupport = {}
        self.prefix_modes, self.prefix_symbols = "ov", "@+"
        self.casemapping = "rfc1459"
        self.joined = {}
        self.members = {}
        self._names_pending = {}
        self._last_received = time.monotonic()
        self._sasl_in_progress = False
        self._cap_negotiating = True
        self._offered = set()
        self._caps_seen = 0
        self.limits = Limits.from_settings()
        self._read_bucket = None
        self._read_credit = 0
        self._backfill = None  # made at registration when the server offers chathistory
        self.own_user_host = None
        self._channel_list = None
        self._whois = None

    def _chathistory_limit(self) -> int:
        """The server's most messages per CHATHISTORY request (ISUPPORT); 0 for no maximum."""
        value = self.isupport.get("CHATHISTORY") or "0"
        return int(value) if value.isdigit() else 0

    def _registration_timeout(self) -> None:
        if not self.registered and self._writer is not None:
            self.last_error = "registration timed out"
            self._writer.close()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(IDLE_PING_SECONDS / 3)
            idle = time.monotonic() - self._last_received
            if idle >= IDLE_PING_SECONDS + PING_TIMEOUT_SECONDS:
                logger.info("server %s: ping timeout", self.config.server_id)
                if self._writer is not None:
                    self._writer.close()
                return
            if idle >= IDLE_PING_SECONDS:
                self._send("PING", f"palaver-{int(time.time())}")

    # -- sending -----------------------------------------------------------------------------

    def _send(self, command: str, *params: str, tags: dict[str, str] | None = None) -> None:
        if self._writer is None:
            raise ConnectionLost("not connected")
        self._writer.write(protocol.format_line(command, *params, tags=tags))

    def send_raw(self, text: str, *, cid: str = "") -> None:
        """/quote: the user's own line. parse_line refuses LF and NUL, format_line CR, so it can
        never carry a second command."""
        self._require_registered()
        line = protocol.parse_line(text)
        self._before_raw(line)
        self._send_paced(
            line.command,
            *line.params,
            after=self._track(cid, line.command, line.params),
            tags=self._label(cid),
        )

    def _track(
        self, cid: str, command: str, params: Sequence[str], then: Callable[[], None] | None = None
    ) -> Callable[[], None] | None:
        """What runs once a line the browser knows as `cid` is on the wire: it is remembered
        for SEND_ERROR_SECONDS, so that an error numeric naming its target or command is told
        to the page (`send_error_for`)."""
        if not cid or self.on_send_error is None:
            return then
        if self._waiting is None:
            self._waiting = {}
        self._waiting[cid] = self._waiting.get(cid, 0) + 1
        names = frozenset(
            self._fold(name) for param in params[:2] for name in param.split(",") if name
        )

        def sent() -> None:
            waiting = self._waiting
            if waiting is not None and cid in waiting:
                waiting[cid] -= 1
                if waiting[cid] <= 0:
                    del waiting[cid]
            if self._recent_sends is None:
                self._recent_sends = collections.deque(maxlen=RECENT_SENDS)
            deadline = time.monotonic() + SEND_ERROR_SECONDS
            self._recent_sends.append((deadline, cid, command.upper(), names))
            if then is not None:
                then()

        return sent

    def _label(self, cid: str) -> dict[str, str] | None:
        """The label tag for a line the browser knows as `cid`, where the server answers labels
        (IRCv3 labeled-response)."""
        if cid and self.on_send_error is not None and "labeled-response" in self.caps:
            return {"label": cid}
        return None

    def send_error_for(
        self, code: str, params: Sequence[str], tags: dict[str, str] | None = None
    ) -> bool:
        """An error numeric (4xx/5xx) in answer to a line the browser sent is told to that
        page: by the line's label (labeled-response: the tag on the reply, or on the
        labeled-response batch holding it), else, from a server without labels, by naming the
        target or command of a line sent lately (newest first). True when one matched."""
        recent = self._recent_sends
        if not recent or self.on_send_error is None or len(params) < 3:
            return False
        now = time.monotonic()
        while recent and recent[0][0] < now:
            recent.popleft()
        named = params[1]
        reason = f"{named}: {params[-1]}" if named else params[-1]
        tags = tags or {}
        label = tags.get("label") or (self._label_batches or {}).get(tags.get("batch", ""))
        if label or "labeled-response" in self.caps:
            # A server that labels: only a label says whose error it is.
            for entry in recent:
                if entry[1] == label:
                    recent.remove(entry)
                    self.on_send_error(entry[1], reason)
                    return True
            return False
        folded = self._fold(named)
        for entry in reversed(recent):
            _, cid, command, names = entry
            if folded in names or named.upper() == command:
                recent.remove(entry)
                self.on_send_error(cid, reason)
                return True
        return False

    def _send_paced(
        self,
        command: str,
        *params: str,
        after: Callable[[], None] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Send what the user typed through the flood protection: a burst at once, then one
        line per interval, in order; `after` runs once the line is on the wire."""
        if self._outbox is None or self._send_bucket is None:
            self._outbox = collections.deque()
            self._send_bucket = token_bucket(self.limits.send_burst, 1 / self.limits.send_interval)
        if len(self._outbox) >= self.limits.send_queue:
            raise SendQueueFull(
                f"{len(self._outbox)} lines are already waiting to be sent to this server"
            )
        self._outbox.append((command, params, after, tags))
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(
                self._pump(self._outbox, self._send_bucket)
            )

    async def _pump(self, outbox: "collections.deque[Outgoing]", bucket: AsyncLimiter) -> None:
        while outbox:
            await bucket.acquire()
            if not outbox:
                return  # the session ended meanwhile
            command, params, after, tags = outbox.popleft()
            try:
                self._send(command, *params, tags=tags)
            except ConnectionLost:
                return  # the session's end drops the rest
            if after is not None:
                after()

    def _drop_outbox(self) -> None:
        """The session ended: what waited was meant for it, never for the next one (which has
        not registered yet)."""
        if self._pump_task is not None:
            self._pump_task.cancel()
        if self._outbox:
            self._server_line("system", f"Not sent (disconnected): {len(self._outbox)} lines.")
            self._outbox.clear()
        if self._waiting:
            for cid in self._waiting:
                if self.on_send_error is not None:
                    self.on_send_error(cid, "Not sent: the connection to the server was lost.")
            self._waiting.clear()

    def _require_registered(self) -> None:
        # Nothing the user sends reaches the socket before the welcome (001): before it, a line
        # goes to whatever listens on that port, IRC server or not.
        if not self.registered:
            raise ConnectionLost("not connected to the server yet (still registering)")

    def say(
        self, target: str, text: str, kind: str = "message", *, agent: str = "", cid: str = ""
    ) -> None:
        """Send a message, split to fit; stored now unless the server echoes it back.

        With `agent`, the words are that agent's, said through this connection (its presence
        is the user's connection): every piece starts with "[agent] " so that readers see who
        speaks, and is stored tagged AGENT_TAG."""
        self._require_registered()
        command = "NOTICE" if kind == "notice" else "PRIVMSG"
        # Refused here, not when the pump sends it: what cannot be one line ends the pump.
        if any(c in text for c in "\r\n\0"):
            raise ValueError("a message must be one line")
        protocol.format_line(command, target, "")  # the target must be one parameter
        prefix = f"[{agent}] " if agent else ""
        tags = {AGENT_TAG: agent} if agent else {}
        for piece in self._split_for_send(command, target, text, kind, prefix):
            chunk = prefix + piece
            body = protocol.ctcp("ACTION", chunk) if kind == "action" else chunk
            store: Callable[[], None] | None = None
            if "echo-message" not in self.caps:
                store = functools.partial(
                    self._store_line,
                    buffer=target, kind=kind, sender=self.nick, text=chunk, tags=tags, own=True,
                )  # fmt: skip
            elif agent:
                # The echo is what gets stored: it is marked when it comes back.
                store = functools.partial(self._expect_agent_echo, target, chunk, agent)
            self._send_paced(
                command,
                target,
                body,
                after=self._track(cid, command, [target], store),
                tags=self._label(cid),
            )

    def _split_for_send(
        self, command: str, target: str, text: str, kind: str, prefix: str = ""
    ) -> list[str]:
        """`text` in pieces that each fit one line of 512 bytes as the server relays it to the
        others: ":nick!user@host COMMAND target :", the /me wrapper, `prefix` (an agent's
        "[name] ", repeated on every piece) and CRLF counted; balanced, cut at spaces."""
        overhead = protocol.message_overhead(
            nick=self.nick,
            user_host=self.own_user_host,
            command=command,
            target=target,
            action=kind == "action",
        )
        return protocol.split_message(text, overhead + len(prefix.encode()))

    def _learn_user_host(self, line: IrcLine) -> None:
        """Our "user@host" as others see it, from a line of ours the server relays (our JOIN,
        an echo): the prefix counted when splitting long lines (_split_for_send)."""
        if line.user_host and self._is_me(line.nick):
            self.own_user_host = line.user_host

    def _on_396(self, line: IrcLine) -> None:
        """RPL_VISIBLEHOST: the server changed our host (a cloak): the prefix others see."""
        if len(line.params) >= 2 and self.own_user_host is not None:
            user = self.own_user_host.partition("@")[0]
            self.own_user_host = f"{user}@{line.params[1]}"
        self._on_numeric(line)  # and said in the server buffer, as before

    def _on_chghost(self, line: IrcLine) -> None:
        if len(line.params) >= 2 and self._is_me(line.nick):
            self.own_user_host = f"{line.params[0]}@{line.params[1]}"

    # -- /list and /whois: replies gathered for the web (gateway/lists.py) ---------------------

    def _before_raw(self, line: IrcLine) -> None:
        """A LIST or WHOIS from the web: get ready to gather its replies. The web names the
        buffer a /whois was typed in with the REPLY_BUFFER_TAG tag (never sent: send_raw sends
        the command and its parameters only)."""
        if line.command == "LIST":
            self._channel_list = lists.ChannelList(
                mask=line.params[0] if line.params else "",
                max_channels=settings.GATEWAY_LIST_MAX_CHANNELS,
            )
            self._publish_list(self._channel_list.progress())
        elif line.command == "WHOIS" and line.params:
            self._begin_whois(line.params[-1], line.tags.get(REPLY_BUFFER_TAG, ""))

    def _publish_list(self, payload: "str | lists.ChannelList") -> None:
        lists.publish(self.config.account_id, self.config.server_id, payload)

    def _on_321(self, line: IrcLine) -> None:
        """RPL_LISTSTART (optional): a LIST we did not see sent (a /quote) starts here too."""
        if self._channel_list is None:
            self._channel_list = lists.ChannelList(max_channels=settings.GATEWAY_LIST_MAX_CHANNELS)

    def _on_322(self, line: IrcLine) -> None:
        """RPL_LIST: "<me> <channel> <users> :<topic>"."""
        if len(line.params) < 3:
            return
        if self._channel_list is None:
            self._on_321(line)
        gathered = self._channel_list
        assert gathered is not None
        if gathered.closed:
            return  # timed out and published: the rest of a list that never ends
        users = line.params[2]
        gathered.add(
            line.params[1],
            int(users) if users.isdigit() else 0,
            line.params[3] if len(line.params) > 3 else "",
        )
        if gathered.expired:
            gathered.closed = True
            self._publish_list(gathered)
        elif gathered.due():
            self._publish_list(gathered.progress())

    def _on_323(self, line: IrcLine) -> None:
        """RPL_LISTEND: the list is whole; published, and no longer held here."""
        gathered, self._channel_list = self._channel_list, None
        if gathered is not None and not gathered.closed:
            self._publish_list(gathered)

    def _begin_whois(self, nick: str, buffer: str) -> None:
        if self._whois is None:
            self._whois = {}
        if len(self._whois) >= MAX_PENDING_WHOIS:
            self._whois.pop(next(iter(self._whois)))  # the oldest never ended
        self._whois[self._fold(nick)] = (buffer, [])

    def _whois_reply(self, line: IrcLine) -> None:
        """A WHOIS reply (311 ... 318): a readable sentence kept until 318 ends the block."""
        if len(line.params) < 2:
            return
        nick = line.params[1]
        folded = self._fold(nick)
        if self._whois is None or folded not in self._whois:
            # Not an answer to a WHOIS we sent (a 301 comes when we message someone away):
            # shown as any other numeric.
            self._on_numeric(line)
            return
        buffer, facts = self._whois[folded]
        if line.command == "318":
            del self._whois[folded]
            self._show_whois(buffer, nick, facts or [f"{nick}: no such nick."])
        elif len(facts) < MAX_WHOIS_FACTS:
            facts.append(describe_whois(line))

    _on_311 = _on_312 = _on_313 = _on_317 = _on_318 = _on_319 = _whois_reply
    _on_301 = _on_276 = _on_320 = _on_330 = _on_335 = _on_338 = _whois_reply
    _on_378 = _on_379 = _on_671 = _whois_reply

    def _show_whois(self, buffer: str, nick: str, facts: list[str]) -> None:
        """One block of lines in the buffer the /whois was typed in (else the server buffer),
        each tagged with the nick so the page can tell the block's lines."""
        tags = {WHOIS_TAG: nick}
        for fact in facts:
            if buffer:
                self._store_line(buffer=buffer, kind="system", sender="", text=fact, tags=tags)
            else:
                self._server_line("system", fact, tags=tags)

    def _expect_agent_echo(self, target: str, text: str, agent: str) -> None:
        if self._agent_lines is None:
            self._agent_lines = collections.deque()
        now = time.monotonic()
        while self._agent_lines and self._agent_lines[0][0] < now:
            self._agent_lines.popleft()  # its echo never came (the server refused the line)
        deadline = now + AGENT_ECHO_SECONDS
        self._agent_lines.append((deadline, self._fold(target), text, agent))

    def _agent_echo(self, target: str, text: str) -> str:
        """The agent whose line this echo is ("" when it is the user's own)."""
        lines = self._agent_lines
        if not lines:
            return ""
        now = time.monotonic()
        while lines and lines[0][0] < now:
            lines.popleft()  # its echo never came (the server refused the line)
        folded = self._fold(target)
        for entry in lines:
            if entry[1] == folded and entry[2] == text:
                lines.remove(entry)
                return entry[3]
        return ""

    def join(self, channel: str, key: str = "") -> None:
        if key:
            self._send("JOIN", channel, key)
        else:
            self._send("JOIN", channel)

    def part(self, channel: str, reason: str = "") -> None:
        self._send("PART", channel, *([reason] if reason else []))

    async def apply_channels(self, autojoin: dict[str, str]) -> None:
        """Join channels newly set to autojoin, part those removed."""
        old = {self._fold(n) for n in self.config.autojoin}
        new = {self._fold(n): n for n in autojoin}
        self.config.autojoin = autojoin
        if not self.registered:
            return
        for folded, name in new.items():
            if folded not in old and folded not in self.joined:
                self.join(name, autojoin[name])
        for name in list(self.joined.values()):
            if self._fold(name) in old and self._fold(name) not in new:
                self.part(name)

    async def _autojoin(self) -> None:
        names = list(self.config.autojoin.items())
        for i in range(0, len(names), JOINS_PER_BURST):
            burst = names[i : i + JOINS_PER_BURST]
            keyed = [(n, k) for n, k in burst if k] + [(n, k) for n, k in burst if not k]
            try:
                channels = ",".join(n for n, _ in keyed)
                keys = ",".join(k for _, k in keyed if k)
                if keys:
                    self._send("JOIN", channels, keys)
                else:
                    self._send("JOIN", channels)
            except ConnectionLost:
                return
            await asyncio.sleep(JOIN_BURST_SECONDS)

    # -- receiving ---------------------------------------------------------------------------

    def _fold(self, name: str) -> str:
        return protocol.casefold(name, self.casemapping)

    def _is_channel(self, target: str) -> bool:
        chantypes = self.isupport.get("CHANTYPES") or "#&"
        return bool(target) and target[0] in chantypes

    def _is_me(self, nick: str | None) -> bool:
        if nick is None:
            return False
        # Our folded nick, folded again only when the nick or the casemapping changed: this is
        # asked several times per line.
        if self._me[0] != self.nick or self._me[1] != self.casemapping:
            self._me = (self.nick, self.casemapping, self._fold(self.nick))
        return self._fold(nick) == self._me[2]

    async def _handle(self, line: IrcLine) -> None:
        handler = getattr(self, f"_on_{line.command.lower()}", None)
        if handler is not None:
            result = handler(line)
            # Most handlers return None; iscoroutine(None) is an ABC check, a seventh of a
            # flood's event loop.
            if result is not None and asyncio.iscoroutine(result):
                await result
        elif line.command.isdigit():
            self._on_numeric(line)

    def _on_ping(self, line: IrcLine) -> None:
        self._send("PONG", *(line.params[:1] or [""]))

    def _on_pong(self, line: IrcLine) -> None:
        pass

    def _on_batch(self, line: IrcLine) -> None:
        if self._backfill is not None:
            self._backfill.on_batch(line)
        ref = line.params[0] if line.params else ""
        if ref.startswith("+") and line.params[1:2] == ["labeled-response"]:
            label = line.tags.get("label", "")
            if label and self._recent_sends:  # only while a labeled line of ours is answered
                if self._label_batches is None:
                    self._label_batches = {}
                if len(self._label_batches) < RECENT_SENDS:
                    self._label_batches[ref[1:]] = label
        elif ref.startswith("-") and self._label_batches:
            self._label_batches.pop(ref[1:], None)

    def _on_fail(self, line: IrcLine) -> None:
        if self._backfill is not None:
            self._backfill.on_fail(line)

    def _on_error(self, line: IrcLine) -> None:
        message = line.params[-1] if line.params else "error"
        self.last_error = message
        raise ConnectionLost(f"server said: {message}")

    # capabilities and SASL

    def _on_cap(self, line: IrcLine) -> None:
        if len(line.params) < 2:
            return
        sub = line.params[1].upper()
        args = line.params[2:]
        if sub == "LS":
            more = len(args) > 1 and args[0] == "*"
            offered = {token.split("=", 1)[0] for token in args[-1].split()} if args else set()
            if self._caps_seen > self.limits.caps:
                return  # the rest of an endless list
            # Only what we could use is kept, and an endless CAP LS ends at the limit.
            self._offered |= offered & (self.wanted_caps | {"sasl"})
            self._caps_seen += len(offered)
            if more and self._caps_seen > self.limits.caps:
                self._refuse(
                    "caps",
                    f"The server offers more than {self.limits.caps} capabilities; "
                    "the rest were ignored.",
                )
                more = False
            if more:
                return
            wanted: set[str] = set(self.wanted_caps & self._offered)
            if self.config.sasl_username and self.config.sasl_password and "sasl" in self._offered:
                wanted.add("sasl")
            if wanted:
                self._send("CAP", "REQ", " ".join(sorted(wanted)))
            else:
                self._end_cap()
        elif sub == "ACK":
            acked = set(args[-1].split()) if args else set()
            for cap in acked:
                if cap.startswith("-"):
                    self.caps.discard(cap[1:])
                elif cap in self.wanted_caps or cap == "sasl":  # never more than we asked for
                    self.caps.add(cap)
            if "sasl" in acked and not self.registered:
                self._sasl_in_progress = True
                self._send("AUTHENTICATE", "PLAIN")
            elif self._cap_negotiating:
                self._end_cap()
        elif sub == "NAK":
            if self._cap_negotiating:
                self._end_cap()
        elif sub == "NEW":
            new = {t.split("=", 1)[0] for t in (args[-1].split() if args else [])}
            wanted = set(self.wanted_caps & new) - self.caps
            if wanted:
                self._send("CAP", "REQ", " ".join(sorted(wanted)))
        elif sub == "DEL":
            for cap in args[-1].split() if args else []:
                self.caps.discard(cap)

    def _end_cap(self) -> None:
        if self._cap_negotiating and not self._sasl_in_progress:
            self._cap_negotiating = False
            self._send("CAP", "END")

    def _on_authenticate(self, line: IrcLine) -> None:
        if line.params and line.params[0] == "+":
            c = self.config
            payload = f"{c.sasl_username}\0{c.sasl_username}\0{c.sasl_password}".encode()
            encoded = base64.b64encode(payload).decode()
            for i in range(0, len(encoded), 400):
                self._send("AUTHENTICATE", encoded[i : i + 400])
            if len(encoded) % 400 == 0:
                self._send("AUTHENTICATE", "+")

    def _sasl_done(self, ok: bool, text: str) -> None:
        self._sasl_in_progress = False
        self._server_line("system", text if ok else f"SASL authentication failed: {text}")
        self._end_cap()

    # registration and server numerics

    def _on_numeric(self, line: IrcLine) -> None:
        code = line.command
        params = line.params
        text = params[-1] if params else ""
        if code in ("900", "903"):
            self._sasl_done(True, text)
        elif code in ("902", "904", "905", "906", "907"):
            self._sasl_done(False, text)
        elif code == "001":
            self._registered(line)
        elif code == "005":
            for key, value in protocol.parse_isupport(
                params[1:-1] if len(params) > 2 else []
            ).items():
                if key.startswith("-"):
                    self.isupport.pop(key[1:], None)  # the server withdrew it
                else:
                    self.isupport[key] = value
            if "PREFIX" in self.isupport:
                self.prefix_modes, self.prefix_symbols = protocol.parse_prefix(
                    self.isupport["PREFIX"] or ""
                )
            self.casemapping = (self.isupport.get("CASEMAPPING") or "rfc1459").lower()
        elif code in ("432", "433", "436", "437") and not self.registered:
            self._next_nick()
        elif code == "353":
            self._names_reply(params)
        elif code == "366":
            self._names_end(params)
        elif code == "332" and len(params) >= 3:
            self._topic(params[1], params[2], announce=False)
        elif code in ("333", "366", "329", "004", "003", "002"):
            pass
        elif code in ("375", "372", "376", "422"):
            self._server_line("notice", text, sender=line.source or "")
            if code in ("376", "422") and self._backfill is not None:
                self._backfill.welcomed.set()
        elif code in ("421", "461") and params[1:2] == ["CHATHISTORY"]:
            if self._backfill is not None:
                self._backfill.on_refused(code)
        else:
            if code[:1] in "45":
                # Also told to the page that sent the line it refuses, next to that line.
                self.send_error_for(code, params, line.tags)
            # Whois replies, errors, and the rest: readable in the server buffer.
            shown = " ".join(params[1:]) if len(params) > 1 else text
            self._server_line("system", shown, sender=line.source or "")

    def _next_nick(self) -> None:
        candidates = [*self.config.alt_nicks]
        if self._nick_attempt < len(candidates):
            self.nick = candidates[self._nick_attempt]
        else:
            suffix = self._nick_attempt - len(candidates) + 1
            self.nick = (self.config.nick[: 30 - len(str(suffix)) - 1] + "_" + str(suffix))[:30]
        self._nick_attempt += 1
        self._send("NICK", self.nick)

    def _registered(self, line: IrcLine) -> None:
        self.registered = True
        self._cap_negotiating = False
        if line.params:
            self.nick = line.params[0]
        self._set_state("connected", error="", next_retry=None)
        self._server_line("system", f"Connected to {self.config.host} as {self.nick}.")
        c = self.config
        if c.sasl_username and c.sasl_password and "sasl" not in self.caps:
            # No SASL on this server: identify to NickServ instead.
            self._send("PRIVMSG", "NickServ", f"IDENTIFY {c.sasl_username} {c.sasl_password}")
        if self.caps >= chathistory.NEEDED_CAPS:
            self._backfill = chathistory.Backfill(
                send=self._send,
                fold=self._fold,
                server_limit=self._chathistory_limit,
                say=lambda text: self._server_line("system", text),
                max_lines=settings.GATEWAY_CHATHISTORY_MAX_LINES,
            )
            # Submitted before the first JOIN is sent: see chathistory.py on why that matters.
            points = self.store.run_sync(
                chathistory.resume_points, c.account_id, c.server_id, account_id=c.account_id
            )
            self._backfill_task = asyncio.get_running_loop().create_task(self._backfill.run(points))
        self._autojoin_task = asyncio.get_running_loop().create_task(self._autojoin())

    # channel life

    def _on_join(self, line: IrcLine) -> None:
        if not line.params or not line.nick:
            return
        channel = line.params[0]
        folded = self._fold(channel)
        if self._is_me(line.nick):
            self._learn_user_host(line)
            if folded not in self.joined and len(self.joined) >= self.limits.channels:
                # A server can put us in channels we never asked for, without end.
                self._refuse(
                    "channels",
                    f"Left {channel}: {self.limits.channels} channels per server at most.",
                )
                self.part(channel)
                return
            self.joined[folded] = channel
            self.members[folded] = {}
            self.store.put(Joined(self.config.account_id, self.config.server_id, channel, True))
            if self._backfill is not None:
                self._backfill.joined(channel)
        members = self.members.get(folded)
        if members is None:
            return  # someone joining a channel we are not in: no server sends that
        folded_nick = self._fold(line.nick)
        added = folded_nick in members or not self._members_full(channel, len(members))
        if added:
            members[folded_nick] = ""
        self._store_line(
            buffer=channel, kind="join", sender=line.nick, text=line.user_host or "", tags=line.tags
        )
        if added and not self._is_me(line.nick):
            self.store.put(self._members(channel, "add", nick=line.nick, prefixes=""))

    def _on_part(self, line: IrcLine) -> None:
        if not line.params or not line.nick:
            return
        channel = line.params[0]
        self._leave(channel, line.nick)
        if self._is_me(line.nick):  # we left on purpose: do not rejoin after a restart
            self.store.put(Joined(self.config.account_id, self.config.server_id, channel, False))
            self.config.autojoin.pop(self._autojoin_name(channel) or channel, None)
        self._store_line(
            buffer=channel, kind="part", sender=line.nick,
            text=line.params[1] if len(line.params) > 1 else "", tags=line.tags,
        )  # fmt: skip

    def _on_kick(self, line: IrcLine) -> None:
        if len(line.params) < 2:
            return
        channel, victim = line.params[0], line.params[1]
        reason = line.params[2] if len(line.params) > 2 else ""
        self._leave(channel, victim)
        self._store_line(
            buffer=channel, kind="kick", sender=line.nick or "", tags=line.tags,
            text=f"{victim} {reason}".strip(),
        )  # fmt: skip
        autojoin_name = self._autojoin_name(channel)
        if self._is_me(victim) and autojoin_name is not None:
            self.join(channel, self.config.autojoin[autojoin_name])

    def _autojoin_name(self, channel: str) -> str | None:
        """The autojoin entry for `channel` however the server spells it (its CASEMAPPING)."""
        folded = self._fold(channel)
        return next((n for n in self.config.autojoin if self._fold(n) == folded), None)

    def _members_full(self, channel: str, count: int) -> bool:
        if count < self.limits.members_per_channel:
            return False
        self._refuse(
            "members",
            f"{channel} has more than {self.limits.members_per_channel} members; "
            "the member list stops there.",
        )
        return True

    def _leave(self, channel: str, nick: str) -> None:
        folded = self._fold(channel)
        if self._is_me(nick):
            self.joined.pop(folded, None)
            self.members.pop(folded, None)
            self.store.put(self._members(channel, "clear"))
        else:
            self.members.get(folded, {}).pop(self._fold(nick), None)
            self.store.put(self._members(channel, "remove", nick=nick))

    def _on_quit(self, line: IrcLine) -> None:
        if not line.nick:
            return
        folded_nick = self._fold(line.nick)
        reason = line.params[0] if line.params else ""
        for folded, members in self.members.items():
            if folded_nick in members:
                members.pop(folded_nick)
                channel = self.joined.get(folded, folded)
                self._store_line(
                    buffer=channel, kind="quit", sender=line.nick, text=reason, tags=line.tags
                )
                self.store.put(self._members(channel, "remove", nick=line.nick))

    def _on_nick(self, line: IrcLine) -> None:
        if not line.nick or not line.params:
            return
        old, new = line.nick, line.params[0]
        if self._is_me(old):
            self.nick = new
            self._server_line("system", f"You are now known as {new}.")
        folded_old, folded_new = self._fold(old), self._fold(new)
        for folded, members in self.members.items():
            if folded_old in members:
                members[folded_new] = members.pop(folded_old)
                channel = self.joined.get(folded, folded)
                self._store_line(buffer=channel, kind="nick", sender=old, text=new, tags=line.tags)
                self.store.put(self._members(channel, "rename", nick=old, new_nick=new))

    def _on_topic(self, line: IrcLine) -> None:
        if len(line.params) >= 2:
            self._topic(line.params[0], line.params[1], announce=True, sender=line.nick or "")

    def _topic(self, channel: str, topic: str, *, announce: bool, sender: str = "") -> None:
        self.store.put(Topic(self.config.account_id, self.config.server_id, channel, topic))
        if announce:
            self._store_line(buffer=channel, kind="topic", sender=sender, text=topic, tags={})

    def _on_mode(self, line: IrcLine) -> None:
        if len(line.params) < 2 or not self._is_channel(line.params[0]):
            return
        channel = line.params[0]
        self._store_line(
            buffer=channel, kind="mode", sender=line.nick or line.source or "",
            text=" ".join(line.params[1:]), tags=line.tags,
        )  # fmt: skip
        self._apply_prefix_modes(channel, line.params[1], line.params[2:])

    def _apply_prefix_modes(self, channel: str, modes: str, args: list[str]) -> None:
        members = self.members.get(self._fold(channel))
        if members is None:
            return
        chanmodes = (self.isupport.get("CHANMODES") or "beI,k,l,imnpst").split(",")
        takes_arg_always = set(chanmodes[0] + chanmodes[1]) if chanmodes else set()
        takes_arg_on_set = set(chanmodes[2]) if len(chanmodes) > 2 else set()
        adding = True
        arg_index = 0
        for char in modes:
            if char in "+-":
                adding = char == "+"
                continue
            if char in self.prefix_modes:
                if arg_index >= len(args):
                    return
                nick = args[arg_index]
                arg_index += 1
                folded = self._fold(nick)
                if folded not in members:
                    continue
                symbol = self.prefix_symbols[self.prefix_modes.index(char)]
                current = members[folded].replace(symbol, "")
                if adding:
                    current += symbol
                ordered = "".join(s for s in self.prefix_symbols if s in current)
                members[folded] = ordered
                self.store.put(self._members(channel, "update", nick=nick, prefixes=ordered))
            elif char in takes_arg_always or (adding and char in takes_arg_on_set):
                arg_index += 1

    def _names_reply(self, params: list[str]) -> None:
        if len(params) < 4:
            return
        channel = params[2]
        folded = self._fold(channel)
        if folded not in self.joined:
            return  # its end (366) would drop it anyway
        entries = self._names_pending.setdefault(folded, [])
        for entry in params[3].split():
            if self._members_full(channel, len(entries)):
                return
            prefixes, nick, _userhost = protocol.split_names_entry(entry, self.prefix_symbols)
            entries.append((prefixes, nick, False))

    def _names_end(self, params: list[str]) -> None:
        if len(params) < 2:
            return
        channel = params[1]
        folded = self._fold(channel)
        entries = self._names_pending.pop(folded, [])
        if folded in self.joined:
            self.members[folded] = {self._fold(n): p for p, n, _ in entries}
            self.store.put(self._members(channel, "replace", members=entries))

    def _on_away(self, line: IrcLine) -> None:
        if not line.nick:
            return
        away = bool(line.params)
        folded_nick = self._fold(line.nick)
        for folded, members in self.members.items():
            if folded_nick in members:
                channel = self.joined.get(folded, folded)
                self.store.put(self._members(channel, "update", nick=line.nick, away=away))

    # messages

    def _on_privmsg(self, line: IrcLine) -> None:
        self._message(line, notice=False)

    def _on_notice(self, line: IrcLine) -> None:
        self._message(line, notice=True)

    def _history_line(self, line: IrcLine) -> None:
        """A line of a chathistory batch: stored as said then; nothing else is done with it."""
        if line.command in ("PRIVMSG", "NOTICE"):
            self._message(line, notice=line.command == "NOTICE", history=True)

    def _message(self, line: IrcLine, *, notice: bool, history: bool = False) -> None:
        if len(line.params) < 2:
            return
        target, text = line.params[0], line.params[1]
        sender = line.nick or line.source or ""
        from_server = line.source is None or "!" not in (line.source or "")
        if from_server and not self._is_channel(target):
            self._server_line("notice", text, sender=sender, tags=line.tags)
            return
        own = self._is_me(sender)
        buffer = target if self._is_channel(target) else (target if own else sender)
        kind = "notice" if notice else "message"
        ctcp = protocol.parse_ctcp(text)
        if ctcp is not None:
            command, argument = ctcp
            if command == "ACTION":
                kind, text = "action", argument
            else:
                if not notice and not own and not history:
                    self._ctcp_reply(sender, command, argument)
                return
        if not self._is_channel(target) and not own and sender.lower() in ("nickserv", "chanserv"):
            buffer = sender
        tags = line.tags
        if history:
            # Its batch reference meant something only on this connection.
            tags = {k: v for k, v in tags.items() if k != "batch"} | {chathistory.HISTORY_TAG: "1"}
        elif own and self._agent_lines:
            agent = self._agent_echo(buffer, text)
            if agent:
                tags = {**tags, AGENT_TAG: agent}
        self._store_line(
            buffer=buffer, kind=kind, sender=sender, text=text, tags=tags, own=own,
            private=not own and not self._is_channel(target) and not notice,
        )  # fmt: skip

    def _ctcp_reply(self, nick: str, command: str, argument: str) -> None:
        now = time.monotonic()
        self._ctcp_times = [t for t in self._ctcp_times if now - t < 60]
        if len(self._ctcp_times) >= CTCP_REPLIES_PER_MINUTE:
            return  # CTCP floods must not get us killed for excess flood
        replies = {
            "VERSION": VERSION,
            "PING": argument,
            "TIME": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S %z"),
        }
        if command in replies:
            self._ctcp_times.append(now)
            self._send("NOTICE", nick, protocol.ctcp(command, replies[command]))

    # records

    def _members(self, channel: str, op: str, **kwargs: Any) -> Members:
        return Members(self.config.account_id, self.config.server_id, channel, op, **kwargs)

    def _store_line(
        self,
        *,
        buffer: str,
        kind: str,
        sender: str,
        text: str,
        tags: dict[str, str],
        own: bool = False,
        private: bool = False,
    ) -> None:
        if own:  # ours, sent or echoed back: a password to services is never kept
            text = hide_secrets(buffer, text)
        server_time = protocol.parse_server_time(tags.get("time", "")) if tags else None
        highlight = False
        if not own and kind in ("message", "action", "notice") and self._is_channel(buffer):
            pattern = self._highlight_pattern()
            highlight = bool(pattern and pattern.search(text))
        buffer_kind = "channel" if self._is_channel(buffer) else "query"
        self.store.put(
            Line(
                account_id=self.config.account_id,
                server_id=self.config.server_id,
                buffer=buffer,
                buffer_kind=buffer_kind,
                kind=kind,
                sender=sender,
                text=text,
                server_time=server_time or datetime.now(UTC),
                msgid=tags.get("msgid", "") if tags else "",
                tags=dict(tags) if tags else {},
                highlight=highlight,
                private=private,
            )
        )

    def _highlight_pattern(self) -> "re.Pattern[str] | None":
        """The pattern for our nick and the account's highlight words, built again only when
        either changed (the gateway hands out the same tuple until the settings change)."""
        words = self.highlight_words()
        if words is not self._highlight[0] or self.nick != self._highlight[1]:
            self._highlight = (words, self.nick, highlight_pattern([self.nick, *words]))
        return self._highlight[2]

    def _refuse(self, kind: str, text: str) -> None:
        """Say in the server buffer what was refused: once per kind per notice interval, since
        the cause (a flood) repeats."""
        now = time.monotonic()
        last = self._refused_at.get(kind)
        if last is not None and now - last < self.limits.notice_seconds:
            return
        self._refused_at[kind] = now
        logger.info("server %s: %s", self.config.server_id, text)
        self._server_line("system", text)

    def _server_line(
        self, kind: str, text: str, *, sender: str = "", tags: dict[str, str] | None = None
    ) -> None:
        tags = tags or {}
        server_time = protocol.parse_server_time(tags.get("time", "")) if tags else None
        self.store.put(
            Line(
                account_id=self.config.account_id,
                server_id=self.config.server_id,
                buffer=SERVER_BUFFER,
                buffer_kind="server",
                kind=kind,
                sender=sender,
                text=text,
                server_time=server_time or datetime.now(UTC),
                tags=dict(tags),
            )
        )

    def _set_state(
        self,
        state: Literal["connecting", "connected", "disconnected"],
        *,
        error: str,
        next_retry: datetime | None,
    ) -> None:
        self.state = state
        self.last_error = error
        self.report_state(
            ServerStateEvent(
                server_id=self.config.server_id,
                state=state,
                error=error,
                next_retry=next_retry,
                nick=self.nick,
            )
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
