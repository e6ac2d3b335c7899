"""The web's ASGI handler: Django's (with core.uploads' bounded body), and a sync view served on
one thread, in one hop from the event loop.

Django's ASGI path costs a sync view five thread hops, each to a thread made for the request
(asgiref's ThreadSensitiveContext): `request_started` (its receivers are sync); the middleware
chain (sync: several of ours, and Django's own in a sync chain); back to the loop for
`_get_response_async` (async_to_sync); out again for the view (and again for a
TemplateResponse's render); and `response.close()` after sending. On one worker under load
those hops, and a new thread per request, cost more than the bare middleware does
(docs/benchmarks.md, "The signed-in request's fixed cost").

Here a request to a sync view runs `request_started`, Django's sync handler (the same
middleware, loaded with is_async=False) and, when the response is not streamed, its close(),
all in one call on a pool thread; the loop only sends the bytes. Requests to async views (the
live streams) take Django's path unchanged.

What differs from Django's path, and why it is safe here:
- the sync work runs on a reused pool thread, not a fresh one: Django keeps database
  connections per thread, and `request_finished` (in close()) hands the pooled connection back
  every request, as before; the tenant schema is set and reset by
  tenancy.middleware.AccountSchemaMiddleware on every request;
- a non-streamed response is closed before its bytes are sent: its content is already bytes,
  so close() (request_finished, uploaded files) has nothing left to wait for;
- a client that disconnects while a sync view runs no longer cancels the awaiting task; the
  view ran to its end on its thread in Django's path too (a thread cannot be cancelled).
"""

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, HttpRequest
from django.http.response import HttpResponseBase
from django.urls import Resolver404, get_resolver, set_script_prefix

from core.uploads import BoundedBodyASGIHandler


@lru_cache(maxsize=4096)
def _is_async_view(urlconf: str, path_info: str) -> bool:
    """Whether Django would await the view `path_info` resolves to (an unresolved path is
    served by the sync chain: its 404 page is sync)."""
    try:
        match = get_resolver(urlconf).resolve(path_info)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


def _path_info(scope: dict[str, Any]) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class PalaverASGIHandler(BoundedBodyASGIHandler):
    """Sync views in one hop on a pool thread (module docstring); async views as Django does."""

    def __init__(self) -> None:
        super().__init__()
        self._sync_handler = BaseHandler()
        self._sync_handler.load_middleware(is_async=False)
        # One thread per pooled connection: a sync request may hold one, so more threads would
        # only wait on the pool (and the live streams' batcher keeps the loop's default pool).
        workers = max(4, int(getattr(settings, "DATABASE_POOL_MAX_SIZE", 8)))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="web-sync")

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        if _is_async_view(settings.ROOT_URLCONF, _path_info(scope)):
            await super().handle(scope, receive, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None
            body_file.close()
            await signals.request_started.asend(sender=self.__class__, scope=scope)
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return
        response = await sync_to_async(
            self._serve, thread_sensitive=False, executor=self._executor
        )(scope, request)
        try:
            await self.send_response(response, send)
        finally:
            if response.streaming:
                await sync_to_async(response.close)()
            body_file.close()

    def _serve(self, scope: Any, request: HttpRequest) -> HttpResponseBase:
        """request_started, the sync middleware and view, and (unless the response streams)
        its close(): all on this one thread."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        response = self._sync_handler.get_response(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        if not response.streaming:
            response.close()
        return response
