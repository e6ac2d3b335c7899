"""Operator-set limits on what an account holds (settings LIMIT_*, listed in the README).

A service checks a limit inside its transaction after locking the row that owns what it
counts (the account, or a server for its channels), so two requests at once cannot both see
one place left and both take it."""

import contextlib

from django.conf import settings
from django.core.exceptions import ValidationError

from tenancy import NoTenantError, current_account


class LimitReached(ValidationError):
    """Saving would pass a limit. A ValidationError, so a form page shows it as a form error."""


def lock_account() -> None:
    """Hold the active account's row until the transaction ends: the account's limit checks
    run one at a time."""
    from accounts.models import Account

    account = current_account()
    if account is None:
        raise NoTenantError("a limit check")
    Account.objects.select_for_update().filter(pk=account.pk).values_list("pk").first()


def check_limit(*, used: int, adding: int = 1, setting: str, what: str) -> None:
    """Refuse when `used` plus `adding` would pass the limit `setting` (a count, or bytes)."""
    limit: int = getattr(settings, setting)
    if used + adding > limit:
        raise LimitReached(
            f"This account has reached its limit of {limit:,} {what} ({setting}).",
            code="limit_reached",
        )


def take_allowance(*, key: str, wanted: int, limit: int, window_seconds: int = 60) -> int:
    """How many of `wanted` actions fit in the `limit` per window counted under `key` (in the
    cache, i.e. Redis, so every process shares it): those are counted, the rest are not. The
    window starts with its first action (INCRBY keeps the expiry, so two workers at once
    cannot both take the last one)."""
    from django.core.cache import cache

    if wanted <= 0:
        return 0
    cache.add(key, 0, timeout=window_seconds)
    try:
        total = cache.incr(key, wanted)
    except ValueError:  # the window ended between the two calls
        cache.add(key, 0, timeout=window_seconds)
        total = cache.incr(key, wanted)
    over = max(0, total - limit)
    refused = min(wanted, over)
    if refused:
        with contextlib.suppress(ValueError):  # the window may have ended meanwhile
            cache.decr(key, refused)
    return wanted - refused
