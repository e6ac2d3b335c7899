"""What one IRC server may cost the gateway, and what the gateway may send it: bounds on member
lists, NAMES, capabilities, channels and the read rate per connection; each account's own share
of the store's queue; flood protection of what the web sends; reconnect backoff at its cap;
rejoin after a kick. Hostile servers are scripted (tests/test_gateway_auth.py); the rest runs
against InspIRCd."""

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.urls import reverse

from accounts.models import User
from channels_app.models import Channel, ChannelUser
from gateway import storage
from gateway.connection import WANTED_CAPS, next_backoff
from tenancy import switch
from tests.conftest import signed_in_client
from tests.gateway_support import messages, wait_until
from tests.ircd import IrcBot, IrcServer, free_port, unique_channel
from tests.test_gateway import add_server
from tests.test_gateway_auth import ScriptedServer

# The personas (tests/conftest.py) in real transactions: the gateway's threads must see them.
pytestmark = pytest.mark.usefixtures("clean_schemas")


class Hostile:
    """A scripted server that registers the gateway, then does what the test says: `after_001`
    lines at once, and more later with `send`."""

    def __init__(self, after_001: list[str]) -> None:
        self._send: Callable[[str], None] | None = None
        self.cap_ls: list[str] = []

        def script(line: str, send: Callable[[str], None]) -> None:
            if line == "CAP LS 302":
                for reply in self.cap_ls or [":s CAP * LS :server-time"]:
                    send(reply)
            elif line.startswith("CAP REQ"):
                send(f":s CAP * ACK :{line.split(':', 1)[-1]}")
            elif line.startswith("USER "):
                self._send = send
                for reply in [":s 001 alice_p :Welcome", *after_001]:
                    send(reply)

        self.server = ScriptedServer(script)
        self.port = self.server.port

    def send(self, lines: list[str]) -> None:
        def write() -> None:
            assert self._send is not None
            for line in lines:
                self._send(line)

        self.server.loop.call_soon_threadsafe(write)

    @property
    def received(self) -> list[str]:
        return self.server.received


@pytest.fixture
def hostile() -> Iterator[Callable[[list[str]], Hostile]]:
    started: list[Hostile] = []

    def start(after_001: list[str]) -> Hostile:
        started.append(Hostile(after_001))
        return started[-1]

    yield start
    for server in started:
        server.server.stop()


def server_lines(user: User) -> list[str]:
    return [m.text for m in messages(user, channel__kind=Channel.Kind.SERVER)]


def test_a_hostile_server_cannot_grow_members_names_caps_or_channels(
    alice: User, hostile: Callable[[list[str]], Hostile], run_gateway: Callable, settings: Any
) -> None:
    settings.LIMIT_CHANNELS_PER_SERVER = 10
    settings.GATEWAY_MAX_MEMBERS_PER_CHANNEL = 50
    settings.GATEWAY_MAX_CAPS = 30
    crowd = [f"n{i}" for i in range(200)]
    server = hostile(
        [
            # Forced into 30 channels we never asked for.
            *(f":alice_p!u@h JOIN #forced{i}" for i in range(30)),
            # NAMES of 200 in one of them, and 100 joining another.
            *(
                f":s 353 alice_p = #forced0 :{' '.join(crowd[i : i + 50])}"
                for i in range(0, 200, 50)
            ),
            ":s 366 alice_p #forced0 :End of /NAMES list.",
            *(f":{nick}!u@h JOIN #forced1" for nick in crowd[:100]),
            # NAMES and JOINs for channels we are not in.
            *(f":s 353 alice_p = #elsewhere{i} :{' '.join(crowd)}" for i in range(20)),
            *(f":{nick}!u@h JOIN #elsewhere{i}" for i, nick in enumerate(crowd)),
            ":carol!u@h PRIVMSG #forced0 :done",
        ],
    )
    # An endless CAP LS: 20 lines of 10 capabilities, "more follows" on each.
    server.cap_ls = [
        f":s CAP * LS * :{' '.join(f'x-cap-{i}-{j}' for j in range(10))}" for i in range(20)
    ] + [":s CAP * LS :server-time"]
    server_id = add_server(alice, server)  # type: ignore[arg-type]
    gateway = run_gateway()
    wait_until(lambda: messages(alice, text="done"), what="the line after the flood")
    conn = gateway.connection(alice, server_id)

    assert len(conn.joined) == 10
    parted = [line for line in server.received if line.startswith("PART ")]
    assert parted == [f"PART #forced{i}" for i in range(10, 30)]
    assert set(conn.members) == set(conn.joined)  # nothing kept for channels we are not in
    assert len(conn.members["#forced0"]) == 50 and len(conn.members["#forced1"]) == 50
    assert conn._names_pending == {}
    assert conn._offered <= WANTED_CAPS | {"sasl"} and "server-time" not in conn._offered
    assert "CAP END" in server.received  # negotiation ended at the limit, registration went on
    with switch(alice):
        assert Channel.objects.exclude(kind=Channel.Kind.SERVER).count() == 10
        assert ChannelUser.objects.filter(channel__name="#forced0").count() == 50
        # 49 joined; the 50th in memory is alice_p herself, whose row comes with NAMES.
        assert ChannelUser.objects.filter(channel__name="#forced1").count() == 49
    said = server_lines(alice)
    # Each refusal said once, however often it happened.
    assert sum("channels per server at most" in t for t in said) == 1
    assert sum("the member list stops there" in t for t in said) == 1
    assert sum("more than 30 capabilities" in t for t in said) == 1


def test_queries_from_many_nicks_stop_at_the_channel_limit(
    alice: User, hostile: Callable[[list[str]], Hostile], run_gateway: Callable, settings: Any
) -> None:
    settings.LIMIT_CHANNELS_PER_SERVER = 5
    spam = [f":bot{i}!u@h PRIVMSG alice_p :buy now" for i in range(20)]
    server = hostile([*spam, ":s NOTICE alice_p :done"])
    add_server(alice, server)  # type: ignore[arg-type]
    run_gateway()
    wait_until(lambda: any("lines were refused" in t for t in server_lines(alice)), 20)
    with switch(alice):
        assert Channel.objects.filter(kind=Channel.Kind.QUERY).count() == 5
    assert len(messages(alice, text="buy now")) == 5
    refusals = [t for t in server_lines(alice) if "lines were refused" in t]
    assert len(refusals) == 1 and "limit of 5 per server" in refusals[0]


def test_a_flooding_server_is_read_at_the_line_rate(
    alice: User, hostile: Callable[[list[str]], Hostile], run_gateway: Callable, settings: Any
) -> None:
    settings.GATEWAY_MAX_LINES_PER_SECOND = 100
    settings.GATEWAY_LINE_BURST = 100
    lines = 400
    flood = [f":carol!u@h PRIVMSG #c :flood {i}" for i in range(lines)]
    server = hostile([":alice_p!u@h JOIN #c", *flood])
    add_server(alice, server)  # type: ignore[arg-type]
    run_gateway()
    wait_until(lambda: len(messages(alice, text__startswith="flood")) == lines, 30)
    stored = messages(alice, text__startswith="flood")
    assert [m.text for m in stored] == [f"flood {i}" for i in range(lines)]
    # Stamped as they were read: 100 at once, the other 300 at 100 a second.
    span = (stored[-1].server_time - stored[0].server_time).total_seconds()
    assert span >= 2.4, span
    assert sum("lines a second; reading it slower" in t for t in server_lines(alice)) == 1


def test_one_accounts_flood_never_drops_another_accounts_lines(
    alice: User, bob: User, hostile: Callable[[list[str]], Hostile], inspircd: IrcServer,
    irc_bot: Callable[..., IrcBot], run_gateway: Callable, settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings.GATEWAY_MAX_PENDING_PER_ACCOUNT = 500
    monkeypatch.setattr(storage, "MAX_PENDING", 1000)  # all accounts together
    server = hostile([":alice_p!u@h JOIN #flood"])
    alice_server = add_server(alice, server)  # type: ignore[arg-type]
    channel = unique_channel()
    bob_server = add_server(bob, inspircd, channels=(channel,), nick="bob_p")
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    wait_until(lambda: "#flood" in (gateway.connection(alice, alice_server).joined or {}))
    carol.wait_for(r":bob_p!\S+ JOIN", timeout=15)
    assert gateway.gateway is not None
    store = gateway.gateway.store
    wait_until(lambda: store.backlog == 0, what="the store to be idle")

    # The database is slow: the writer is busy until `release` is set.
    release = threading.Event()

    async def hold_the_writer() -> None:
        store.run_sync(release.wait)

    gateway.call(hold_the_writer())
    try:
        server.send([f":carol!u@h PRIVMSG #flood :early {i}" for i in range(10)])
        wait_until(lambda: store.backlog >= 10, what="alice's first lines")
        for i in range(50):
            carol.say(channel, f"for bob {i}")
        wait_until(lambda: store.backlog >= 60, what="bob's lines waiting")
        server.send([f":carol!u@h PRIVMSG #flood :flood {i}" for i in range(3000)])
        # Every flood line read before the writer is released (released earlier, the lines
        # still arriving would be stored too): the newest waiting line of alice's is the last.
        wait_until(
            lambda: (
                getattr((store._pending.get(alice.account.pk) or [None])[-1], "text", "")
                == "flood 2999"
            ),
            what="the whole flood to be read",
        )
        assert store.dropped >= 2500
    finally:
        release.set()
    wait_until(lambda: len(messages(bob, text__startswith="for bob")) == 50, 20)
    assert [m.text for m in messages(bob, text__startswith="for bob")] == [
        f"for bob {i}" for i in range(50)
    ]
    assert not any("dropped" in t for t in server_lines(bob))
    wait_until(lambda: any("were dropped" in t for t in server_lines(alice)), 10)
    flood = messages(alice, text__startswith="flood")
    assert 0 < len(flood) <= 500 and flood[-1].text == "flood 2999"  # the newest are kept
    assert bob_server


def test_a_paste_reaches_the_server_paced_in_order(
    alice: User, inspircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable,
    settings: Any,
) -> None:  # fmt: skip
    settings.GATEWAY_SEND_BURST = 5
    settings.GATEWAY_SEND_INTERVAL_SECONDS = 0.25
    channel = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel,))
    carol = irc_bot(inspircd, "carol")
    carol.join(channel)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    wait_until(lambda: channel.lower() in gateway.connection(alice, server_id).joined)
    with switch(alice):
        buffer = Channel.objects.get(name=channel)
    client = signed_in_client(alice)
    paste = "\n".join(f"pasted line {i}" for i in range(20))
    assert client.post(reverse("chat:send", args=[buffer.pk]), {"text": paste}).status_code == 204
    arrived = [carol.wait_for(rf"PRIVMSG {channel} :pasted line {i}$", 20) for i in range(20)]
    assert [line.text for line in arrived] == [f"pasted line {i}" for i in range(20)]
    times = [line.received_at for line in arrived]
    # A token bucket of 5 refilled every 0.25 s lets at most 5 + T / 0.25 lines through in any
    # T seconds: so the 20 take at least 3.75 s (one line of slack for the receiver's jitter).
    for i, j in itertools.combinations(range(20), 2):
        assert j - i + 1 <= 5 + (times[j] - times[i]) / 0.25 + 1, (i, j, times)
    assert times[-1] - times[0] >= 3.75 * 0.9


def test_kicked_from_a_keyed_channel_spelled_in_another_case_rejoins_with_its_key(
    alice: User, ngircd: IrcServer, irc_bot: Callable[..., IrcBot], run_gateway: Callable
) -> None:
    spelled = "#Kick" + unique_channel("").upper()  # as the server has it
    carol = irc_bot(ngircd, "carol")
    carol.join(spelled)  # ngIRCd makes the first one in a channel its operator
    carol.send_raw(f"MODE {spelled} +k sesame")
    carol.wait_for(r"MODE \S+ \+k")
    with switch(alice):
        server_id = add_server(alice, ngircd)
        Channel.objects.create(server_id=server_id, name=spelled.lower(), key="sesame")
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    wait_until(lambda: spelled.lower() in gateway.connection(alice, server_id).joined)
    mark = carol.mark()
    carol.send_raw(f"KICK {spelled} alice_p :out")
    kick = carol.wait_for(r"KICK \S+ alice_p", since=mark)
    assert kick.params[0] == spelled  # the server's spelling, not the autojoin entry's
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=10, since=mark)  # back, with the key
    wait_until(lambda: spelled.lower() in gateway.connection(alice, server_id).joined)


def test_reconnect_backoff_stays_at_its_cap(
    alice: User, run_gateway: Callable, settings: Any
) -> None:
    settings.GATEWAY_RECONNECT_FIRST_SECONDS = 0.01
    settings.GATEWAY_RECONNECT_MAX_SECONDS = 0.05
    delay = 0.01
    for _ in range(40):
        wait, delay = next_backoff(delay)
        assert wait <= 0.05
    assert delay == 0.05

    class Nothing:
        port = free_port()  # nothing listens there: every connect is refused

    add_server(alice, Nothing())  # type: ignore[arg-type]
    run_gateway()
    # Uncapped, the 25th attempt would come 0.01 * 2**24 s (two days) after the first.
    wait_until(
        lambda: (
            sum(t.startswith("Disconnected: connection refused") for t in server_lines(alice)) >= 25
        ),
        15,
        "25 refused connects in a row",
    )
