"""Reading configuration from the environment, failing loudly on anything missing or malformed."""

from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
_env_file = BASE_DIR / ".env"
if _env_file.exists():
    environ.Env.read_env(str(_env_file), overwrite=False)

_MISSING = object()


def setting(name: str, cast: Any = str, default: Any = _MISSING) -> Any:
    """Read one variable; raise ImproperlyConfigured naming it when it is missing or malformed."""
    try:
        if default is _MISSING:
            return env.get_value(name, cast=cast)
        return env.get_value(name, cast=cast, default=default)
    except ImproperlyConfigured:
        raise ImproperlyConfigured(
            f"{name} is not set; put it in the environment or in {_env_file} "
            "(`make .env` writes a development one)"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{name} has a bad value: {exc}") from None
