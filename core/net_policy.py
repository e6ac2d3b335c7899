"""The one address policy for outbound connections made on a user's behalf (IRC servers today;
the agents' URL fetch and knowledge imports later).

A user names a host; we resolve it, check every address it resolves to, and hand back the
checked addresses so the caller connects to them and never resolves the name again (a second
lookup is what DNS rebinding exploits). TLS still verifies the certificate against the name.

Refused by default: loopback, private, link-local, shared (CGNAT, 100.64.0.0/10), multicast,
reserved, unspecified, broadcast, site-local, and anything else the IANA special-purpose
registries do not mark globally reachable. IPv6 forms that carry an IPv4 address (IPv4-mapped
::ffff:a.b.c.d, 6to4 2002::/16, NAT64 64:ff9b::/96) are judged by that IPv4 address.

Operators adjust it with two CIDR lists (settings OUTBOUND_ALLOWED_NETWORKS and
OUTBOUND_DENIED_NETWORKS). Precedence: denied beats allowed beats the built-in rules, so a
network can always be closed, and an internal range opens only where it is not also denied.
"""

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT = 10.0

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Special-purpose ranges that Python 3.11's is_global still calls global.
_ALSO_REFUSED = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215): a private network
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated, still routed internally)
)

# getaddrinfo cannot be cancelled; a few threads bound how many stuck lookups pile up.
_resolver_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="net-policy-dns")


class NetPolicyError(OSError):
    """The host cannot be connected to; the message is safe to show to the user. An OSError,
    so callers that already handle a failed connect handle a refusal the same way."""


class AddressRefused(NetPolicyError):
    """The host is, or resolves to, an address the policy refuses."""


class ResolutionFailed(NetPolicyError):
    """The name did not resolve (no such name, or no answer in time)."""


@dataclass(frozen=True)
class Destination:
    """A host that passed the policy: connect to `addresses` (in resolver order), never to
    `host` again; `host` is for TLS (server_hostname) and HTTP's Host header."""

    host: str
    port: int
    addresses: tuple[IPAddress, ...]


@lru_cache(maxsize=8)
def _networks(values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def _allowed() -> tuple[IPNetwork, ...]:
    return _networks(tuple(getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", ())))


def _denied() -> tuple[IPNetwork, ...]:
    return _networks(tuple(getattr(settings, "OUTBOUND_DENIED_NETWORKS", ())))


def _in(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    # A scope id (fe80::1%eth0) does not change which network an address is in.
    plain = ipaddress.ip_address(str(ip).split("%", 1)[0])
    return any(plain.version == net.version and plain in net for net in networks)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if _in(ip, (_NAT64,)):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _category(ip: IPAddress) -> str | None:
    """Why the built-in rules refuse `ip`, as an adjective; None when it is public."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _SHARED:
            return "shared (carrier-grade NAT)"
        if ip == _BROADCAST:
            return "broadcast"
    elif ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved or _in(ip, _ALSO_REFUSED) or not ip.is_global:
        return "reserved"
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why `ip` may not be connected to, as a noun phrase ("a private address"), or None when
    it may."""
    if _in(ip, _denied()):
        return "an address in a network this service does not connect to"
    if _in(ip, _allowed()):
        return None
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner = refusal(embedded)
        return f"a form of {embedded}, {inner}" if inner else None
    category = _category(ip)
    if category is None:
        return None
    article = "an" if category[0] in "aeiou" else "a"
    return f"{article} {category} address"


def check_addresses(host: str, port: int, addresses: Iterable[IPAddress]) -> Destination:
    """Every address must pass: a name that resolves to one public and one internal address is
    refused whole, so no connection attempt order can reach the internal one."""
    checked = tuple(dict.fromkeys(addresses))
    if not checked:
        raise ResolutionFailed(f"{host} has no address")
    for ip in checked:
        reason = refusal(ip)
        if reason is not None:
            if _literal(host) is not None:
                raise AddressRefused(f"refused: {ip} is {reason}")
            raise AddressRefused(f"refused: {host} resolves to {ip}, {reason}")
    return Destination(host=host, port=port, addresses=checked)


def _addresses(infos: list[tuple[Any, ...]]) -> list[IPAddress]:
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str, port: int, *, timeout: float = RESOLVE_TIMEOUT) -> Destination:
    """Resolve and check (blocking). Raises AddressRefused or ResolutionFailed."""
    literal = _literal(host)
    if literal is not None:
        return check_addresses(host, port, [literal])
    future = _resolver_pool.submit(
        socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    try:
        infos = future.result(timeout)
    except FutureTimeout:
        raise ResolutionFailed(f"{host} did not resolve in time") from None
    except (OSError, UnicodeError):
        raise ResolutionFailed(f"{host} does not resolve") from None
    return check_addresses(host, port, _addresses(infos))


async def aresolve(host: str, port: int, *, timeout: float = RESOLVE_TIMEOUT) -> Destination:
    """Resolve and check (asyncio). Raises AddressRefused or ResolutionFailed."""
    literal = _literal(host)
    if literal is not None:
        return check_addresses(host, port, [literal])
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
            timeout,
        )
    except TimeoutError:
        raise ResolutionFailed(f"{host} did not resolve in time") from None
    except (OSError, UnicodeError):
        raise ResolutionFailed(f"{host} does not resolve") from None
    return check_addresses(host, port, _addresses(infos))


async def open_connection(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection through the policy: resolved and checked now, at every call, then
    connected to the checked addresses in turn (TLS verifies `host`). The caller bounds the
    time (asyncio.timeout); refusals raise before any packet is sent."""
    destination = await aresolve(host, port)
    last: OSError | None = None
    for ip in destination.addresses:
        try:
            return await asyncio.open_connection(
                str(ip), port, ssl=ssl_context, limit=limit,
                server_hostname=host.strip("[]") if ssl_context is not None else None,
            )  # fmt: skip
        except OSError as exc:
            last = exc
    assert last is not None  # at least one address was tried
    raise last


def create_connection(host: str, port: int, *, timeout: float = RESOLVE_TIMEOUT) -> socket.socket:
    """socket.create_connection through the policy, for blocking clients (an HTTP client's
    transport, say): connected to a checked address, never to a fresh lookup of `host`."""
    destination = resolve(host, port, timeout=timeout)
    last: OSError | None = None
    for ip in destination.addresses:
        try:
            return socket.create_connection((str(ip), port), timeout=timeout)
        except OSError as exc:
            last = exc
    assert last is not None
    raise last
