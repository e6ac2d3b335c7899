"""Celery tasks that work on account data.

tenant-schemas-celery stamps every message with the schema active where it was enqueued and
switches the worker into it before the task runs. On top of that, an account task refuses to be
enqueued, or to run, on the public schema: account work without an account is an error, never a
silent run against public.
"""

from typing import Any

from config.celery import app
from tenancy.context import NoTenantError, is_public


class AccountTask(app.Task):
    abstract = True

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        headers = options.get("headers") or {}
        if is_public() and not headers.get("_schema_name"):
            raise NoTenantError(f"task {self.name}")
        return super().apply_async(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if is_public():
            raise NoTenantError(f"task {self.name}")
        return super().__call__(*args, **kwargs)


def account_task(*args: Any, **options: Any) -> Any:
    """Declare a task on account data: `@account_task(name=...)`."""
    options.setdefault("base", AccountTask)
    return app.task(*args, **options)
