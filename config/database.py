"""The one place a Django database entry becomes something another process can connect with.

Child processes (the web server the tests start, `scripts/run_all.py`'s children) and helper
connections (a test's admin connection) must reach exactly the server the parent resolved. A
DATABASES entry can name that server in two places: HOST/PORT, or OPTIONS (the embedded
PostgreSQL's URL puts its socket directory in `?host=`, which django-environ moves to
OPTIONS['host']). Django gives HOST/PORT precedence over OPTIONS (see the postgresql backend's
get_connection_params); reading only HOST sends a helper to libpq's default socket or to
127.0.0.1:5432 instead, i.e. to some other server. Both functions here follow Django's order.
"""

from collections.abc import Mapping
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode

import psycopg

# The DATABASES keys Django hands to libpq on top of OPTIONS, and libpq's names for them.
_DJANGO_TO_LIBPQ = {"NAME": "dbname", "USER": "user", "PASSWORD": "password", "HOST": "host"}


@cache
def _libpq_keywords() -> frozenset[str]:
    """Every connection keyword this libpq knows (OPTIONS may also hold psycopg- or
    Django-only keys such as isolation_level, which a connection string must not carry)."""
    return frozenset(option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults())


def connection_params(db: Mapping[str, Any], *, dbname: str | None = None) -> dict[str, Any]:
    """libpq keyword parameters for the server and database a DATABASES entry resolves to, for
    `psycopg.connect(**params)`. `dbname` connects to another database on the same server
    (e.g. "postgres" for administrative statements)."""
    keywords = _libpq_keywords()
    params = {
        key: str(value)
        for key, value in (db.get("OPTIONS") or {}).items()
        if key in keywords and value is not None and value != ""
    }
    for django_key, libpq_key in _DJANGO_TO_LIBPQ.items():
        if db.get(django_key):
            params[libpq_key] = str(db[django_key])
    if db.get("PORT"):
        params["port"] = str(db["PORT"])
    if dbname is not None:
        params["dbname"] = dbname
    return params


def database_url(db: Mapping[str, Any], *, dbname: str | None = None) -> str:
    """The same parameters as a `postgres://` URL, for DATABASE_URL in a child's environment.

    A socket directory (a host starting with '/') goes in the query, `?host=/dir`, the form both
    libpq and django-environ read; a TCP host stays in the authority, where error messages and
    people look for it. Every other parameter (port, sslmode, ...) rides along in the query."""
    params = connection_params(db, dbname=dbname)
    auth = ""
    if "user" in params:
        auth = quote(params.pop("user"), safe="")
        if "password" in params:
            auth += ":" + quote(params.pop("password"), safe="")
        auth += "@"
    host = params.get("host", "")
    netloc = ""
    if host and not host.startswith("/") and "," not in host:
        netloc = quote(params.pop("host"), safe="")
        if "port" in params and "," not in params["port"]:
            netloc += ":" + params.pop("port")
    name = quote(params.pop("dbname", ""), safe="")
    # quote, not quote_plus: libpq reads "+" literally.
    query = f"?{urlencode(sorted(params.items()), quote_via=quote)}" if params else ""
    return f"postgres://{auth}{netloc}/{name}{query}"
