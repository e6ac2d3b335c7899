"""Fixed-window counters in Redis for throttling sign-in, sign-up and password resets.

A counter is one Redis key: INCR, with its expiry set by the same Lua script the first time
(or whenever it has none), so concurrent requests can neither lose a count nor leave a key that
never expires. Django's cache API cannot do this: RedisCache.incr() checks EXISTS then INCRs,
and add() + incr() races with expiry.
"""

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from accounts.models import normalize_email

# Returns {count, seconds left}. A key without an expiry (TTL -1) gets one: a counter that was
# written any other way must not lock anyone out forever.
_HIT = """
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


@dataclass(frozen=True)
class Count:
    value: int
    seconds_left: int


def _redis() -> tuple[RedisCache, Any]:
    # The cache's own connection pool and key prefix: counters live (and are cleared) with it.
    cache = caches["default"]
    if not isinstance(cache, RedisCache):
        raise ImproperlyConfigured("Throttling needs the default cache to be Django's RedisCache")
    return cache, cache._cache.get_client(write=True)  # type: ignore[attr-defined]


def hit(key: str, *, window_seconds: int, amount: int = 1) -> Count:
    """Add `amount` to the counter (creating it for `window_seconds`); return the new value."""
    cache, client = _redis()
    value, ttl = client.eval(_HIT, 1, cache.make_and_validate_key(key), window_seconds, amount)
    return Count(value=int(value), seconds_left=int(ttl))


def over_limit(key: str, *, limit: int, window_seconds: int) -> int:
    """Count one attempt; return the seconds until the window ends if this attempt is past
    `limit`, else 0. Counting first and deciding after is what keeps parallel attempts from
    all passing a check made before any of them counted."""
    count = hit(key, window_seconds=window_seconds)
    return max(1, count.seconds_left) if count.value > limit else 0


def describe_wait(seconds: int) -> str:
    minutes = max(1, -(-seconds // 60))
    return f"{minutes} minute{'s' if minutes > 1 else ''}"


def reset(key: str) -> None:
    cache, client = _redis()
    client.delete(cache.make_and_validate_key(key))


def client_address(request: HttpRequest) -> str | None:
    """The client's IP address: REMOTE_ADDR, or, when that is one of TRUSTED_PROXIES, the
    right-most X-Forwarded-For entry that is not a trusted proxy (entries further left are
    whatever the client chose to send)."""
    remote = _parse_ip(request.META.get("REMOTE_ADDR", ""))
    if remote is None:
        return None
    trusted = settings.TRUSTED_PROXIES
    if not _is_trusted(remote, trusted):
        return str(remote)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for entry in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        address = _parse_ip(entry)
        if address is None:
            break  # a malformed hop: trust nothing beyond it
        if not _is_trusted(address, trusted):
            return str(address)
        remote = address
    return str(remote)


def client_key(address: str | None) -> str:
    """The throttling identity of a client address: IPv4 as is, IPv6 by its /64, because one
    subscriber usually holds a whole /64 and can hop between its addresses at will."""
    ip = _parse_ip(address or "")
    if ip is None:
        return "unknown"
    if ip.version == 6:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def email_key(email: str) -> str:
    """A counter key part for an email address, taken after normalising it (so ALICE@ and
    alice@ share a count): hashed, which keeps keys short and addresses out of Redis."""
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_trusted(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    return any(ip in network for network in networks)


def add_key_fragments(*, account: Any, key_fragments: set[str], **_: object) -> None:
    """tenancy.services.account_deleting: the counters that name an address by its hash
    (sign-in:pair:<client>:<hash>, password-reset:email:<hash>) hold no account id; the
    purge finds them by these hashes."""
    emails = account.users.values_list("email", flat=True)
    key_fragments.update(email_key(email) for email in emails)
