"""The gateway process: every autoconnect server of the accounts in its shard, kept connected,
and beside each, the own connections of the account's agents that sit in its channels
(gateway/agents.py).

It follows changes made in the web through Redis commands (channels_app.events), and re-reads
everything every RESYNC_SECONDS in case a command was missed.
"""

import asyncio
import contextlib
import functools
import logging
import re
import ssl
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.db.models import Prefetch

from accounts.models import Account
from agents.models import Agent
from channels_app import events
from channels_app.models import Channel, Server
from channels_app.selectors.settings import link_previews
from gateway.agents import (
    AgentConnection,
    agent_connection_key,
    agent_server_config,
)
from gateway.connection import ConnectionLost, IrcConnection, ServerConfig
from gateway.journal import open_journal, replay
from gateway.protocol import ParseError, casefold
from gateway.storage import Store
from tenancy import switch

logger = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0
# What makes a line worth the link-preview listener (it finds the links itself).
_LINK_HINT = re.compile(r"https?://", re.IGNORECASE)
# The Celery task a private message to an agent's own nick starts (by name: the agents app
# defines it), and its arguments: agent id, server id, sender's nick, text.
QUERY_TASK = "agents.query_received"
# Agents' own connections held for one account at most (each is a connection to a network, and
# networks limit connections per address): the agents after it, by id, stay out of IRC.
MAX_AGENT_CONNECTIONS_PER_ACCOUNT = 50

T = TypeVar("T")


def in_shard(account_id: uuid.UUID, shard: int, shards: int) -> bool:
    """A server belongs to exactly one shard: the one its account's UUID falls in."""
    return account_id.int % shards == shard


def close_connection() -> None:
    """Close this thread's database connection (run on the thread that holds it)."""
    from django.db import connection

    connection.close()


def load_accounts(shard: int, shards: int) -> list[Account]:
    # An account pending deletion is held by no gateway (tenancy.services).
    accounts = Account.objects.filter(deletion_requested_at__isnull=True)
    return [a for a in accounts if in_shard(a.pk, shard, shards)]


def load_account(account_id: uuid.UUID) -> Account | None:
    return Account.objects.filter(pk=account_id, deletion_requested_at__isnull=True).first()


def server_exists(account_id: uuid.UUID, server_id: int) -> bool:
    account = load_account(account_id)
    if account is None:
        return False
    with switch(account):
        return Server.objects.filter(pk=server_id).exists()


def load_speaker(account_id: uuid.UUID, server_id: int, agent_id: int) -> tuple[str, str] | None:
    """(nick, presence) of an enabled agent of the account, when the server is the account's
    too; None otherwise (another account's ids, or rows deleted since)."""
    account = load_account(account_id)
    if account is None:
        return None
    with switch(account):
        if not Server.objects.filter(pk=server_id).exists():
            return None
        found = Agent.objects.filter(pk=agent_id, enabled=True).values_list("nick", "presence")
        return next(iter(found), None)


@dataclass
class AccountConfig:
    """What the gateway holds for one account, read in its schema."""

    servers: list[ServerConfig]
    # (server id, agent id) -> the agent's own connection to that server
    agents: dict[tuple[int, int], ServerConfig] = field(default_factory=dict)
    # agent id -> nick, for every agent of the account (enabled or not)
    agent_nicks: dict[int, str] = field(default_factory=dict)
    # The enabled agents' nicks, folded: a stored line naming none of them calls no agent.
    trigger_nicks: tuple[str, ...] = ()


def load_account_config(account: Account) -> AccountConfig:
    with switch(account):
        servers = load_server_configs(account)
        config = AccountConfig(servers=servers)
        by_server = {c.server_id: c for c in servers}
        channels = Prefetch("channels", queryset=Channel.objects.filter(kind=Channel.Kind.CHANNEL))
        for agent in Agent.objects.prefetch_related(channels).order_by("pk"):
            config.agent_nicks[agent.pk] = agent.nick
            if agent.enabled:
                config.trigger_nicks += (casefold(agent.nick),)
            if not agent.enabled or agent.presence != Agent.Presence.OWN_CONNECTION:
                continue
            wanted: dict[int, dict[str, str]] = {}
            for channel in agent.channels.all():
                if channel.server_id in by_server:  # autoconnect servers only
                    wanted.setdefault(channel.server_id, {})[channel.name] = channel.key
            for server_id, autojoin in wanted.items():
                if len(config.agents) >= MAX_AGENT_CONNECTIONS_PER_ACCOUNT:
                    logger.warning(
                        "account %s: agent %s not connected to server %s (%d agent connections "
                        "at most)", account.pk, agent.pk, server_id,
                        MAX_AGENT_CONNECTIONS_PER_ACCOUNT,
                    )  # fmt: skip
                    continue
                config.agents[(server_id, agent.pk)] = agent_server_config(
                    by_server[server_id], agent_name=agent.name, nick=agent.nick, channels=autojoin
                )
        return config


def enqueue_query(schema_name: str, args: list[Any]) -> None:
    """Start the agent's run for a private message (on a thread: the broker may be slow)."""
    from config.celery import app

    try:
        app.send_task(QUERY_TASK, args=args, headers={"_schema_name": schema_name})
    except Exception:
        logger.exception("could not enqueue %s", QUERY_TASK)


def load_server_configs(account: Account) -> list[ServerConfig]:
    """Read in the account's schema: the servers to hold and the channels to join."""
    with switch(account):
        configs = []
        for server in Server.objects.filter(autoconnect=True).order_by("pk"):
            autojoin = {
                channel.name: channel.key
                for channel in server.channels.filter(kind=Channel.Kind.CHANNEL, autojoin=True)
            }
            configs.append(
                ServerConfig(
                    account_id=account.pk,
                    server_id=server.pk,
                    name=server.name,
                    host=server.host,
                    port=server.port,
                    tls=server.tls,
                    tls_verify=server.tls_verify,
                    nick=server.nick,
                    alt_nicks=list(server.alt_nicks),
                    username=server.username,
                    realname=server.realname,
                    password=server.password,
                    sasl_username=server.sasl_username,
                    sasl_password=server.sasl_password,
                    autojoin=autojoin,
                )
            )
        return configs


class Gateway:
    def __init__(
        self,
        *,
        shard: int = 0,
        shards: int = 1,
        tls_context: ssl.SSLContext | None = None,
        store: Store | None = None,
    ) -> None:
        self.shard, self.shards = shard, shards
        self.tls_context = tls_context
        self.store = store or Store(journal=open_journal(shard=shard, shards=shards))
        self.store.hook_filter = self.hook_wanted
        # account -> its enabled agents' nicks, folded (AccountConfig.trigger_nicks).
        self._trigger_nicks: dict[uuid.UUID, tuple[str, ...]] = {}
        self.accounts: dict[uuid.UUID, Account] = {}
        self._highlight_words: dict[uuid.UUID, tuple[str, ...]] = {}
        # Configuration is read on a thread (and database connection) of its own: on the
        # store's writer thread every read waited behind a batch, and held the next one up.
        self._config_db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-config")
        self.connections: dict[tuple[uuid.UUID, int], IrcConnection] = {}
        # (account, server, agent) -> the agent's own connection to that server
        self.agent_connections: dict[tuple[uuid.UUID, int, int], AgentConnection] = {}
        self._agent_nicks: dict[uuid.UUID, dict[int, str]] = {}
        # Celery tasks are sent from here, never from the event loop (a slow broker blocks).
        self._task_sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-tasks")
        self._redis: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._account_locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._stopping = False
        self.ready = asyncio.Event()
        self._subscribed = asyncio.Event()
        # Server states, and send errors for the pages (events.SendErrorEvent), to publish.
        self._states: asyncio.Queue[
            tuple[uuid.UUID, events.ServerStateEvent | events.SendErrorEvent]
        ] = asyncio.Queue()

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        import redis.asyncio as aioredis
        from django.conf import settings

        self._redis = aioredis.Redis.from_url(settings.REDIS_URL)
        self._tasks = [
            asyncio.create_task(self.store.run(), name="store"),
            asyncio.create_task(self._listen(), name="commands"),
            asyncio.create_task(self._publish_states(), name="states"),
        ]
        # Subscribed before the first read of the configuration, so no change slips between.
        await asyncio.wait_for(self._subscribed.wait(), 30)
        if self.store.journal is not None:
            # What a killed predecessor read but did not store goes first: before any
            # connection adds newer lines to the same channels.
            replayed = await replay(self.store, self.store.journal)
            if replayed:
                logger.info("replayed %d records from the journal", replayed)
        await self.sync_all()
        self._tasks.append(asyncio.create_task(self._resync_forever(), name="resync"))
        self.ready.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop reading and QUIT every server, write what is held (the journal keeps what the
        database did not take in time), then close the journal and the writer."""
        self._stopping = True
        # QUIT before the flush, not after: it also ends the reading, and a server left
        # unread while the database is slow would drop us for a full send queue rather than
        # show our quit message.
        await asyncio.gather(
            *(c.stop("Palaver gateway restarting") for c in self.connections.values()),
            *(c.stop("Palaver gateway restarting") for c in self.agent_connections.values()),
            return_exceptions=True,
        )
        self.connections.clear()
        self.agent_connections.clear()
        await self.store.drain()
        # The final "disconnected" states reach Redis before its client closes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._states.join(), 10)
        for task in self._tasks:
            if task.get_name() != "commands":
                task.cancel()
        await asyncio.wait(self._tasks, timeout=5)
        await self.store.close()
        if self._redis is not None:
            await self._redis.aclose()
        await self._read_config(close_connection)
        self._config_db.shutdown(wait=True)
        self._task_sender.shutdown(wait=True)

    async def _read_config(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._config_db, fn, *args)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                await self.sync_all()
            except Exception:
                logger.exception("periodic resync failed")

    # -- following the configuration ---------------------------------------------------------

    async def sync_all(self) -> None:
        accounts = await self._read_config(load_accounts, self.shard, self.shards)
        current = {a.pk for a in accounts}
        held = {key[0] for key in self.connections} | {key[0] for key in self.agent_connections}
        for account_id in held - current:
            await self._sync_account(account_id, None)
        for account in accounts:
            await self._sync_account(account.pk, account)
        # A full pass entered every account's schema; PostgreSQL keeps catalog caches for each
        # in the backend until the connection ends.
        await self._read_config(close_connection)

    async def sync_account(self, account_id: uuid.UUID) -> None:
        if not in_shard(account_id, self.shard, self.shards):
            return
        account = await self._read_config(load_account, account_id)
        await self._sync_account(account_id, account)

    async def _sync_account(self, account_id: uuid.UUID, account: Account | None) -> None:
        lock = self._account_locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            loaded = AccountConfig(servers=[])
            # Channels may have been deleted in the web: read their ids afresh.
            await self.store.run_sync(self.store.forget_channels, account_id, account_id=account_id)
            if account is not None:
                self._set_account(account)
                self.store.add_account(account)
                loaded = await self._read_config(load_account_config, account)
            else:
                # Gone or pending deletion: the states of its closing connections are not kept
                # in Redis (_publish_states), or they would outlive the account's purge.
                self.accounts.pop(account_id, None)
            wanted = {c.server_id: c for c in loaded.servers}
            for (acc, server_id), conn in list(self.connections.items()):
                if acc != account_id:
                    continue
                config = wanted.get(server_id)
                if config is None or config.connection_key() != conn.config.connection_key():
                    await conn.stop()
                    del self.connections[(acc, server_id)]
                else:
                    await conn.apply_channels(config.autojoin)
                    conn.config.name = config.name
            for server_id, config in wanted.items():
                if (account_id, server_id) not in self.connections:
                    self._connect(account_id, config)
            await self._sync_agents(account_id, loaded)
            if account is None:
                self._agent_nicks.pop(account_id, None)
                self._trigger_nicks.pop(account_id, None)
                self.accounts.pop(account_id, None)
                self._highlight_words.pop(account_id, None)
                self.store.forget_channels(account_id)

    async def _sync_agents(self, account_id: uuid.UUID, loaded: AccountConfig) -> None:
        """Agents' own connections: a disabled or deleted agent (or one no longer in a channel
        of that server) QUITs, a renamed one changes its NICK, changed channels are joined or
        parted, a new one connects."""
        if loaded.agent_nicks:
            self._agent_nicks[account_id] = loaded.agent_nicks
        else:
            self._agent_nicks.pop(account_id, None)
        if loaded.trigger_nicks:
            self._trigger_nicks[account_id] = loaded.trigger_nicks
        else:
            self._trigger_nicks.pop(account_id, None)
        for key, conn in list(self.agent_connections.items()):
            if key[0] != account_id:
                continue
            config = loaded.agents.get((key[1], key[2]))
            if config is None or agent_connection_key(config) != agent_connection_key(conn.config):
                await conn.stop("Palaver agent leaving")
                del self.agent_connections[key]
                continue
            if config.nick != conn.config.nick:
                conn.rename(config.nick)
            await conn.apply_channels(config.autojoin)
            conn.config.name, conn.config.realname = config.name, config.realname
        for (server_id, agent_id), config in loaded.agents.items():
            if (account_id, server_id, agent_id) not in self.agent_connections:
                self._connect_agent(account_id, agent_id, config)

    def _connect_agent(self, account_id: uuid.UUID, agent_id: int, config: ServerConfig) -> None:
        key = (account_id, config.server_id, agent_id)

        def siblings() -> list[str]:
            # The account's other agents, by their configured nicks and by the ones they have
            # now (a collision may have given them an alternative).
            nicks = [n for a, n in self._agent_nicks.get(account_id, {}).items() if a != agent_id]
            nicks += [c.nick for k, c in self.agent_connections.items()
                      if k[0] == account_id and k[2] != agent_id]  # fmt: skip
            return nicks

        conn = AgentConnection(
            config,
            agent_id=agent_id,
            on_query=self._agent_query,
            sibling_nicks=siblings,
            tls_context=self.tls_context,
        )
        self.agent_connections[key] = conn
        conn.start()

    def _agent_query(self, conn: AgentConnection, sender: str, text: str) -> None:
        account = self.accounts.get(conn.config.account_id)
        if account is None:
            return
        args = [conn.agent_id, conn.config.server_id, sender, text]
        asyncio.get_running_loop().run_in_executor(
            self._task_sender, enqueue_query, account.schema_name, args
        )

    def hook_wanted(self, account_id: uuid.UUID, batch: list[events.LiveEvent]) -> bool:
        """Whether a committed batch of the account's lines goes to the message hook's task
        (the store asks, on its announcing thread). Agents' triggers act only on a line that
        names an enabled agent of the account (`nick: ...`, or the nick anywhere), link
        previews only on a line with a link, so any other batch costs the workers nothing. A
        listener that needs every line would widen this."""
        if self._previews_wanted(account_id, batch):
            return True
        nicks = self._trigger_nicks.get(account_id)
        if not nicks:
            return False
        texts = (casefold(e.text) for e in batch if isinstance(e, events.MessageEvent))
        return any(nick in text for text in texts for nick in nicks)

    def _previews_wanted(self, account_id: uuid.UUID, batch: list[events.LiveEvent]) -> bool:
        """A batch with a web link, of an account that has link previews on, goes to the hook
        too (media.listeners.preview_links reads its links; the bound on fetches is there)."""
        account = self.accounts.get(account_id)
        if account is None or not link_previews(account):
            return False
        return any(isinstance(e, events.MessageEvent) and _LINK_HINT.search(e.text) for e in batch)

    def _set_account(self, account: Account) -> None:
        self.accounts[account.pk] = account
        words = (account.settings or {}).get("highlight_words", [])
        # Read once per settings change, not per line; the same tuple until the next change
        # lets each connection keep its compiled pattern.
        self._highlight_words[account.pk] = (
            tuple(str(w) for w in words) if isinstance(words, list) else ()
        )

    def _connect(self, account_id: uuid.UUID, config: ServerConfig) -> None:
        conn = IrcConnection(
            config,
            self.store,
            report_state=lambda event: self._report_state(account_id, event),
            highlight_words=lambda: self._highlight_words.get(account_id, ()),
            tls_context=self.tls_context,
        )
        conn.on_send_error = functools.partial(self._send_error, account_id, config.server_id)
        self.connections[(account_id, config.server_id)] = conn
        conn.start()

    def _send_error(self, account_id: uuid.UUID, server_id: int, cid: str, reason: str) -> None:
        """Tell the page that sent `cid` why it was not sent (through the states' publisher,
        which keeps the order and one Redis connection)."""
        if cid:
            event = events.SendErrorEvent(server_id=server_id, cid=cid, reason=reason)
            self._states.put_nowait((account_id, event))

    def _report_state(
        self, account_id: uuid.UUID, event: events.ServerStateEvent | events.SendErrorEvent
    ) -> None:
        # One publisher drains a queue: a task per state change overflowed Redis' connection
        # pool when thousands of connections changed state at once, and lost the events.
        self._states.put_nowait((account_id, event))

    async def _publish_states(self) -> None:
        while True:
            account_id, event = await self._states.get()
            encoded = events.encode_event(event)
            try:
                pipe = self._redis.pipeline(transaction=False)
                if isinstance(event, events.ServerStateEvent) and account_id in self.accounts:
                    key = events.server_state_key(account_id, event.server_id)
                    pipe.set(key, encoded, ex=86400)
                    if event.error:
                        last_error = events.encode(
                            {"error": event.error, "at": datetime.now(UTC).isoformat()}
                        )
                        pipe.set(
                            events.server_error_key(account_id, event.server_id),
                            last_error,
                            ex=7 * 86400,
                        )
                pipe.publish(events.events_channel(account_id), encoded)
                await pipe.execute()
            except Exception:
                logger.warning("could not publish server state", exc_info=True)
            finally:
                self._states.task_done()

    # -- commands from the web ---------------------------------------------------------------

    async def _listen(self) -> None:
        # Polled with a timeout rather than `async for ... listen()`: cancelling redis' pubsub
        # reader mid-read wedges it, so the loop ends by itself when the gateway stops.
        while not self._stopping:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(events.GATEWAY_COMMANDS)
                self._subscribed.set()
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        await self.handle_message(message["data"])
                    except Exception:
                        logger.exception("gateway command failed")
            except Exception:
                if self._stopping:
                    break
                logger.warning("command channel lost; resubscribing", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def handle_message(self, data: bytes) -> None:
        """One message from the command channel: acted on only when the web sealed it."""
        command = events.open_command(data)
        if command is None:
            # Its content is not logged: it may be anything, a typed password included.
            logger.warning("ignored a gateway command not sealed by this deployment (%d bytes)",
                           len(data))  # fmt: skip
            return
        await self.handle_command(command)

    async def handle_command(self, payload: Mapping[str, Any]) -> None:
        """An opened command (events.open_command): acted on once it parses as one."""
        command = events.parse_command(payload)
        if command is None:
            return
        account_id = uuid.UUID(command.account_id)
        if not in_shard(account_id, self.shard, self.shards):
            return
        if isinstance(command, events.ServersChanged):
            await self.sync_account(account_id)
        elif isinstance(command, events.SettingsChanged):
            account = await self._read_config(load_account, account_id)
            if account is not None:
                self._set_account(account)
        elif isinstance(command, events.AgentSay):
            await self._agent_say(account_id, command)
        else:
            server_id = command.server_id
            conn = self.connections.get((account_id, server_id))
            if conn is None:
                if await self._read_config(server_exists, account_id, server_id):
                    self._send_error(
                        account_id, server_id, command.cid,
                        "Not sent: this server is not connected (is it enabled?).",
                    )  # fmt: skip
                return
            # What we hold in memory may be stale (a deletion whose notice was lost): the row
            # must exist in the account's schema now.
            if not await self._read_config(server_exists, account_id, server_id):
                logger.warning("ignored %s for server %s: not in account %s", command.op,
                               server_id, account_id)  # fmt: skip
                return
            try:
                if isinstance(command, events.SendCommand):
                    conn.say(command.target, command.text, kind=command.kind, cid=command.cid)
                else:
                    conn.send_raw(command.line, cid=command.cid)
            except (ConnectionLost, ParseError, ValueError, KeyError) as exc:
                conn._server_line("system", f"Not sent: {exc}")
                self._send_error(account_id, server_id, command.cid, f"Not sent: {exc}")

    async def _agent_say(self, account_id: uuid.UUID, command: events.AgentSay) -> None:
        """An agent's line: through its own connection, or through the user's (marked as the
        agent's) when that is its presence. A refusal is said in the server buffer."""
        server_id, agent_id = command.server_id, command.agent_id
        # Ids from the command are checked in the account's schema now: the server and the
        # agent must both be this account's (and the agent still enabled).
        speaker = await self._read_config(load_speaker, account_id, server_id, agent_id)
        if speaker is None:
            logger.warning("ignored agent_say of agent %s on server %s: not in account %s",
                           agent_id, server_id, account_id)  # fmt: skip
            return
        nick, presence = speaker
        user_conn = self.connections.get((account_id, server_id))
        try:
            if presence == Agent.Presence.USER_CONNECTION:
                if user_conn is None:
                    raise ConnectionLost("the server is not connected")
                user_conn.say(command.target, command.text, kind=command.kind, agent=nick)
                return
            conn = self.agent_connections.get((account_id, server_id, agent_id))
            if conn is None or not conn.registered:
                raise ConnectionLost("its connection to this server is not up yet")
            conn.say(command.target, command.text, kind=command.kind)
        except (ConnectionLost, ParseError, ValueError, KeyError) as exc:
            if user_conn is not None:
                user_conn._server_line("system", f"Not sent by agent {nick}: {exc}")
            else:  # no server buffer to say it in: the server is not connected
                logger.info("agent %s on server %s: not sent: %s", agent_id, server_id, exc)
