"""Turn start-up failures an operator can fix into one clear line instead of a traceback."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured


def _database_target() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    host = db.get("HOST") or db.get("OPTIONS", {}).get("host") or ""
    if not host or host.startswith("/"):
        return f"the local socket {host or '(default)'}, database {db.get('NAME')}"
    return f"{host}:{db.get('PORT') or 5432}/{db.get('NAME')}"


def _is_connection_failure(exc: BaseException) -> bool:
    from django.db import OperationalError

    if not isinstance(exc, OperationalError):
        return False
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("connection", "could not translate host", "does not exist", "timeout")
    )


@contextmanager
def exit_on_unreachable_database() -> Iterator[None]:
    try:
        yield
    except ImproperlyConfigured as exc:
        print(f"palaver: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:
        if not _is_connection_failure(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"palaver: cannot reach the database at {_database_target()}: {reason} "
            "(check DATABASE_URL, or unset it to use the embedded PostgreSQL)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
