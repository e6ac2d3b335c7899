"""The gateway process: every autoconnect server of the accounts in its shard, kept connected.

It follows changes made in the web through Redis commands (channels_app.events), and re-reads
everything every RESYNC_SECONDS in case a command was missed.
"""

import asyncio
import contextlib
import logging
import ssl
import uuid
from typing import Any

from accounts.models import Account
from channels_app import events
from channels_app.models import Channel, Server
from gateway.connection import ConnectionLost, IrcConnection, ServerConfig
from gateway.journal import open_journal, replay
from gateway.protocol import ParseError
from gateway.storage import Store
from tenancy import switch

logger = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0


def in_shard(account_id: uuid.UUID, shard: int, shards: int) -> bool:
    """A server belongs to exactly one shard: the one its account's UUID falls in."""
    return account_id.int % shards == shard


def load_accounts(shard: int, shards: int) -> list[Account]:
    return [a for a in Account.objects.all() if in_shard(a.pk, shard, shards)]


def load_account(account_id: uuid.UUID) -> Account | None:
    return Account.objects.filter(pk=account_id).first()


def server_exists(account_id: uuid.UUID, server_id: int) -> bool:
    account = load_account(account_id)
    if account is None:
        return False
    with switch(account):
        return Server.objects.filter(pk=server_id).exists()


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
        self.accounts: dict[uuid.UUID, Account] = {}
        self.connections: dict[tuple[uuid.UUID, int], IrcConnection] = {}
        self._redis: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._account_locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._stopping = False
        self.ready = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._states: asyncio.Queue[tuple[uuid.UUID, dict[str, Any]]] = asyncio.Queue()

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
            return_exceptions=True,
        )
        self.connections.clear()
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

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                await self.sync_all()
            except Exception:
                logger.exception("periodic resync failed")

    # -- following the configuration ---------------------------------------------------------

    async def sync_all(self) -> None:
        accounts = await self.store.run_sync(load_accounts, self.shard, self.shards)
        current = {a.pk for a in accounts}
        for account_id in {key[0] for key in self.connections} - current:
            await self._sync_account(account_id, None)
        for account in accounts:
            await self._sync_account(account.pk, account)

    async def sync_account(self, account_id: uuid.UUID) -> None:
        if not in_shard(account_id, self.shard, self.shards):
            return
        account = await self.store.run_sync(load_account, account_id)
        await self._sync_account(account_id, account)

    async def _sync_account(self, account_id: uuid.UUID, account: Account | None) -> None:
        lock = self._account_locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            configs: list[ServerConfig] = []
            # Channels may have been deleted in the web: read their ids afresh.
            await self.store.run_sync(self.store.forget_channels, account_id)
            if account is not None:
                self.accounts[account_id] = account
                self.store.add_account(account)
                configs = await self.store.run_sync(load_server_configs, account)
            wanted = {c.server_id: c for c in configs}
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
            if account is None:
                self.accounts.pop(account_id, None)
                self.store.forget_channels(account_id)

    def _connect(self, account_id: uuid.UUID, config: ServerConfig) -> None:
        def highlight_words() -> list[str]:
            account = self.accounts.get(account_id)
            words = (account.settings or {}).get("highlight_words", []) if account else []
            return [str(w) for w in words] if isinstance(words, list) else []

        conn = IrcConnection(
            config,
            self.store,
            report_state=lambda payload: self._report_state(account_id, payload),
            highlight_words=highlight_words,
            tls_context=self.tls_context,
        )
        self.connections[(account_id, config.server_id)] = conn
        conn.start()

    def _report_state(self, account_id: uuid.UUID, payload: dict[str, Any]) -> None:
        # One publisher drains a queue: a task per state change overflowed Redis' connection
        # pool when thousands of connections changed state at once, and lost the events.
        self._states.put_nowait((account_id, payload))

    async def _publish_states(self) -> None:
        while True:
            account_id, payload = await self._states.get()
            encoded = events.encode(payload)
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.set(
                    events.server_state_key(account_id, payload["server_id"]), encoded, ex=86400
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

    async def handle_command(self, command: dict[str, Any]) -> None:
        try:
            account_id = uuid.UUID(str(command.get("account_id")))
        except ValueError:
            return
        if not in_shard(account_id, self.shard, self.shards):
            return
        op = command.get("op")
        if op == "servers_changed":
            await self.sync_account(account_id)
        elif op == "settings_changed":
            account = await self.store.run_sync(load_account, account_id)
            if account is not None:
                self.accounts[account_id] = account
        elif op in ("send", "raw"):
            try:
                server_id = int(command.get("server_id") or 0)
            except (TypeError, ValueError):
                return
            conn = self.connections.get((account_id, server_id))
            if conn is None:
                return
            # What we hold in memory may be stale (a deletion whose notice was lost): the row
            # must exist in the account's schema now.
            if not await self.store.run_sync(server_exists, account_id, server_id):
                logger.warning("ignored %s for server %s: not in account %s", op, server_id,
                               account_id)  # fmt: skip
                return
            try:
                if op == "send":
                    conn.say(
                        str(command["target"]),
                        str(command["text"]),
                        kind=str(command.get("kind") or "message"),
                    )
                else:
                    conn.send_raw(str(command["line"]))
            except (ConnectionLost, ParseError, ValueError, KeyError) as exc:
                conn._server_line("system", f"Not sent: {exc}")
