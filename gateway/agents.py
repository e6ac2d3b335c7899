"""An agent's own IRC connection (agents.Agent.presence "own"): the agent sits in its channels
under its own nick, registered as a Palaver agent.

It is an IrcConnection that keeps none of what it sees: the user's connection to the same server
already stores the channels' traffic and member lists, so nothing here reaches the Store (no
Message, ChannelUser or Channel row is ever written for it) and it publishes no server state.
It keeps the rest: PING, reconnection with backoff, the address policy, nick collisions at
registration, and channel keys. It marks itself a bot where the server has a bot mode (IRCv3's
ISUPPORT BOT), answers CTCP VERSION and PING, and hands private messages to its nick to the
gateway (`on_query`), which enqueues a run of the agent.
"""

import logging
import ssl
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from gateway.connection import IrcConnection, ServerConfig
from gateway.protocol import IrcLine, parse_ctcp
from gateway.storage import Record

logger = logging.getLogger(__name__)

# What an agent's connection asks for: tags (to see the bot tag), server-time, and the rest
# that shapes what the server sends. Not chathistory (it backfills nothing), not echo-message
# (its own lines are not stored).
AGENT_CAPS = frozenset({"message-tags", "server-time", "multi-prefix", "cap-notify"})
AGENT_USERNAME = "palaver"
# The message tags by which a server marks a line from a client in bot mode: IRCv3's, its
# draft, and InspIRCd 3's (its botmode module).
BOT_TAGS = ("bot", "draft/bot", "inspircd.org/bot")
# Private messages to one agent handed on per minute at most: each may cost a model call, and a
# flood of queries must not become a flood of tasks.
QUERIES_PER_MINUTE = 20
CTCP_ANSWERED = frozenset({"VERSION", "PING"})

# (the connection, the sender's nick, the text)
QueryHandler = Callable[["AgentConnection", str, str], None]


def agent_alt_nicks(nick: str) -> list[str]:
    return [f"{nick}_", f"{nick}__"]


def agent_server_config(
    user_config: ServerConfig, *, agent_name: str, nick: str, channels: dict[str, str]
) -> ServerConfig:
    """The agent's connection to the server of `user_config`: the same address and TLS
    settings, its own nick, and none of the user's credentials (server password, SASL): they
    identify the user."""
    return ServerConfig(
        account_id=user_config.account_id,
        server_id=user_config.server_id,
        name=user_config.name,
        host=user_config.host,
        port=user_config.port,
        tls=user_config.tls,
        tls_verify=user_config.tls_verify,
        nick=nick,
        alt_nicks=agent_alt_nicks(nick),
        username=AGENT_USERNAME,
        realname=f"Palaver agent {agent_name}"[:100],
        password="",
        sasl_username="",
        sasl_password="",
        autojoin=dict(channels),
    )


def agent_connection_key(config: ServerConfig) -> tuple[Any, ...]:
    """Fields whose change needs a new agent connection. Not the nick (a NICK renames it), nor
    the realname (the agent's display name: not worth a reconnect)."""
    return (config.host, config.port, config.tls, config.tls_verify, config.username)


class _Discard:
    """The agent connection's record sink: it keeps nothing."""

    def put(self, record: Record) -> None:
        pass

    def run_sync(self, fn: Any, *args: Any, account_id: uuid.UUID | None = None) -> Any:
        raise RuntimeError("an agent's connection does not touch the database")


_DISCARD = _Discard()


class AgentConnection(IrcConnection):
    wanted_caps = AGENT_CAPS

    def __init__(
        self,
        config: ServerConfig,
        *,
        agent_id: int,
        on_query: QueryHandler,
        sibling_nicks: Callable[[], Collection[str]],
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            config,
            _DISCARD,
            report_state=lambda event: None,  # the server's state is the user's connection's
            highlight_words=tuple,
            tls_context=tls_context,
        )
        self.agent_id = agent_id
        self.on_query = on_query
        # The nicks of the account's other agents: their lines never start a run (two agents
        # must not answer each other forever).
        self.sibling_nicks = sibling_nicks
        self._query_times: list[float] = []
        self._bot_mode_set = False

    def start(self) -> None:
        super().start()
        if self._task is not None:
            self._task.set_name(f"irc-{self.config.server_id}-agent-{self.agent_id}")

    def rename(self, nick: str) -> None:
        """The agent's nick changed: NICK now when registered, else the next session uses it."""
        self.config.nick = nick
        self.config.alt_nicks = agent_alt_nicks(nick)
        if self.registered and self._writer is not None and not self._is_me(nick):
            self._send("NICK", nick)

    # -- nothing of the traffic is kept --------------------------------------------------------

    def _store_line(self, **kwargs: Any) -> None:
        pass

    def _server_line(
        self, kind: str, text: str, *, sender: str = "", tags: dict[str, str] | None = None
    ) -> None:
        if kind == "system":
            logger.info("agent %s on server %s: %s", self.agent_id, self.config.server_id, text)

    # -- registration ----------------------------------------------------------------------------

    def _reset_session_state(self) -> None:
        super()._reset_session_state()
        self._bot_mode_set = False

    def _on_numeric(self, line: IrcLine) -> None:
        super()._on_numeric(line)
        if line.command == "005" and self.registered:
            self._set_bot_mode()
        elif line.command in ("432", "433", "436", "437") and self.registered:
            # A NICK after a rename was refused: the agent keeps the nick it has.
            logger.info("agent %s on server %s: nick %s refused, keeping %s", self.agent_id,
                        self.config.server_id, self.config.nick, self.nick)  # fmt: skip

    def _set_bot_mode(self) -> None:
        """IRCv3 bot mode: the server names its mode in ISUPPORT BOT=<letter>."""
        mode = self.isupport.get("BOT") or ""
        if self._bot_mode_set or len(mode) != 1 or not mode.isalpha():
            return
        self._bot_mode_set = True
        self._send("MODE", self.nick, f"+{mode}")

    # -- what is said to it ----------------------------------------------------------------------

    def _ctcp_reply(self, nick: str, command: str, argument: str) -> None:
        if command in CTCP_ANSWERED:
            super()._ctcp_reply(nick, command, argument)

    def _message(self, line: IrcLine, *, notice: bool, history: bool = False) -> None:
        if notice or history or len(line.params) < 2:
            return  # a NOTICE is never answered (RFC 1459), and channel lines are the user's
        target, text = line.params[0], line.params[1]
        sender = line.nick
        if not sender or "!" not in (line.source or ""):
            return  # from the server itself
        if self._is_channel(target) or not self._is_me(target) or self._is_me(sender):
            return
        if self._is_sibling(sender):
            return
        ctcp = parse_ctcp(text)
        if ctcp is not None:
            command, argument = ctcp
            if command != "ACTION":
                self._ctcp_reply(sender, command, argument)
            return
        if any(tag in line.tags for tag in BOT_TAGS):
            return  # another bot: two bots answering each other never stop
        text = text.strip()
        if not text or not self._query_allowed():
            return
        self.on_query(self, sender, text)

    def _is_sibling(self, nick: str) -> bool:
        folded = self._fold(nick)
        return any(self._fold(n) == folded for n in self.sibling_nicks())

    def _query_allowed(self) -> bool:
        now = time.monotonic()
        self._query_times = [t for t in self._query_times if now - t < 60]
        if len(self._query_times) >= QUERIES_PER_MINUTE:
            logger.info("agent %s on server %s: query dropped (more than %d a minute)",
                        self.agent_id, self.config.server_id, QUERIES_PER_MINUTE)  # fmt: skip
            return False
        self._query_times.append(now)
        return True
