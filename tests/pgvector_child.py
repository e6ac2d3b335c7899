"""Loaded first in the pgvector child run (`-p tests.pgvector_child`, tests/pgvector_support.py):
points config.embedded's PostgreSQL at the child's own directory before the settings start it
there, so the child never starts, uses or stops this checkout's PostgreSQL (var/pgdata). Redis
is the parent's: REDIS_URL's, or with it empty the checkout's embedded one, which the parent's
settings already started."""

import os
from pathlib import Path

from config import embedded

CHILD_ENV = "PALAVER_PGVECTOR_CHILD"

_directory = os.environ.get(CHILD_ENV)
if _directory:
    embedded.PG_DATA_DIR = Path(_directory) / "pgdata"
