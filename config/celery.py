"""The Celery app. Tasks carry the schema of the code that enqueued them (tenant-schemas-celery)."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = CeleryApp("palaver")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
