"""Where archives are kept and how they are named.

An archive lives in the "exports" storage (settings.STORAGES) under
`<account id hex>/<export id hex>-<expiry, Unix seconds>.zip`. The expiry is in the name so the
periodic sweep (exports.services.delete_expired_files) removes expired files by listing the
storage alone, without entering any account's schema; the folder per account lets the purge of
an account find every file of its own, finished or left behind by a worker that died.
"""

import re
import uuid
from datetime import datetime

from django.core.files.storage import Storage, storages

NAME_RE = re.compile(r"^(?P<export>[0-9a-f]{32})-(?P<expires>\d{1,12})\.zip$")


def storage() -> Storage:
    return storages["exports"]


def folder_of(account_id: uuid.UUID | str) -> str:
    return uuid.UUID(str(account_id)).hex


def archive_name(*, account_id: uuid.UUID | str, export_id: uuid.UUID, expires_at: datetime) -> str:
    return f"{folder_of(account_id)}/{export_id.hex}-{int(expires_at.timestamp())}.zip"


def expiry_of(name: str) -> int | None:
    """The Unix time in an archive's file name; None for a name this app did not write."""
    found = NAME_RE.match(name.rsplit("/", 1)[-1])
    return int(found["expires"]) if found else None
