"""Where backup archives are kept: the "backups" storage of settings.STORAGES (a directory by
default, any Django storage otherwise: an S3-compatible bucket through django-storages).

A registry row remembers the storage alias it was saved to, so changing BACKUP_STORAGE_BACKEND
later does not orphan what was already kept: prune deletes each file where it was put, as long
as that alias is still configured.
"""

import hashlib
import uuid
from datetime import datetime
from typing import IO

from django.core.files import File
from django.core.files.storage import Storage, storages

STORAGE_ALIAS = "backups"
# What an archive's file name ends with in the storage: a plain tar (lifecycle.archive).
SUFFIX = ".palaver-backup.tar"
_CHUNK = 1024 * 1024


def storage(alias: str = STORAGE_ALIAS) -> Storage:
    return storages[alias]


def name_for(*, account_id: uuid.UUID, created_at: datetime, kind: str) -> str:
    """`<account id>/<UTC time>-<kind>.palaver-backup.tar`: an account's backups side by side, in
    the order they were made."""
    return f"{account_id}/{created_at:%Y%m%dT%H%M%SZ}-{kind}{SUFFIX}"


def checksum_and_size(handle: IO[bytes]) -> tuple[str, int]:
    """SHA-256 and length of a file, read from its start; leaves it at its start."""
    digest = hashlib.sha256()
    size = 0
    handle.seek(0)
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    handle.seek(0)
    return digest.hexdigest(), size


def save(*, handle: IO[bytes], name: str, alias: str = STORAGE_ALIAS) -> str:
    """Store a file; return the name the storage gave it (it never overwrites another)."""
    handle.seek(0)
    return storage(alias).save(name, File(handle, name=name))


def delete(*, name: str, alias: str = STORAGE_ALIAS) -> None:
    """Delete a stored archive; one already gone is not an error."""
    if name:
        storage(alias).delete(name)
