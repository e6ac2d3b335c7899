"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a list of keys.

The newest key (first in SECRET_ENCRYPTION_KEYS) encrypts; every key in the list decrypts, so
keys rotate by prepending a new one, running `manage.py rotate_secrets`, then dropping the old.
"""

import hashlib
import hmac
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretDecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key."""


@cache
def _box(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("SECRET_ENCRYPTION_KEYS is empty")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"SECRET_ENCRYPTION_KEYS holds a malformed key ({exc}); generate one with `python -c "
            "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
        ) from None


def box() -> MultiFernet:
    return _box(tuple(settings.SECRET_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return box().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return box().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(
            "a stored secret does not decrypt with any key in SECRET_ENCRYPTION_KEYS"
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt a token under the newest key."""
    try:
        return box().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(
            "a stored secret does not decrypt with any key in SECRET_ENCRYPTION_KEYS"
        ) from None


def key_fingerprints() -> list[str]:
    """One short fingerprint per key of SECRET_ENCRYPTION_KEYS, in order: an HMAC of a fixed
    label under the key, so it names the key (a backup records which keys sealed its secrets)
    and reveals nothing of it."""
    return [
        hmac.new(key.encode(), b"palaver key fingerprint", hashlib.sha256).hexdigest()[:16]
        for key in settings.SECRET_ENCRYPTION_KEYS
    ]
