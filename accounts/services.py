"""Writes on identity: sign-up, sign-in with throttling, sessions."""

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.cache import cache
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest

from accounts.models import Account, Session, User, normalize_email
from tenancy.services import provision_account


class EmailTakenError(ValueError):
    pass


class AccountNameTakenError(ValueError):
    pass


@transaction.atomic
def sign_up(
    *,
    account_name: str,
    email: str,
    password: str | None,
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    """Create a person with an account and a schema of their own, all or nothing.

    Raises django.core.exceptions.ValidationError for a malformed email address."""
    email = normalize_email(email)
    validate_email(email)
    if User.objects.filter(email=email).exists():
        raise EmailTakenError(email)
    if Account.objects.filter(name__iexact=account_name.strip()).exists():
        raise AccountNameTakenError(account_name)
    try:
        with transaction.atomic():
            account = provision_account(name=account_name)
            user = User(
                account=account,
                email=email,
                is_account_admin=True,
                is_staff=is_staff,
                is_superuser=is_superuser,
            )
            user.set_password(password)
            user.save()
    except IntegrityError as exc:
        # A concurrent sign-up won the race for the same email or account name.
        if "accounts_user_email" in str(exc):
            raise EmailTakenError(email) from exc
        if "account_name_unique_ci" in str(exc):
            raise AccountNameTakenError(account_name) from exc
        raise
    return user


@dataclass(frozen=True)
class SignInResult:
    user: User | None
    throttled: bool = False
    retry_after_seconds: int = 0


def _throttle_keys(email: str, ip: str | None) -> list[tuple[str, int]]:
    keys = [(f"sign-in:email:{email}", settings.SIGN_IN_MAX_FAILURES_PER_EMAIL)]
    if ip:
        keys.append((f"sign-in:ip:{ip}", settings.SIGN_IN_MAX_FAILURES_PER_IP))
    return keys


def check_credentials(*, request: HttpRequest, email: str, password: str) -> SignInResult:
    """Authenticate, counting failures per email and per client address in fixed windows."""
    from accounts.middleware import client_ip

    email = normalize_email(email)
    keys = _throttle_keys(email, client_ip(request))
    window = settings.SIGN_IN_WINDOW_SECONDS
    for key, limit in keys:
        if (cache.get(key) or 0) >= limit:
            return SignInResult(user=None, throttled=True, retry_after_seconds=window)
    user = authenticate(request, username=email, password=password)
    if user is None:
        for key, _limit in keys:
            cache.add(key, 0, timeout=window)
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, timeout=window)
        return SignInResult(user=None)
    cache.delete(keys[0][0])
    assert isinstance(user, User)
    return SignInResult(user=user)


def revoke_session(*, user: User, session_key: str) -> bool:
    """End one of the user's sessions. Returns False if it is not theirs (or gone)."""
    deleted, _ = Session.objects.filter(user=user, session_key=session_key).delete()
    return bool(deleted)
