"""Loaded first in the pgvector child run (`-p tests.pgvector_child`, tests/pgvector_support.py):
points config.embedded at the child's own directory before the settings start the embedded
PostgreSQL there, so the child never starts, uses or stops this checkout's servers (var/)."""

import os
from pathlib import Path

from config import embedded

CHILD_ENV = "PALAVER_PGVECTOR_CHILD"

_directory = os.environ.get(CHILD_ENV)
if _directory:
    embedded.VAR_DIR = Path(_directory)
    embedded.PG_DATA_DIR = Path(_directory) / "pgdata"
