"""The tools agents call (llms/tools.py): each one's work, its refusals, and that it reaches
nothing of another account. fetch_url runs against a real HTTP server on loopback (the test
settings allow 127.0.0.0/8 for the IRC servers; tests that need the default policy clear it)."""

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from accounts.models import User
from agents.models import Agent, Task
from channels_app import events
from channels_app.models import Channel, ChannelUser, Message, Server
from llms.fetch import FetchError, html_text
from llms.fetch import fetch as fetch_page
from llms.models import AccountTool
from llms.tools import TOOLS_BY_SLUG, ToolContext, ToolResult, execute_tool
from tenancy import switch
from tests.helpers import populate, say
from tests.ircd import make_certificate
from tests.sites import SiteHandler, base_url, serve


def call(
    user: User,
    agent: Agent,
    slug: str,
    arguments: Any,
    *,
    task: Task | None = None,
    **settings: Any,
) -> ToolResult:
    """Call a tool as the runner does: inside the account, with the account's settings."""
    spec = TOOLS_BY_SLUG[slug]
    context = ToolContext(
        account=user.account,
        agent=agent,
        task=task,
        settings={**spec.default_settings(), **settings},
    )
    with switch(user):
        return execute_tool(context=context, spec=spec, arguments=arguments)


@pytest.fixture
def alice_world(alice: User) -> dict[str, Any]:
    """Alice: #palaver on Libera (her agent sits there) and #secret (it does not)."""
    objs = populate(alice)
    with switch(alice):
        secret = Channel.objects.create(server=objs["server"], name="#secret")
        say(objs["channel"], "good morning", sender="dave", minutes=1)
        say(objs["channel"], "", sender="erin", minutes=2, kind=Message.Kind.JOIN)
        say(objs["channel"], "waves", sender="erin", minutes=3, kind=Message.Kind.ACTION)
        say(objs["channel"], "the \x02launch\x02 is at noon", sender="dave", minutes=4)
        say(secret, "the vault code is swordfish", sender="mallory", minutes=5)
        objs["channel"].topic = "Palaver development"
        objs["channel"].save()
        ChannelUser.objects.create(channel=objs["channel"], nick="dave", prefixes="@")
        ChannelUser.objects.create(channel=objs["channel"], nick="helperbot")
        ChannelUser.objects.create(channel=objs["channel"], nick="erin", prefixes="+", away=True)
    objs["secret"] = secret
    return objs


@pytest.fixture
def bob_world(bob: User) -> dict[str, Any]:
    """Bob: the same server name, the same channel name, the same agent nick as Alice."""
    objs = populate(bob)
    with switch(bob):
        say(objs["channel"], "bob's own line", sender="bob", minutes=1)
        ChannelUser.objects.create(channel=objs["channel"], nick="bob")
    return objs


# --- current_time ------------------------------------------------------------------------------


def test_current_time_is_in_the_account_time_zone(alice: User, alice_world: dict[str, Any]) -> None:
    assert "(UTC, UTC+0000)" in call(alice, alice_world["agent"], "current_time", "{}").content
    AccountTool.objects.create(
        account=alice.account,
        tool_id=_tool_id("current_time"),
        enabled=True,
        settings={"timezone": "Asia/Tokyo"},
    )
    result = call(alice, alice_world["agent"], "current_time", {})
    assert result.ok and "(Asia/Tokyo, UTC+0900)" in result.content


def _tool_id(slug: str) -> Any:
    from llms.models import Tool

    return Tool.objects.get(slug=slug).pk


# --- channel_history ---------------------------------------------------------------------------


def test_channel_history_reads_the_latest_lines(alice: User, alice_world: dict[str, Any]) -> None:
    agent = alice_world["agent"]
    result = call(alice, agent, "channel_history", {"channel": "#PALAVER"})
    assert result.ok, result.content
    assert result.content.splitlines() == [
        "The last 3 lines of #palaver on Libera (times in UTC):",
        "2026-03-01 12:01 <dave> good morning",
        "2026-03-01 12:03 * erin waves",
        "2026-03-01 12:04 <dave> the launch is at noon",  # formatting codes stripped
    ]
    # The limit asked for, within the setting.
    newest = call(alice, agent, "channel_history", {"channel": "#palaver", "limit": 1})
    assert newest.content.splitlines()[1:] == ["2026-03-01 12:04 <dave> the launch is at noon"]
    assert (
        len(
            call(
                alice, agent, "channel_history", {"channel": "#palaver", "limit": 50}, max_lines=2
            ).content.splitlines()
        )
        == 3
    )
    # Joins and parts when the account wants them.
    assert (
        "12:02 → erin joined"
        in call(
            alice, agent, "channel_history", {"channel": "#palaver"}, include_events=True
        ).content
    )


def test_channel_history_in_the_account_time_zone(alice: User, alice_world: dict[str, Any]) -> None:
    AccountTool.objects.create(
        account=alice.account,
        tool_id=_tool_id("current_time"),
        settings={"timezone": "Europe/Paris"},
    )
    content = call(alice, alice_world["agent"], "channel_history", {"channel": "#palaver"}).content
    assert "(times in Europe/Paris)" in content and "2026-03-01 13:01 <dave>" in content


def test_channel_history_only_where_the_agent_may_read(
    alice: User, alice_world: dict[str, Any]
) -> None:
    agent = alice_world["agent"]
    forbidden = call(alice, agent, "channel_history", {"channel": "#secret"})
    unknown = call(alice, agent, "channel_history", {"channel": "#nowhere"})
    assert not forbidden.ok and forbidden.content == "No such channel: #secret."
    assert unknown.content == "No such channel: #nowhere."
    # The account lets agents read every channel.
    opened = call(alice, agent, "channel_history", {"channel": "#secret"}, channels="all")
    assert opened.ok and "swordfish" in opened.content


def test_channel_on_two_networks_must_be_named(alice: User, alice_world: dict[str, Any]) -> None:
    with switch(alice):
        oftc = Server.objects.create(name="OFTC", host="irc.oftc.net", nick="alice")
        other = Channel.objects.create(server=oftc, name="#palaver")
        say(other, "over on oftc", minutes=9)
        alice_world["agent"].channels.add(other)
    agent = alice_world["agent"]
    result = call(alice, agent, "channel_history", {"channel": "#palaver"})
    assert not result.ok and "on several networks (Libera, OFTC)" in result.content
    result = call(alice, agent, "channel_history", {"channel": "#palaver", "server": "oftc"})
    assert result.ok and "over on oftc" in result.content and "good morning" not in result.content


@pytest.mark.parametrize(
    ("slug", "arguments", "error"),
    [
        ("channel_history", "{}", "'channel' is a required property"),
        ("channel_history", '{"channel": "#palaver", "limit": 0}', "at limit"),
        ("channel_history", '{"channel": "#palaver", "rm": "-rf"}', "Additional properties"),
        ("channel_history", "not json", "not valid JSON"),
        ("channel_history", "[1]", "must be a JSON object"),
        ("search_history", '{"query": ""}', "at query"),
        ("search_history", '{"query": "x", "limit": 51}', "at limit"),
        ("channel_info", '{"channel": 5}', "at channel"),
        ("send_message", '{"channel": "#palaver"}', "'text' is a required property"),
        ("fetch_url", '{"url": ["http://x"]}', "at url"),
        ("schedule_task", '{"channel": "#palaver"}', "'prompt' is a required property"),
        ("current_time", '{"zone": "UTC"}', "Additional properties"),
    ],
)
def test_arguments_that_fail_the_schema_are_an_error_result(
    alice: User, alice_world: dict[str, Any], slug: str, arguments: str, error: str
) -> None:
    result = call(alice, alice_world["agent"], slug, arguments)
    assert not result.ok
    assert error in result.content


def test_a_tool_refuses_to_run_outside_its_account(
    alice: User, bob: User, alice_world: dict[str, Any]
) -> None:
    spec = TOOLS_BY_SLUG["channel_history"]
    context = ToolContext(
        account=alice.account,
        agent=alice_world["agent"],
        task=None,
        settings=spec.default_settings(),
    )
    for where in (bob, None):
        if where is None:
            result = execute_tool(context=context, spec=spec, arguments={"channel": "#palaver"})
        else:
            with switch(where):
                result = execute_tool(context=context, spec=spec, arguments={"channel": "#palaver"})
        assert not result.ok and result.content == "The tool channel_history is not available here."


# --- isolation between accounts ----------------------------------------------------------------


def test_tools_reach_nothing_of_another_account(
    alice: User, bob: User, alice_world: dict[str, Any], bob_world: dict[str, Any]
) -> None:
    """Bob's agent has Alice's channel names, server name and agent nick: it still reads only
    Bob's rows, and what is Alice's does not exist for it."""
    agent = bob_world["agent"]
    # "Read #secret of the other account": there is no such channel here, said as for any.
    for channels in ("agent", "all"):
        result = call(bob, agent, "channel_history", {"channel": "#secret"}, channels=channels)
        assert result.content == "No such channel: #secret."
        result = call(
            bob,
            agent,
            "channel_info",
            {"channel": "#secret", "server": "Libera"},
            channels=channels,
        )
        assert result.content == "No such channel: #secret."
        result = call(bob, agent, "search_history", {"query": "swordfish"}, channels=channels)
        assert result.content == "No lines match."
        result = call(
            bob,
            agent,
            "search_history",
            {"query": "morning launch OR swordfish"},
            channels=channels,
        )
        assert result.content == "No lines match."
    history = call(bob, agent, "channel_history", {"channel": "#palaver"}).content
    assert "bob's own line" in history and "good morning" not in history
    info = call(bob, agent, "channel_info", {"channel": "#palaver"}).content
    assert "- bob" in info and "dave" not in info and "Palaver development" not in info
    # The same name sent from Bob's agent goes to Bob's server, for Bob's account.
    result = call(bob, agent, "send_message", {"channel": "#secret", "text": "hi"})
    assert result.content == "No such channel: #secret."


# --- search_history ----------------------------------------------------------------------------


def test_search_history_finds_lines_in_the_agent_channels(
    alice: User, alice_world: dict[str, Any]
) -> None:
    agent = alice_world["agent"]
    result = call(alice, agent, "search_history", {"query": "launch"})
    assert result.ok
    assert result.content.splitlines() == [
        "1 matching lines, newest first (times in UTC):",
        "2026-03-01 12:04 #palaver (Libera) <dave> the launch is at noon",
    ]
    # #secret is not the agent's: its lines are not searched, unless the account says so.
    assert call(alice, agent, "search_history", {"query": "swordfish"}).content == "No lines match."
    assert (
        "swordfish"
        in call(alice, agent, "search_history", {"query": "swordfish"}, channels="all").content
    )
    # One channel; the newest first; the limit.
    result = call(alice, agent, "search_history", {"query": "dave", "channel": "#palaver"})
    assert [row.split(" ", 2)[2] for row in result.content.splitlines()[1:]] == [
        "#palaver (Libera) <dave> the launch is at noon",
        "#palaver (Libera) <dave> good morning",
    ]
    result = call(alice, agent, "search_history", {"query": "dave", "limit": 5}, max_results=1)
    assert len(result.content.splitlines()) == 2
    assert (
        call(alice, agent, "search_history", {"query": "x", "channel": "#secret"}).content
        == "No such channel: #secret."
    )
    punctuation = call(alice, agent, "search_history", {"query": "!!", "channel": "#palaver"})
    assert not punctuation.ok and "punctuation alone" in punctuation.content


# --- channel_info ------------------------------------------------------------------------------


def test_channel_info_shows_topic_and_members(alice: User, alice_world: dict[str, Any]) -> None:
    result = call(alice, alice_world["agent"], "channel_info", {"channel": "#palaver"})
    assert result.ok
    assert result.content.splitlines() == [
        "#palaver on Libera",
        "Topic: Palaver development",
        "Members (3):",
        "- dave (modes @)",
        "- erin (modes +, away)",
        "- helperbot (an agent of this account)",
    ]
    assert not call(alice, alice_world["agent"], "channel_info", {"channel": "#secret"}).ok


# --- send_message ------------------------------------------------------------------------------


@pytest.fixture
def commands() -> Iterator[Any]:
    """The gateway commands published from now on, opened and typed."""
    pubsub = events.redis_client().pubsub()
    pubsub.subscribe(events.GATEWAY_COMMANDS)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # subscribed once Redis confirms it, not before
        confirmation = pubsub.get_message(timeout=0.2)
        if confirmation and confirmation["type"] == "subscribe":
            break

    def read(expect: int) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + (2.0 if expect else 0.3)
        while time.monotonic() < deadline and (len(got) < expect or not expect):
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                got.append(events.parse_command(events.open_command(message["data"]) or {}))
        return got

    yield read
    pubsub.close()


def test_send_message_publishes_an_agent_say(
    alice: User, alice_world: dict[str, Any], commands: Any
) -> None:
    agent = alice_world["agent"]
    result = call(alice, agent, "send_message", {"channel": "#Palaver", "text": " Deploy done. "})
    assert result.ok and result.content == "Sent to #palaver on Libera."
    assert commands(1) == [
        events.AgentSay(
            account_id=str(alice.account.pk),
            server_id=alice_world["server"].pk,
            agent_id=agent.pk,
            target="#palaver",
            text="Deploy done.",
        )
    ]


def test_send_message_refusals(alice: User, alice_world: dict[str, Any], commands: Any) -> None:
    agent = alice_world["agent"]
    # A channel of the account the agent is not in, even when it may read every channel.
    result = call(
        alice, agent, "send_message", {"channel": "#secret", "text": "hi"}, channels="all"
    )
    assert result.content == "No such channel: #secret."
    result = call(alice, agent, "send_message", {"channel": "#palaver", "text": "a\r\nQUIT :x"})
    assert result.content == "Send one line: the text may not contain line breaks."
    result = call(
        alice, agent, "send_message", {"channel": "#palaver", "text": "x" * 41}, max_length=40
    )
    assert result.content == "The line is 41 characters long; the most is 40."
    assert commands(0) == []


def test_send_message_cap_per_run(alice: User, alice_world: dict[str, Any], commands: Any) -> None:
    agent = alice_world["agent"]
    with switch(alice):
        task = Task.objects.create(agent=agent, input="announce it")
        other = Task.objects.create(agent=agent, input="another run")
    arguments = {"channel": "#palaver", "text": "one more"}
    for _ in range(2):
        assert call(alice, agent, "send_message", arguments, task=task, max_lines_per_run=2).ok
    result = call(alice, agent, "send_message", arguments, task=task, max_lines_per_run=2)
    assert result.content == "This run has already sent 2 lines, the most it may."
    assert len(commands(2)) == 2 and commands(0) == []
    # Refused lines do not count; another run has its own lines.
    assert not call(alice, agent, "send_message", arguments, task=task, max_lines_per_run=2).ok
    assert call(alice, agent, "send_message", arguments, task=other, max_lines_per_run=2).ok
    assert call(alice, agent, "send_message", arguments, task=task, max_lines_per_run=3).ok


# --- fetch_url ---------------------------------------------------------------------------------

PAGE = b"""<!doctype html><html><head><title>Release  notes</title>
<style>body { color: red }</style><script>var secret = "tracking";</script></head>
<body><nav><a href="/">Home</a> | <a href="/blog">Blog</a></nav>
<h1>Palaver 2.0</h1><p>Agents now <b>use tools</b>.</p>
<h2>Changes</h2><ul><li>Search history</li><li><p>Fetch pages</p></li></ul>
<pre>  indented
  code</pre><script>alert(1)</script><footer>Copyright</footer></body></html>"""


CAFE = "caf\xe9 au lait\n".encode("latin-1")


class Handler(SiteHandler):
    hosts: list[str] = []

    def do_GET(self) -> None:
        Handler.hosts.append(self.headers.get("Host", ""))
        path = self.path
        try:
            if path == "/page":
                self._send(200, "text/html; charset=utf-8", PAGE)
            elif path == "/text":
                self._send(
                    200, "text/plain; charset=latin-1", "caf\xe9 au lait\n".encode("latin-1")
                )
            elif path == "/long":
                self._send(200, "text/plain", b"z" * 1000)
            elif path == "/image":
                self._send(200, "image/png", b"\x89PNG")
            elif path == "/missing":
                self._send(404, "text/html", b"<p>gone</p>")
            elif path.startswith("/hops/"):
                left = int(path.rsplit("/", 1)[1])
                if left == 0:
                    self._send(200, "text/plain", b"arrived")
                else:
                    self._send(302, "text/plain", b"", Location=f"/hops/{left - 1}")
            elif path == "/to-private":
                self._send(302, "text/plain", b"", Location="http://10.0.0.1/admin")
            elif path == "/to-intranet":
                self._send(301, "text/plain", b"", Location="http://intranet.example.test/")
            elif path == "/endless":
                # Streams forever: only a reader that stops at its limit gets an answer.
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                while True:
                    self.wfile.write(b"x" * 4096)
                    self.wfile.flush()
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"y")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif path == "/slow":
                time.sleep(3)
                self._send(200, "text/plain", b"late")
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def web() -> Iterator[str]:
    """An HTTP server on loopback; yields its base address."""
    Handler.hosts = []
    with serve(Handler) as server:
        yield base_url(server)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names of our own for the system resolver (no DNS server can be run here): a name maps
    to a list of answers, one per lookup, the last repeated; every lookup is counted."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in answers:
            queue = answers[host]
            lookups.append(host)
            ip = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port or 0)))]
        return real(host, port, *args, **kwargs)

    lookups: list[str] = []
    answers["__lookups__"] = lookups
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def fetch(user: User, agent: Agent, url: str, **settings: Any) -> ToolResult:
    return call(user, agent, "fetch_url", {"url": url}, **settings)


def test_fetch_html_as_readable_text(alice: User, alice_world: dict[str, Any], web: str) -> None:
    result = fetch(alice, alice_world["agent"], f"{web}/page")
    assert result.ok, result.content
    assert result.content == (
        f"URL: {web}/page\nTitle: Release notes\n\n"
        "# Palaver 2.0\nAgents now use tools.\n## Changes\n- Search history\n- Fetch pages\n"
        "  indented\n  code"
    )
    assert "tracking" not in result.content and "alert" not in result.content
    assert "Home" not in result.content and "Copyright" not in result.content


def test_html_text_without_structure() -> None:
    assert html_text(b"<html><body><div>just</div>\n<div>text  here</div></body></html>") == (
        "",
        "just\ntext here",
    )


def test_fetch_plain_text_and_refused_types(
    alice: User, alice_world: dict[str, Any], web: str
) -> None:
    agent = alice_world["agent"]
    assert fetch(alice, agent, f"{web}/text").content == f"URL: {web}/text\n\ncafé au lait\n"
    result = fetch(alice, agent, f"{web}/image")
    assert not result.ok and "is image/png; only web pages (HTML) and plain text" in result.content
    result = fetch(alice, agent, f"{web}/missing")
    assert not result.ok and result.content.endswith("answered 404 Not Found.")
    for url in ("ftp://example.org/file", "file:///etc/passwd", "gopher://x", "not a url"):
        result = fetch(alice, agent, url)
        assert not result.ok, url


def test_fetch_follows_redirects_each_checked_up_to_five(
    alice: User, alice_world: dict[str, Any], web: str
) -> None:
    agent = alice_world["agent"]
    result = fetch(alice, agent, f"{web}/hops/5")
    assert result.ok and result.content == f"URL: {web}/hops/0\n\narrived"
    result = fetch(alice, agent, f"{web}/hops/6")
    assert not result.ok and "redirects more than 5 times" in result.content
    # Loopback is allowed by the test settings; a private address is not.
    result = fetch(alice, agent, f"{web}/to-private")
    assert not result.ok
    assert (
        result.content
        == "Cannot fetch http://10.0.0.1/admin: refused: 10.0.0.1 is a private address."
    )


def test_fetch_refuses_internal_addresses_by_default(
    alice: User, alice_world: dict[str, Any], web: str, dns: dict[str, list[str]]
) -> None:
    agent = alice_world["agent"]
    dns["intranet.example.test"] = ["10.20.30.40"]
    with override_settings(OUTBOUND_ALLOWED_NETWORKS=[]):
        result = fetch(alice, agent, f"{web}/page")
        assert "refused: 127.0.0.1 is a loopback address" in result.content
        port = web.rsplit(":", 1)[1]
        result = fetch(alice, agent, f"http://localhost:{port}/page")
        assert "refused: localhost resolves to 127.0.0.1, a loopback address" in result.content
        for url in (
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0x7f000001/",
        ):
            assert "refused:" in fetch(alice, agent, url).content, url
    result = fetch(alice, agent, "http://intranet.example.test/")
    assert result.content == (
        "Cannot fetch http://intranet.example.test/: "
        "refused: intranet.example.test resolves to 10.20.30.40, a private address."
    )
    # A redirect to a name that resolves to a private address: refused at that hop.
    result = fetch(alice, agent, f"{web}/to-intranet")
    assert "intranet.example.test resolves to 10.20.30.40, a private address" in result.content
    assert Handler.hosts == [web.removeprefix("http://")]  # nothing was sent past the check


def test_fetch_connects_to_the_checked_address(
    alice: User, alice_world: dict[str, Any], web: str, dns: dict[str, list[str]]
) -> None:
    """The name is resolved once per hop and the request goes to that address: a second answer
    (DNS rebinding to a private address) is never asked for."""
    port = web.rsplit(":", 1)[1]
    dns["docs.example.test"] = ["127.0.0.1", "10.0.0.99"]
    result = fetch(alice, alice_world["agent"], f"http://docs.example.test:{port}/text")
    assert result.ok and "café au lait" in result.content
    assert dns["__lookups__"] == ["docs.example.test"]
    assert Handler.hosts == [f"docs.example.test:{port}"]


@pytest.fixture
def tls_web(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS server on loopback with a self-signed certificate for localhost, 127.0.0.1 and
    ::1; yields its port, the certificate, and the names clients asked for (SNI)."""
    certificate = make_certificate(tmp_path / "tls")
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert_path, certificate.key_path)

    def note_name(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(name or "")

    context.sni_callback = note_name
    with serve(Handler, tls=context) as server:
        yield server.server_address[1], certificate.cert_path, names


def test_fetch_https_checks_the_certificate_against_the_name(
    tls_web: tuple[int, Path, list[str]], dns: dict[str, list[str]]
) -> None:
    """TLS goes to the checked address but speaks and verifies the name (SNI)."""
    port, cert_path, names = tls_web
    trusted = ssl.create_default_context(cafile=str(cert_path))
    page = fetch_page(f"https://localhost:{port}/text", timeout=5, max_bytes=10_000, verify=trusted)
    assert page.text == "café au lait\n" and names == ["localhost"]
    # The certificate holds 127.0.0.1, the address connected to, but not this name: refused.
    dns["docs.example.test"] = ["127.0.0.1"]
    with pytest.raises(FetchError, match=r"certificate is not valid for 'docs\.example\.test'"):
        fetch_page(
            f"https://docs.example.test:{port}/text", timeout=5, max_bytes=10_000, verify=trusted
        )
    assert names[-1] == "docs.example.test"
    # Without trusting the test's own certificate, a self-signed one is refused.
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_page(f"https://localhost:{port}/text", timeout=5, max_bytes=10_000)


def test_fetch_allowed_domains(
    alice: User, alice_world: dict[str, Any], web: str, dns: dict[str, list[str]]
) -> None:
    agent = alice_world["agent"]
    port = web.rsplit(":", 1)[1]
    dns["docs.example.test"] = ["127.0.0.1"]
    result = fetch(alice, agent, f"{web}/page", allowed_domains=["example.test"])
    assert result.content == "127.0.0.1 is not among the sites this account lets agents read."
    result = fetch(
        alice, agent, f"http://docs.example.test:{port}/page", allowed_domains=["example.test"]
    )
    assert result.ok
    # Every hop: a redirect off the allowed sites is refused.
    dns["other.example.org"] = ["127.0.0.1"]
    result = fetch(
        alice, agent, f"http://docs.example.test:{port}/page", allowed_domains=["other.example.org"]
    )
    assert not result.ok
    assert dns["__lookups__"] == ["docs.example.test"]  # refused before resolving


def test_fetch_size_limit_stops_reading(alice: User, alice_world: dict[str, Any], web: str) -> None:
    started = time.monotonic()
    result = fetch(alice, alice_world["agent"], f"{web}/endless", max_kilobytes=2)
    assert time.monotonic() - started < 5
    assert result.ok
    body, notice = result.content.split("\n\n", 1)[1].rsplit("\n\n", 1)
    assert body == "x" * 2048
    assert notice == "[Truncated: the page is over 2 KB; only its start was read.]"
    # The text the model reads is bounded as well, and says so.
    result = fetch(alice, alice_world["agent"], f"{web}/long", max_characters=500)
    body, notice = result.content.split("\n\n", 1)[1].rsplit("\n\n", 1)
    assert body == "z" * 500
    assert notice == "[Truncated: the text is over 500 characters; only its start is shown.]"


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_fetch_time_limit(alice: User, alice_world: dict[str, Any], web: str, path: str) -> None:
    started = time.monotonic()
    result = fetch(alice, alice_world["agent"], f"{web}{path}", timeout_seconds=1)
    assert time.monotonic() - started < 2.5
    assert result.content == "The page did not arrive within the time limit (1 s)."


# --- the tools page: every setting kind, with field errors --------------------------------------


def errors_of(response: Any) -> dict[str, list[str]]:
    return {k: [str(e) for e in v] for k, v in response.context["form"].errors.items()}


def test_tools_page_saves_each_setting_kind(alice: User, alice_client: Client) -> None:
    url = reverse("llms:tool_edit", args=["fetch_url"])
    good = {
        "enabled": "on",
        "setting_timeout_seconds": "5",
        "setting_max_kilobytes": "64",
        "setting_max_characters": "8000",
        "setting_allowed_domains": "Docs.Python.org\n*.example.org, bücher.de",
    }
    assert alice_client.post(url, good).status_code == 302
    config = AccountTool.objects.get(account=alice.account, tool__slug="fetch_url")
    assert config.enabled and config.settings == {
        "timeout_seconds": 5,
        "max_kilobytes": 64,
        "max_characters": 8000,
        "allowed_domains": ["docs.python.org", "example.org", "xn--bcher-kva.de"],
    }
    page = alice_client.get(url).content.decode()
    assert "docs.python.org\nexample.org\nxn--bcher-kva.de</textarea>" in page
    listing = alice_client.get(reverse("llms:tool_list")).content.decode()
    assert "Allowed sites: docs.python.org, example.org, xn--bcher-kva.de" in listing
    assert "Channels agents may read: Only the channels the agent sits in" in listing

    for bad, error in [
        ("http://docs.python.org/3/", "“http://docs.python.org/3/” is an address"),
        ("localhost", "“localhost” is not a host name"),
        ("mple..org", "“mple..org” is not a host name"),
        ("10.0.0.1", "“10.0.0.1” is not a host name"),
    ]:
        response = alice_client.post(url, {**good, "setting_allowed_domains": bad})
        assert response.status_code == 400
        assert error in errors_of(response)["setting_allowed_domains"][0], bad
    response = alice_client.post(url, {**good, "setting_timeout_seconds": "600"})
    assert "less than or equal to 60" in errors_of(response)["setting_timeout_seconds"][0]

    url = reverse("llms:tool_edit", args=["channel_history"])
    history = {
        "enabled": "on",
        "setting_max_lines": "20",
        "setting_channels": "all",
        "setting_include_events": "on",
    }
    assert alice_client.post(url, history).status_code == 302
    config = AccountTool.objects.get(account=alice.account, tool__slug="channel_history")
    assert config.settings == {"max_lines": 20, "channels": "all", "include_events": True}
    del history["setting_include_events"]  # an unticked box
    assert alice_client.post(url, history).status_code == 302
    config.refresh_from_db()
    assert config.settings["include_events"] is False
    response = alice_client.post(url, {**history, "setting_channels": "everyone's"})
    assert response.status_code == 400
    assert "Select a valid choice" in errors_of(response)["setting_channels"][0]
