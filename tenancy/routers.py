from typing import Any

from django.conf import settings
from django.db import models

from tenancy.context import NoTenantError, is_public

ACCOUNT_APP_LABELS = frozenset(label.rsplit(".", 1)[-1] for label in settings.TENANT_APPS)


class AccountSchemaRouter:
    """Refuses to read or write account models while the connection is on the public schema,
    where the tables do not exist; otherwise a query would fail obscurely or, worse, succeed."""

    def _check(self, model: type[models.Model]) -> None:
        if model._meta.app_label in ACCOUNT_APP_LABELS and is_public():
            raise NoTenantError(model._meta.label)

    def db_for_read(self, model: type[models.Model], **hints: Any) -> None:
        self._check(model)

    def db_for_write(self, model: type[models.Model], **hints: Any) -> None:
        self._check(model)
