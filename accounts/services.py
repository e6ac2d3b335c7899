"""Writes on identity: sign-up, sign-in with throttling, sessions."""

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

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


@transaction.atomic
def set_password(*, user: User, new_password: str, keep_session_key: str | None) -> None:
    """Give the user a new password and end every session of theirs but `keep_session_key` (the
    one that changed it; None for a reset by email, which ends them all). Sessions left alive
    anyway would be signed out by Django's session auth hash on their next request; deleting
    them also takes them off the sessions page and ends their live streams."""
    user.set_password(new_password)
    user.save(update_fields=["password"])
    Session.objects.filter(user=user).exclude(session_key=keep_session_key or "").delete()


def request_password_reset(*, email: str, client: str | None, site_url: str) -> int:
    """Ask for a reset link for `email`. Returns the seconds the client must wait when it asked
    too often, else 0. Whether the address has an account shows nowhere in the outcome: the
    lookup and the email happen in a Celery task, and requests past the per-email limit get
    the same answer without an email."""
    wait = throttle.over_limit(
        f"password-reset:client:{client_key(client)}",
        limit=settings.PASSWORD_RESET_MAX_PER_CLIENT,
        window_seconds=settings.PASSWORD_RESET_WINDOW_SECONDS,
    )
    if wait:
        return wait
    if throttle.over_limit(
        f"password-reset:email:{email_key(email)}",
        limit=settings.PASSWORD_RESET_MAX_PER_EMAIL,
        window_seconds=settings.PASSWORD_RESET_WINDOW_SECONDS,
    ):
        return 0
    from accounts.tasks import send_password_reset

    email = normalize_email(email)
    transaction.on_commit(lambda: send_password_reset.delay(email=email, site_url=site_url))
    return 0


def send_password_reset(*, email: str, site_url: str) -> bool:
    """Email a one-time reset link to the active user with this address, if there is one.
    The link carries Django's reset token: it expires after PASSWORD_RESET_TIMEOUT and stops
    working once the password changes."""
    user = User.objects.filter(email=normalize_email(email), is_active=True).first()
    if user is None or not user.has_usable_password():
        return False
    path = reverse(
        "accounts:password_reset_confirm",
        kwargs={
            "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
        },
    )
    context = {
        "link": site_url.rstrip("/") + path,
        "within": throttle.describe_wait(settings.PASSWORD_RESET_TIMEOUT),
        "email": user.email,
    }
    send_mail(
        subject="Reset your Palaver password",
        message=render_to_string("accounts/email/password_reset.txt", context),
        from_email=None,
        recipient_list=[user.email],
    )
    return True


def revoke_session(*, user: User, public_id: uuid.UUID) -> str | None:
    """End one of the user's sessions. Returns its session key, or None if it is not theirs
    (or gone)."""
    session = Session.objects.filter(user=user, public_id=public_id).first()
    if session is None:
        return None
    key = session.session_key  # delete() sets the primary key to None
    session.delete()
    return key
