"""EncryptedTextField: a secret stored as a Fernet token, read back as plain text in Python."""

from typing import Any

from django.db import models

from core import crypto


class EncryptedTextField(models.TextField):
    """Holds a secret. Empty string means "not set" and is stored as-is (nothing to hide).

    Tokens are not deterministic, so the column cannot be filtered on; it is only read and written.
    """

    description = "Text encrypted at rest"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if not value:
            return value
        return crypto.decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if not value:
            return value
        return crypto.encrypt(value)


def encrypted_fields(model: type[models.Model]) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
