"""Registration paths no test server here offers (InspIRCd has no SASL without services):
SASL PLAIN, the NickServ fallback, alternative nicks. A scripted server of our own plays the
server's side of the exchange and records what the gateway sent."""

import asyncio
import base64
import threading
from collections.abc import Callable, Iterator

import pytest

from accounts.models import User
from channels_app.models import Server
from channels_app.services.servers import save_server
from tenancy import switch
from tests.gateway_support import messages, wait_until

Script = Callable[[str, Callable[[str], None]], None]


class ScriptedServer:
    """Accepts connections; for every line received, `script(line, send)` decides the reply."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            def send(line: str) -> None:
                writer.write(line.encode() + b"\r\n")

            while data := await reader.readline():
                line = data.decode().rstrip("\r\n")
                self.received.append(line)
                self.script(line, send)
                await writer.drain()

        async def main() -> None:
            server = await asyncio.start_server(client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await server.serve_forever()

        def run() -> None:
            task = self.loop.create_task(main())
            self.loop.run_forever()
            task.cancel()
            self.loop.run_until_complete(asyncio.gather(task, return_exceptions=True))

        threading.Thread(target=run, daemon=True).start()
        ready.wait(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def alice(clean_schemas: None) -> User:
    from tests.factories import UserFactory

    return UserFactory(email="alice@example.org")


def test_sasl_plain(alice: User, scripted: Callable, run_gateway: Callable) -> None:
    state = {"nick": "alice_p"}

    def script(line: str, send: Callable[[str], None]) -> None:
        if line == "CAP LS 302":
            send(":s CAP * LS :sasl=PLAIN server-time message-tags")
        elif line.startswith("CAP REQ"):
            send(f":s CAP * ACK :{line.split(':', 1)[1] if ':' in line else line.split()[-1]}")
        elif line == "AUTHENTICATE PLAIN":
            send("AUTHENTICATE +")
        elif line.startswith("AUTHENTICATE "):
            decoded = base64.b64decode(line.split()[1])
            if decoded == b"alice\0alice\0s3cret-sasl":
                send(":s 903 alice_p :SASL authentication successful")
            else:
                send(":s 904 alice_p :SASL authentication failed")
        elif line == "CAP END":
            send(f":s 001 {state['nick']} :Welcome")

    server = scripted(script)
    with switch(alice):
        srv = Server(name="Scripted", host="127.0.0.1", port=server.port, tls=False,
                     nick="alice_p", sasl_username="alice",
                     sasl_password="s3cret-sasl")  # fmt: skip
        server_id = save_server(account_id=alice.account_id, server=srv, alt_nicks=[],
                                secrets={}).pk  # fmt: skip
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).state == "connected")
    conn = gateway.connection(alice, server_id)
    assert "sasl" in conn.caps
    assert "CAP END" in server.received
    assert server.received.index("AUTHENTICATE PLAIN") < server.received.index("CAP END")
    assert not any("NickServ" in line for line in server.received)
    wait_until(lambda: any("SASL authentication successful" in m.text for m in messages(alice)))


def test_nickserv_fallback_and_alternative_nicks(
    alice: User, scripted: Callable, run_gateway: Callable
) -> None:
    taken = {"alice_p", "alice_"}

    def script(line: str, send: Callable[[str], None]) -> None:
        if line == "CAP LS 302":
            send(":s CAP * LS :server-time")
        elif line.startswith("CAP REQ"):
            send(":s CAP * ACK :server-time")
        elif line.startswith("NICK "):
            nick = line.split()[1]
            if nick in taken:
                send(f":s 433 * {nick} :Nickname is already in use")
            else:
                send(f":s 001 {nick} :Welcome")

    server = scripted(script)
    with switch(alice):
        srv = Server(name="Scripted", host="127.0.0.1", port=server.port, tls=False,
                     nick="alice_p", sasl_username="alice",
                     sasl_password="nickserv-pw")  # fmt: skip
        server_id = save_server(account_id=alice.account_id, server=srv,
                                alt_nicks=["alice_", "alice__"], secrets={}).pk  # fmt: skip
    gateway = run_gateway()
    wait_until(lambda: gateway.connection(alice, server_id).state == "connected")
    assert gateway.connection(alice, server_id).nick == "alice__"
    nicks = [line.split()[1] for line in server.received if line.startswith("NICK ")]
    assert nicks == ["alice_p", "alice_", "alice__"]
    wait_until(lambda: "PRIVMSG NickServ :IDENTIFY alice nickserv-pw" in server.received)
