"""Real IRC servers on loopback for the tests, and a small IRC client to talk to them.

Loaded from tests/conftest.py (`pytest_plugins`). Fixtures:

- `inspircd`: InspIRCd 3 (Debian's package) with its IRCv3 modules, a plain port and a TLS
  port (self-signed certificate for 127.0.0.1 / localhost, `irc_certificate`).
- `ngircd`: ngIRCd (Debian's package), the simple one; `#palaver` exists with a topic.
- `miniircd`: miniircd (PyPI), the smallest: no CAP, no 005 line.
- `inspircd_factory` / `ngircd_factory` / `miniircd_factory`: start more servers, or servers
  with options (a connection password, a short ping frequency, ...).
- `irc_bot`: a factory of connected `IrcBot`s ("a second real client"), all quit at teardown.
- `irc_certificate`: the session's self-signed certificate (`TlsCertificate`).

Every server listens on 127.0.0.1 only, keeps its files in a temporary directory of the test
run, and is killed at teardown even when the test failed. `stop()` then `start()` brings a
server back on the same port (reconnect tests). A missing server binary fails the test with a
message saying how to install it: the servers come from `scripts/ensure_ircd.sh` (run by
`make test`) and from requirements/dev.txt.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import functools
import importlib.util
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
INSTALL_HINT = (
    "run `make test` (scripts/ensure_ircd.sh installs it) or `sudo bash scripts/ensure_ircd.sh`"
)

# The IRCv3 capabilities the gateway negotiates (issue 3); InspIRCd offers all of them.
GATEWAY_CAPS = (
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
)


class IrcServerError(RuntimeError):
    """A server did not start (the message carries the end of its log)."""


class PortInUse(IrcServerError):
    """A server could not listen on one of its ports."""


# --- IRC lines -----------------------------------------------------------------------------

_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def _unescape_tag(value: str) -> str:
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append(_TAG_UNESCAPES.get(following, following))
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class IrcLine:
    """One line received, parsed. `str(line)` is the raw line (without CR LF)."""

    raw: str
    tags: dict[str, str]
    source: str | None
    command: str
    params: list[str]
    received_at: float = 0.0  # time.monotonic() when the reader got it

    @classmethod
    def parse(cls, raw: str, received_at: float = 0.0) -> IrcLine:
        rest = raw
        tags: dict[str, str] = {}
        if rest.startswith("@"):
            tag_part, _, rest = rest[1:].partition(" ")
            for item in tag_part.split(";"):
                if item:
                    key, _, value = item.partition("=")
                    tags[key] = _unescape_tag(value)
            rest = rest.lstrip(" ")
        source = None
        if rest.startswith(":"):
            source, _, rest = rest[1:].partition(" ")
            rest = rest.lstrip(" ")
        trailing = None
        if " :" in rest:
            rest, _, trailing = rest.partition(" :")
        elif rest.startswith(":"):
            rest, trailing = "", rest[1:]
        words = rest.split()
        command = words[0].upper() if words else ""
        params = words[1:]
        if trailing is not None:
            params.append(trailing)
        return cls(raw, tags, source, command, params, received_at)

    @property
    def nick(self) -> str | None:
        """The nick of the source (None for a server or no source)."""
        if self.source is None or ("!" not in self.source and "." in self.source):
            return None
        return self.source.split("!", 1)[0]

    @property
    def text(self) -> str:
        """The last parameter (a message's text), or ''."""
        return self.params[-1] if self.params else ""

    def __str__(self) -> str:
        return self.raw


Match = str | re.Pattern[str] | Callable[[IrcLine], bool]


def _matcher(match: Match) -> Callable[[IrcLine], bool]:
    if isinstance(match, str):
        match = re.compile(match)
    if isinstance(match, re.Pattern):
        pattern = match
        return lambda line: pattern.search(line.raw) is not None
    return match


def unique_channel(prefix: str = "#t") -> str:
    """A channel name no other test uses (servers may outlive one test)."""
    return f"{prefix}-{secrets.token_hex(4)}"


# --- the test client -----------------------------------------------------------------------


class IrcBot:
    """A synchronous IRC client for tests, with a background reader thread.

    Every received line is kept in `lines` (parsed `IrcLine`s, in order). `wait_for` looks for
    a match from a cursor: lines before the cursor were matched already, so consecutive
    `wait_for` calls expect things in order; pass `since=0` (or a `mark()`) to look back.
    PING is answered by the reader thread.
    """

    def __init__(self, name: str = "bot") -> None:
        self.name = name
        self.nick = ""
        self.caps_available: dict[str, str] = {}  # CAP LS: name -> value ('' when none)
        self.caps_enabled: set[str] = set()  # CAP ACK'ed
        self.isupport: dict[str, str] = {}  # from 005
        self.welcome: IrcLine | None = None  # the 001
        self._lines: list[IrcLine] = []
        self._cursor = 0
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._closed = True
        self.close_reason = ""

    # connection ---------------------------------------------------------------------------

    def connect(
        self,
        host: str,
        port: int,
        nick: str,
        *,
        tls: bool = False,
        ca_file: Path | str | None = None,
        verify: bool = True,
        caps: Iterable[str] | None = None,
        username: str | None = None,
        realname: str = "Palaver test bot",
        password: str | None = None,
        register: bool = True,
        timeout: float = START_TIMEOUT,
    ) -> IrcBot:
        """Connect, then register unless `register=False`.

        `caps=None` skips CAP negotiation; a list (even empty) sends `CAP LS 302`, fills
        `caps_available`, requests those of `caps` the server offers (a REQ with an unknown
        capability would be refused as a whole) and fills `caps_enabled`. With `tls`, the
        server's certificate is checked against `ca_file` (or the system's trust store)
        unless `verify=False`; a failed check raises `ssl.SSLCertVerificationError`.
        A nick in use during registration gets '_' appended.
        """
        raw = socket.create_connection((host, port), timeout=timeout)
        sock: socket.socket = raw
        if tls:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
            except BaseException:
                raw.close()
                raise
        sock.settimeout(None)
        self._sock = sock
        self._closed = False
        self.close_reason = ""
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock,), name=f"IrcBot-{self.name}", daemon=True
        )
        self._reader.start()
        if not register:
            self.nick = nick
            return self
        try:
            self.register(
                nick,
                caps=caps,
                username=username,
                realname=realname,
                password=password,
                timeout=timeout,
            )
        except BaseException:
            self.close()
            raise
        return self

    def register(
        self,
        nick: str,
        *,
        caps: Iterable[str] | None = None,
        username: str | None = None,
        realname: str = "Palaver test bot",
        password: str | None = None,
        timeout: float = START_TIMEOUT,
    ) -> IrcLine:
        """PASS / CAP / NICK / USER, until 001. Returns the 001."""
        wanted = list(caps) if caps is not None else None
        if wanted is not None:
            self.send_raw("CAP LS 302")
        if password is not None:
            self.send_raw(f"PASS {password}")
        self.send_raw(f"NICK {nick}")
        self.send_raw(f"USER {username or nick} 0 * :{realname}")
        self.nick = nick
        deadline = time.monotonic() + timeout
        relevant = {"CAP", "001", "433", "432", "421", "464", "465", "ERROR"}
        while True:
            line = self.wait_for(
                lambda candidate: candidate.command in relevant,
                timeout=max(0.0, deadline - time.monotonic()),
            )
            if line.command == "001":
                self.welcome = line
                self.nick = line.params[0]
                self._collect_isupport(deadline)
                return line
            if line.command == "433":
                self.nick += "_"
                self.send_raw(f"NICK {self.nick}")
            elif line.command in {"432", "464", "465", "ERROR"}:
                raise AssertionError(f"{self.name}: registration refused: {line.raw}")
            elif line.command == "421" and wanted is not None:
                wanted = None  # no CAP on this server: it registers us right away
            elif line.command == "CAP" and wanted is not None:
                self._handle_cap(line, wanted)

    def _handle_cap(self, line: IrcLine, wanted: list[str]) -> None:
        sub = line.params[1].upper() if len(line.params) > 1 else ""
        if sub == "LS":
            for item in line.params[-1].split():
                name, _, value = item.partition("=")
                self.caps_available[name] = value
            more = len(line.params) > 3 and line.params[2] == "*"
            if not more:
                request = [cap for cap in wanted if cap in self.caps_available]
                if request:
                    self.send_raw("CAP REQ :" + " ".join(request))
                else:
                    self.send_raw("CAP END")
        elif sub == "ACK":
            self.caps_enabled.update(
                cap for cap in line.params[-1].split() if not cap.startswith("-")
            )
            self.send_raw("CAP END")
        elif sub == "NAK":
            self.send_raw("CAP END")

    def _collect_isupport(self, deadline: float) -> None:
        # 005 lines follow 001 at once; a server without them (miniircd) ends with the MOTD.
        end = {"376", "422"}
        with contextlib.suppress(AssertionError):
            self.wait_for(
                lambda line: line.command in end,
                timeout=min(2.0, max(0.0, deadline - time.monotonic())),
            )
        for line in self.lines:
            if line.command == "005":
                for token in line.params[1:-1]:
                    key, _, value = token.partition("=")
                    self.isupport[key] = value

    def _read_loop(self, sock: socket.socket) -> None:
        buffer = b""
        reason = "connection closed by the server"
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                buffer += data
                *complete, buffer = re.split(rb"\r?\n", buffer)
                now = time.monotonic()
                for raw in complete:
                    if not raw:
                        continue
                    line = IrcLine.parse(raw.decode("utf-8", "replace"), now)
                    if line.command == "PING":
                        with contextlib.suppress(OSError):
                            self.send_raw("PONG :" + line.text)
                    with self._cond:
                        self._lines.append(line)
                        self._cond.notify_all()
        except (OSError, ValueError) as error:
            reason = f"connection lost: {error!r}"
        finally:
            with self._cond:
                if not self._closed:
                    self.close_reason = reason
                self._closed = True
                self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return not self._closed

    @property
    def tls_version(self) -> str | None:
        """'TLSv1.3' and the like on a TLS connection, else None."""
        sock = self._sock
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    def send_raw(self, line: str) -> None:
        """Send one line (CR LF added). CR or LF inside it is refused: use `send_bytes`."""
        if "\r" in line or "\n" in line:
            raise ValueError("send_raw sends one line; use send_bytes for anything else")
        self.send_bytes(line.encode("utf-8") + b"\r\n")

    def send_bytes(self, data: bytes) -> None:
        if self._sock is None:
            raise AssertionError(f"{self.name}: not connected")
        with self._send_lock:
            self._sock.sendall(data)

    # commands -----------------------------------------------------------------------------

    def join(self, channel: str, key: str | None = None, *, wait: bool = True) -> None:
        """JOIN; with `wait`, until the end of the NAMES list (366). A refusal (banned, bad
        key, invite only, full, ...) raises AssertionError."""
        self.send_raw(f"JOIN {channel}" + (f" {key}" if key else ""))
        if not wait:
            return
        folded = channel.lower()
        refusals = {"403", "405", "471", "473", "474", "475", "476", "477", "489"}
        line = self.wait_for(
            lambda line: (
                line.command in refusals | {"366"}
                and len(line.params) > 1
                and line.params[1].lower() == folded
            )
        )
        if line.command != "366":
            raise AssertionError(f"{self.name}: could not join {channel}: {line.raw}")

    def part(self, channel: str, reason: str = "") -> None:
        self.send_raw(f"PART {channel}" + (f" :{reason}" if reason else ""))

    def say(self, target: str, text: str) -> None:
        self.send_raw(f"PRIVMSG {target} :{text}")

    def notice(self, target: str, text: str) -> None:
        self.send_raw(f"NOTICE {target} :{text}")

    def action(self, target: str, text: str) -> None:
        self.say(target, f"\x01ACTION {text}\x01")

    def change_nick(self, nick: str) -> None:
        self.send_raw(f"NICK {nick}")
        self.nick = nick

    def quit(self, message: str = "bye", timeout: float = 2.0) -> None:
        """QUIT, wait (up to `timeout`) for the server to close the connection, then close."""
        if self.connected:
            with contextlib.suppress(OSError):
                self.send_raw(f"QUIT :{message}")
            self.wait_closed(timeout)
        self.close()

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait until the server closes the connection; True if it did."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed, timeout=timeout)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)

    # looking at what came in --------------------------------------------------------------

    @property
    def lines(self) -> list[IrcLine]:
        """A copy of every line received so far."""
        with self._cond:
            return list(self._lines)

    def mark(self) -> int:
        """A position to pass as `since`: only lines received after now."""
        with self._cond:
            return len(self._lines)

    def wait_for(self, match: Match, timeout: float = 5.0, *, since: int | None = None) -> IrcLine:
        """The first line from the cursor (or `since`) that matches, waiting for it.

        `match` is a regex searched in the raw line (tags and source included) or a
        predicate on the `IrcLine`. The cursor moves past the match. Raises AssertionError
        (with the last lines received) on timeout or when the connection closes first.
        """
        predicate = _matcher(match)
        deadline = time.monotonic() + timeout
        with self._cond:
            index = self._cursor if since is None else since
            while True:
                while index < len(self._lines):
                    line = self._lines[index]
                    index += 1
                    if predicate(line):
                        self._cursor = max(self._cursor, index)
                        return line
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    break
                self._cond.wait(remaining)
            tail = "\n  ".join(line.raw for line in self._lines[-15:])
            why = f"connection closed ({self.close_reason})" if self._closed else "timed out"
            raise AssertionError(
                f"{self.name} ({self.nick}): no line matching {match!r} after "
                f"{timeout:.1f}s, {why}; last lines:\n  {tail}"
            )

    def assert_no(self, match: Match, within: float = 0.5, *, since: int | None = None) -> None:
        """Fail if a matching line arrives (or arrived since `since`) within `within` s."""
        predicate = _matcher(match)
        start = self.mark() if since is None else since
        time.sleep(within)
        for line in self.lines[start:]:
            if predicate(line):
                raise AssertionError(f"{self.name}: unexpected line: {line.raw}")

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"<IrcBot {self.name} nick={self.nick!r} {state}>"


# --- TLS certificate -----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCertificate:
    """A self-signed server certificate for 127.0.0.1, ::1 and localhost.

    `cert_path` is what a client trusts (PEM); `key_path` the key; `combined_path` both in one
    file (miniircd's `-s`).
    """

    cert_path: Path
    key_path: Path
    combined_path: Path


def make_certificate(directory: Path, common_name: str = "localhost") -> TlsCertificate:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    paths = TlsCertificate(
        directory / "cert.pem", directory / "key.pem", directory / "combined.pem"
    )
    paths.cert_path.write_bytes(cert_pem)
    paths.key_path.write_bytes(key_pem)
    paths.key_path.chmod(0o600)
    paths.combined_path.write_bytes(cert_pem + key_pem)
    paths.combined_path.chmod(0o600)
    return paths


# --- server processes ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


# Runs a server that drops root (ngIRCd) as its child, in the same process group (so signals
# sent to the group reach the server), and kills it when stdin reaches EOF: the test process
# holds the other end of that pipe, so the server dies with the test process even on SIGKILL.
_WATCHDOG = """
import signal, subprocess, sys, threading
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the child
signal.signal(signal.SIGINT, signal.SIG_IGN)
def watch():
    sys.stdin.buffer.read()
    child.kill()
threading.Thread(target=watch, daemon=True).start()
sys.exit(child.wait())
"""

_LIVE: set[IrcServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.stop(graceful=False)


@dataclass(eq=False)
class IrcServer:
    """A server process on 127.0.0.1: `port` (plain) and `tls_port` (None without TLS).

    `start()` (re)starts it on the same ports and returns once a client registers (001);
    `stop()` ends it (SIGTERM, or SIGKILL with `graceful=False` or after 5 s). `process` is the
    running `subprocess.Popen` (None when stopped); `log_text()` is its output.
    """

    directory: Path
    certificate: TlsCertificate | None = None
    host: str = HOST
    port: int = 0
    tls_port: int | None = None
    password: str | None = None  # a connection password (PASS) the server requires
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0  # how many times it was started

    _log_offset: int = field(default=0, init=False, repr=False)

    kind: ClassVar[str] = "ircd"
    binary: ClassVar[str] = ""
    supports_tls: ClassVar[bool] = False
    ready_marker: ClassVar[re.Pattern[str]] = re.compile(".")
    bind_failure: ClassVar[re.Pattern[str]] = re.compile("(?!)")
    drops_privileges: ClassVar[bool] = False  # switches user when started as root

    @property
    def cert_path(self) -> Path | None:
        """The certificate (PEM) a client must trust for `tls_port`."""
        return self.certificate.cert_path if self.certificate else None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.kind}.out"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def check_binary(self) -> None:
        if not Path(self.binary).is_file() and not shutil.which(self.binary):
            pytest.fail(f"{self.kind}: {self.binary} is missing; {INSTALL_HINT}", pytrace=False)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            raise IrcServerError(f"{self.kind} is already running on port {self.port}")
        self.check_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        first = self.port == 0
        for attempt in range(3):
            if first:
                # Another test run may grab a port between free_port() and the server's bind:
                # the first start then picks new ports. A restart keeps its ports and tries
                # again shortly (someone's free_port() probe holds a port only for an instant).
                self._allocate_ports()
            self.write_config()
            try:
                self._spawn_and_wait(timeout)
                return
            except PortInUse:
                if attempt == 2:
                    raise
                if not first:
                    time.sleep(0.2)

    def _allocate_ports(self) -> None:
        self.port = free_port()
        if self.supports_tls and self.certificate is not None:
            self.tls_port = free_port()

    def _spawn_and_wait(self, timeout: float) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.command())}\n".encode())
            log.flush()
            if self.drops_privileges:
                # Its parent-death signal would not survive the change of user: a watchdog
                # runs it instead, and kills it when its stdin (our pipe) closes.
                self.process = subprocess.Popen(
                    [sys.executable, "-c", _WATCHDOG, *self.command()],
                    cwd=self.directory,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            else:
                on_main_thread = threading.current_thread() is threading.main_thread()
                self.process = subprocess.Popen(
                    self.command(),
                    cwd=self.directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # The kernel kills the server if pytest dies without tearing down; only
                    # from the main thread: the signal fires when the forking *thread* ends.
                    preexec_fn=_die_with_parent if on_main_thread else None,
                )
        self.starts += 1
        _LIVE.add(self)
        self._started()
        try:
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop(graceful=False)
            raise

    def _wait_ready(self, deadline: float) -> None:
        # The servers carry on (or exit) when a port is taken, and whoever took it may accept
        # connections: so first their own word that they are up, and that no bind failed.
        while True:
            self._check_alive()
            output = self._output_since_start()
            if self.bind_failure.search(output):
                self._fail("a port is taken", PortInUse)
            if self.ready_marker.search(output):
                break
            if time.monotonic() > deadline:
                self._fail("it never said it was ready")
            time.sleep(0.01)
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        for port in ports:
            while True:
                self._check_alive()
                try:
                    socket.create_connection((self.host, port), timeout=0.5).close()
                    break
                except OSError as error:
                    if time.monotonic() > deadline:
                        self._fail(f"port {port} does not accept connections ({error})")
                    time.sleep(0.02)
        probe = IrcBot(f"{self.kind}-probe")
        try:
            probe.connect(
                self.host,
                self.port,
                f"probe{secrets.token_hex(3)}",
                password=self.password,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            if self.tls_port:
                tls_probe = IrcBot(f"{self.kind}-tls-probe")
                tls_probe.connect(
                    self.host, self.tls_port, "tlsprobe", tls=True, verify=False, register=False
                )
                tls_probe.close()
        except (AssertionError, OSError) as error:
            self._fail(f"no client could register ({error})")
        finally:
            probe.close()  # no QUIT: ngIRCd's flood penalty could hold it back a second

    def _started(self) -> None:
        """Called right after the process is spawned."""

    def _output_since_start(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            exception = PortInUse if self.bind_failure.search(self._output_since_start()) else None
            self._fail(f"exited with status {self.process.returncode} while starting", exception)

    def _fail(self, why: str, exception: type[IrcServerError] | None = None) -> NoReturn:
        tail = "\n".join(self._output_since_start().splitlines()[-40:])
        raise (exception or IrcServerError)(
            f"{self.kind} on {self.host}:{self.port} (tls {self.tls_port}): {why}; its output:\n"
            f"{tail}"
        )

    def stop(self, *, graceful: bool = True, timeout: float = 5.0) -> None:
        """End the process: SIGTERM (SIGKILL if `graceful=False`, or after `timeout`)."""
        process, self.process = self.process, None
        _LIVE.discard(self)
        self._stopping()
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _stopping(self) -> None:
        """Called when `stop()` begins."""

    def kill(self) -> None:
        """SIGKILL: the connections drop without a QUIT or ERROR."""
        self.stop(graceful=False)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop()
        self.start(timeout)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __hash__(self) -> int:
        return id(self)


@dataclass(eq=False)
class InspIRCd(IrcServer):
    """InspIRCd 3 with the IRCv3 modules, no flood limits, an operator `admin` / `admin`.

    `pingfreq`: seconds between the server's PINGs (and the time it waits for the PONG).
    """

    pingfreq: int = 120
    motd: str = "Palaver test server (InspIRCd). Nothing here is real."
    extra_config: str = ""
    server_name: str = "irc.inspircd.test"
    oper_name: str = "admin"
    oper_password: str = "admin"
    wake_port: int | None = None
    _waker_stop: threading.Event | None = field(default=None, init=False, repr=False)

    kind: ClassVar[str] = "inspircd"
    binary: ClassVar[str] = "/usr/sbin/inspircd"
    supports_tls: ClassVar[bool] = True
    ready_marker: ClassVar[re.Pattern[str]] = re.compile(r"InspIRCd is now running")
    bind_failure: ClassVar[re.Pattern[str]] = re.compile(r"listeners failed to bind")
    modules: ClassVar[tuple[str, ...]] = (
        "cap",
        "ircv3",  # account-notify, away-notify, extended-join
        "ircv3_servertime",
        "ircv3_echomessage",
        "ircv3_batch",
        "ircv3_msgid",
        "ircv3_ctctags",  # message-tags
        "ircv3_capnotify",
        "ircv3_accounttag",
        "ircv3_chghost",
        "ircv3_invitenotify",
        "ircv3_labeledresponse",
        "namesx",  # multi-prefix
        "uhnames",  # userhost-in-names
        "monitor",
    )

    @property
    def config_path(self) -> Path:
        return self.directory / "inspircd.conf"

    # InspIRCd 3 completes a registration (the 001) only in its once-a-second background pass,
    # and that pass runs only when its event loop wakes up: on an idle server, one second after
    # the client's USER line. A connection on a port of its own that sends an empty line every
    # 20 ms keeps the loop awake, so a registration completes at the next turn of the clock's
    # second instead (0.5 s on average). The connection never registers (its class has a long
    # registration timeout); LUSERS counts it as one unknown connection.

    def _allocate_ports(self) -> None:
        super()._allocate_ports()
        self.wake_port = free_port()

    def _started(self) -> None:
        if self.wake_port is None:
            return
        self._waker_stop = threading.Event()
        threading.Thread(
            target=self._wake_loop,
            args=(self._waker_stop, self.wake_port),
            name=f"inspircd-waker-{self.port}",
            daemon=True,
        ).start()

    def _stopping(self) -> None:
        if self._waker_stop is not None:
            self._waker_stop.set()
            self._waker_stop = None

    def _wake_loop(self, stop: threading.Event, port: int) -> None:
        sock: socket.socket | None = None
        while not stop.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection((self.host, port), timeout=0.5)
                sock.sendall(b"\r\n")
            except OSError:
                if sock is not None:
                    sock.close()
                    sock = None
                stop.wait(0.05)
                continue
            stop.wait(0.02)
        if sock is not None:
            sock.close()

    def command(self) -> list[str]:
        return [self.binary, f"--config={self.config_path}", "--nofork", "--runasroot"]

    def write_config(self) -> None:
        d = self.directory
        for sub in ("data", "logs", "run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "motd.txt").write_text(self.motd + "\n")
        big = 64 * 1024 * 1024
        log = d / "logs" / "ircd.log"
        password = f'password="{self.password}"' if self.password else ""
        binds = f'<bind address="{self.host}" port="{self.port}" type="clients">\n'
        waker = ""
        if self.wake_port:
            binds += f'<bind address="{self.host}" port="{self.wake_port}" type="clients">\n'
            waker = (
                f'<connect name="waker" allow="*" port="{self.wake_port}" timeout="86400" '
                'pingfreq="86400" useident="no" resolvehostnames="no" localmax="100000" '
                'globalmax="100000">\n'
            )
        tls = ""
        if self.certificate is not None and self.tls_port:
            binds += (
                f'<bind address="{self.host}" port="{self.tls_port}" type="clients" '
                'sslprofile="tests">\n'
            )
            tls = (
                '<module name="ssl_gnutls">\n'
                '<sslprofile name="tests" provider="gnutls" '
                f'certfile="{self.certificate.cert_path}" '
                f'keyfile="{self.certificate.key_path}" dhfile="" '
                'requestclientcert="no">\n'
            )
        modules = "".join(f'<module name="{name}">\n' for name in self.modules)
        self.config_path.write_text(
            f"""<config format="xml">
<server name="{self.server_name}" description="Palaver test server" network="PalaverTest">
<admin name="Palaver tests" nick="admin" email="admin@palaver.test">
<path configdir="{d}" datadir="{d / "data"}" logdir="{d / "logs"}" runtimedir="{d / "run"}"
      moduledir="/usr/lib/inspircd/modules">
<pid file="{d / "run" / "inspircd.pid"}">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{log}">
{binds}{waker}<connect name="tests" allow="*" {password}
         timeout="20" pingfreq="{self.pingfreq}" maxchans="1000" limit="100000"
         localmax="100000" globalmax="100000" maxconnwarn="off"
         hardsendq="{big}" softsendq="{big}" recvq="{big}"
         threshold="1000000" commandrate="1000000000" fakelag="no"
         useident="no" resolvehostnames="no" uniqueusername="no">
<cidr ipv4clone="32" ipv6clone="128">
<dns server="127.0.0.1" timeout="3">
<files motd="{d / "motd.txt"}">
<performance clonesonconnect="no" softlimit="100000" somaxconn="1024" quietbursts="yes">
<options defaultmodes="nt" hostintopic="yes" syntaxhints="no">
<security announceinvites="dynamic" hideserver="" hidesplits="no" userstats="Pu">
<whowas groupsize="10" maxgroups="10000" maxkeep="1h">
<class name="everything" commands="*" privs="*" usermodes="*" chanmodes="*" snomasks="*">
<type name="Admin" classes="everything">
<oper name="{self.oper_name}" password="{self.oper_password}" host="*@*" type="Admin">
{modules}{tls}{self.extra_config}
"""
        )


# RFC 7919's ffdhe2048 group (as `certtool --get-dh-params` prints it): without a DHFile,
# ngIRCd spends a second generating parameters at every start.
FFDHE2048_PEM = """\
-----BEGIN DH PARAMETERS-----
MIIBDAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAgICAQA=
-----END DH PARAMETERS-----
"""


@dataclass(eq=False)
class Ngircd(IrcServer):
    """ngIRCd: CAP with multi-prefix only, penalties on bursts (PENALTY in 005).

    `channel` (default `#palaver`) exists from the start with `topic`; operator `admin` /
    `admin`. Started as root it drops to `nobody` (it refuses to run as root), so it cannot
    write its PID file under the test run's private temporary directory: it says so in its log
    and carries on.
    """

    channel: str = "#palaver"
    topic: str = "Welcome to the Palaver test channel"
    motd: str = "Palaver test server (ngIRCd). Nothing here is real."
    server_name: str = "irc.ngircd.test"
    oper_name: str = "admin"
    oper_password: str = "admin"

    kind: ClassVar[str] = "ngircd"
    binary: ClassVar[str] = "/usr/sbin/ngircd"
    supports_tls: ClassVar[bool] = True
    ready_marker: ClassVar[re.Pattern[str]] = re.compile(r'Server ".*" .*ready\.')
    bind_failure: ClassVar[re.Pattern[str]] = re.compile(r"Can't bind socket")
    drops_privileges: ClassVar[bool] = os.getuid() == 0

    @property
    def config_path(self) -> Path:
        return self.directory / "ngircd.conf"

    def command(self) -> list[str]:
        return [self.binary, "-n", "-f", str(self.config_path)]

    def write_config(self) -> None:
        d = self.directory
        (d / "motd.txt").write_text(self.motd + "\n")
        password = f"Password = {self.password}\n" if self.password else ""
        tls = ""
        if self.certificate is not None and self.tls_port:
            (d / "dhparams.pem").write_text(FFDHE2048_PEM)
            tls = (
                "[SSL]\n"
                f"CertFile = {self.certificate.cert_path}\n"
                f"KeyFile = {self.certificate.key_path}\n"
                f"DHFile = {d / 'dhparams.pem'}\n"
                f"Ports = {self.tls_port}\n"
            )
        self.config_path.write_text(
            f"""[Global]
Name = {self.server_name}
Info = Palaver test server
AdminInfo1 = Palaver tests
AdminInfo2 = loopback only
AdminEMail = admin@palaver.test
Listen = {self.host}
Ports = {self.port}
PidFile = {d / "ngircd.pid"}
MotdFile = {d / "motd.txt"}
{password}
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 30
PingTimeout = 120
PongTimeout = 20

[Options]
PAM = no
Ident = no
DNS = no
OperCanUseMode = yes

{tls}
[Operator]
Name = {self.oper_name}
Password = {self.oper_password}

[Channel]
Name = {self.channel}
Topic = {self.topic}
Modes = tn
"""
        )

    def check_config(self) -> None:
        """`ngircd -t`: raises IrcServerError if the configuration does not parse."""
        result = subprocess.run(
            [*self.command(), "-t"], capture_output=True, text=True, timeout=10, check=False
        )
        if result.returncode != 0:
            raise IrcServerError(f"ngircd -t: {result.stdout}{result.stderr}")


@dataclass(eq=False)
class MiniIrcd(IrcServer):
    """miniircd (PyPI): registration, JOIN, PRIVMSG, TOPIC; no CAP, no 005, no TLS here."""

    kind: ClassVar[str] = "miniircd"
    binary: ClassVar[str] = sys.executable
    bind_failure: ClassVar[re.Pattern[str]] = re.compile(r"Could not bind port")
    # --verbose prints "Listening on port N." for each port, just before serving.
    ready_marker: ClassVar[re.Pattern[str]] = re.compile(r"Listening on port")

    def check_binary(self) -> None:
        if importlib.util.find_spec("miniircd") is None:
            pytest.fail(
                "miniircd: the miniircd package is missing from this virtualenv; "
                "pip install -r requirements/dev.txt",
                pytrace=False,
            )

    def command(self) -> list[str]:
        command = [self.binary, "-m", "miniircd", "--listen", self.host, "--ports", str(self.port)]
        command += ["--state-dir", str(self.directory / "state"), "--verbose"]
        if self.password:
            command += ["--password", self.password]
        if os.getuid() == 0 or os.getgid() == 0:
            command += ["--setuid", "root"]  # it refuses to run as root otherwise
        return command

    def write_config(self) -> None:
        (self.directory / "state").mkdir(parents=True, exist_ok=True)


T = TypeVar("T")


def in_parallel(*calls: Callable[[], T]) -> list[T]:
    """Run each call in a thread of its own; their results in order. The first exception is
    raised once all are done. For registering several clients on InspIRCd 3 in the same
    second: `in_parallel(lambda: irc_bot(server, "a"), lambda: irc_bot(server, "b", caps=[]))`.
    """
    results: list[T | BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as error:  # raised below, in the caller's thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def irc_certificate(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificate:
    """The session's self-signed certificate for 127.0.0.1 / ::1 / localhost."""
    return make_certificate(tmp_path_factory.mktemp("irc-tls"))


S = TypeVar("S", bound=IrcServer)


def _server_factory(
    cls: type[S],
    tmp_path_factory: pytest.TempPathFactory,
    certificate: TlsCertificate | None,
) -> Iterator[Callable[..., S]]:
    started: list[S] = []

    def start(**options: Any) -> S:
        tls = bool(options.pop("tls", cls.supports_tls))
        server = cls(
            directory=tmp_path_factory.mktemp(cls.kind),
            certificate=certificate if tls and cls.supports_tls else None,
            **options,
        )
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(graceful=False)


@pytest.fixture
def inspircd_factory(
    tmp_path_factory: pytest.TempPathFactory, irc_certificate: TlsCertificate
) -> Iterator[Callable[..., InspIRCd]]:
    """Start InspIRCd servers: `inspircd_factory(password="x", pingfreq=5, tls=False, ...)`."""
    yield from _server_factory(InspIRCd, tmp_path_factory, irc_certificate)


@pytest.fixture
def ngircd_factory(
    tmp_path_factory: pytest.TempPathFactory, irc_certificate: TlsCertificate
) -> Iterator[Callable[..., Ngircd]]:
    yield from _server_factory(Ngircd, tmp_path_factory, irc_certificate)


@pytest.fixture
def miniircd_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MiniIrcd]]:
    yield from _server_factory(MiniIrcd, tmp_path_factory, None)


@pytest.fixture
def inspircd(inspircd_factory: Callable[..., InspIRCd]) -> InspIRCd:
    """A fresh InspIRCd 3 for this test: `host`, `port`, `tls_port`, `cert_path`, `stop()`,
    `start()`, `process`."""
    return inspircd_factory()


@pytest.fixture
def ngircd(ngircd_factory: Callable[..., Ngircd]) -> Ngircd:
    """A fresh ngIRCd for this test, `#palaver` pre-created with a topic."""
    return ngircd_factory()


@pytest.fixture
def miniircd(miniircd_factory: Callable[..., MiniIrcd]) -> MiniIrcd:
    """A fresh miniircd for this test (plain port only)."""
    return miniircd_factory()


class BotFactory:
    """The `irc_bot` fixture: `irc_bot(server, nick, **connect_options)` returns a registered
    `IrcBot`; `irc_bot.many(server, [nicks], ...)` registers several at once (InspIRCd 3 only
    completes registrations at the turn of a second, so one after the other costs a second
    each). With `tls=True` the bot uses `server.tls_port` and trusts `server.cert_path`. Every
    bot quits at teardown.
    """

    def __init__(self) -> None:
        self.bots: list[IrcBot] = []

    def __call__(
        self, server: IrcServer, nick: str, *, tls: bool = False, **options: Any
    ) -> IrcBot:
        bot = IrcBot(nick)
        self.bots.append(bot)
        port = server.port
        if tls:
            if server.tls_port is None:
                raise AssertionError(f"{server.kind} has no TLS port")
            port = server.tls_port
            options.setdefault("ca_file", server.cert_path)
        bot.connect(server.host, port, nick, tls=tls, **options)
        return bot

    def many(self, server: IrcServer, nicks: Iterable[str], **options: Any) -> list[IrcBot]:
        """Several bots with the same options, registered in parallel."""
        return in_parallel(*(functools.partial(self, server, nick, **options) for nick in nicks))

    def quit_all(self, timeout: float = 0.5) -> None:
        """QUIT every bot, give the servers `timeout` s in all to close, then close."""
        for bot in self.bots:
            if bot.connected:
                with contextlib.suppress(OSError, AssertionError):
                    bot.send_raw("QUIT :test over")
        deadline = time.monotonic() + timeout
        for bot in self.bots:
            bot.wait_closed(max(0.0, deadline - time.monotonic()))
            bot.close()


@pytest.fixture
def irc_bot() -> Iterator[BotFactory]:
    """Connected `IrcBot`s on a server: see `BotFactory`."""
    factory = BotFactory()
    try:
        yield factory
    finally:
        factory.quit_all()
