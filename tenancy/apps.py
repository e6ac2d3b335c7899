from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "tenancy"

    def ready(self) -> None:
        from celery.signals import task_postrun
        from django.core.signals import request_finished

        from tenancy.db_memory import recycle_connections

        # A connection kept between requests or tasks (DATABASE_CONN_MAX_AGE > 0) is recycled
        # between them once it has touched too many schemas; with 0 Django has closed it.
        request_finished.connect(recycle_connections, dispatch_uid="tenancy.recycle_connections")
        task_postrun.connect(recycle_connections, dispatch_uid="tenancy.recycle_connections")
