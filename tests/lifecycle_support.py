"""What the lifecycle tests share: the backups storage on a test's own directory, and the purge
of an account."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from accounts.models import Account


@pytest.fixture
def backup_dir(settings: Any, tmp_path: Path) -> Path:
    """The "backups" storage on a directory of the test's own."""
    directory = tmp_path / "backups"
    settings.STORAGES = {
        **settings.STORAGES,
        "backups": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(directory), "base_url": None},
        },
    }
    return directory


def purge(account: "Account") -> None:
    """Remove the account for good, as the purge does (tenancy.services.purge_account)."""
    from tenancy.services import purge_account

    purge_account(account=account)
