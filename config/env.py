"""Reading configuration from the environment, failing loudly on anything missing or malformed."""

import ipaddress
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


_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def setting(name: str, cast: Any = str, default: Any = _MISSING) -> Any:
    """Read one variable; raise ImproperlyConfigured naming it when it is missing or malformed.

    Stricter than django-environ: a boolean must be a recognisable word, and a required list
    must not be empty."""
    try:
        if cast is bool:
            raw = env.str(name, default=None)
            if raw is None or raw == "":
                if default is _MISSING:
                    raise ImproperlyConfigured(name)
                return default
            if raw.strip().lower() not in _BOOLS:
                raise ValueError(f"{raw!r} is not a boolean (use true or false)")
            return _BOOLS[raw.strip().lower()]
        if default is _MISSING:
            value = env.get_value(name, cast=cast)
            if value in ("", []):
                raise ImproperlyConfigured(name)
            return value
        return env.get_value(name, cast=cast, default=default)
    except ImproperlyConfigured:
        raise ImproperlyConfigured(
            f"{name} is not set; put it in the environment or in {_env_file} "
            "(`make .env` writes a development one)"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{name} has a bad value: {exc}") from None


def networks(name: str) -> Any:
    """A cast for setting(): a comma-separated list of IP networks (CIDR), each checked."""

    def cast(raw: str) -> list[str]:
        values = [v.strip() for v in str(raw).split(",") if v.strip()]
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP network such as 10.0.0.0/8") from None
        return values

    return cast
