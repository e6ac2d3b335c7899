"""Writes on identity: sign-up, sign-in with throttling, sessions."""

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest

from accounts import throttle
from accounts.models import Account, Session, User, normalize_email
from accounts.throttle import client_key, email_key
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


def count_sign_up(*, client: str | None) -> int:
    """Count a sign-up attempt from the client; each builds a schema, so a client gets
    SIGN_UP_MAX_PER_CLIENT per window. Returns the seconds to wait when over, else 0."""
    return throttle.over_limit(
        f"sign-up:client:{client_key(client)}",
        limit=settings.SIGN_UP_MAX_PER_CLIENT,
        window_seconds=settings.SIGN_UP_WINDOW_SECONDS,
    )


@dataclass(frozen=True)
class SignInResult:
    user: User | None
    throttled: bool = False
    retry_after_seconds: int = 0


def throttled_message(retry_after_seconds: int) -> str:
    return f"Too many failed sign-ins. Try again in {throttle.describe_wait(retry_after_seconds)}."


def check_credentials(
    *, request: HttpRequest | None, email: str, password: str, client: str | None
) -> SignInResult:
    """Authenticate, throttling failures per (email, client) pair and per client.

    Not per email alone: then anyone could lock a person out by failing five times with their
    address. Each attempt is counted before the password is checked, so parallel guesses cannot
    slip past the limit; a success gives its count back and clears the pair's."""
    email = normalize_email(email)
    client_id = client_key(client)
    window = settings.SIGN_IN_WINDOW_SECONDS
    counters = [
        (
            f"sign-in:pair:{client_id}:{email_key(email)}",
            settings.SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT,
        ),
        (f"sign-in:client:{client_id}", settings.SIGN_IN_MAX_FAILURES_PER_CLIENT),
    ]
    # Every counter counts this attempt, even when an earlier one already refuses it.
    waits = [throttle.over_limit(k, limit=n, window_seconds=window) for k, n in counters]
    if any(waits):
        return SignInResult(user=None, throttled=True, retry_after_seconds=max(waits))
    user = authenticate(request, username=email, password=password)
    if user is None:
        return SignInResult(user=None)
    throttle.reset(counters[0][0])
    throttle.hit(counters[1][0], window_seconds=window, amount=-1)
    assert isinstance(user, User)
    return SignInResult(user=user)


def revoke_session(*, user: User, public_id: uuid.UUID) -> str | None:
    """End one of the user's sessions. Returns its session key, or None if it is not theirs
    (or gone)."""
    session = Session.objects.filter(user=user, public_id=public_id).first()
    if session is None:
        return None
    key = session.session_key  # delete() sets the primary key to None
    session.delete()
    return key
