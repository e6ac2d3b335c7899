"""Where an idle live stream's memory goes: tracemalloc over streams opened in process.

    .venv/bin/python benchmarks/sse_stream_memory.py [--streams 400] [--top 25]

Opens one warm-up stream, then --streams more (GET /chat/events/ through
`config.asgi.application`, the project's ASGI handler, driven directly: no uvicorn, no
sockets), and prints the Python memory they added, per stream, by file and by allocation
site. It runs in a database of its own (`palaver_bench_sse_memory`), dropped at the end.

stdout gets one line: `streams=… python_kb_per_stream=…`. The breakdown goes to stderr.
"""

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from provisioning import back_to_public, log, run_in_scratch_database  # noqa: E402

DEFAULT_DATABASE = "palaver_bench_sse_memory"


async def open_stream(app: Any, cookie: str, gone: asyncio.Event) -> "asyncio.Task[None]":
    """A stream held open until `gone` is set; returns once its first bytes were sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/chat/events/",
        "raw_path": b"/chat/events/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    opened = asyncio.Event()
    requested = [False]

    async def receive() -> dict[str, Any]:
        if not requested[0]:
            requested[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message.get("status", 200) != 200:
            raise RuntimeError(f"the stream answered {message['status']}")
        if message.get("body", b"").startswith(b"retry"):
            opened.set()

    task = asyncio.create_task(app(scope, receive, send))
    await opened.wait()
    return task


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command
    from sse_streams import make_users

    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    (cookie,), _ = make_users(1)
    from config.asgi import application

    async def main() -> None:
        gone = asyncio.Event()
        tasks = [await open_stream(application, cookie, gone)]
        await asyncio.sleep(0.5)
        gc.collect()
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
        for _ in range(args.streams):
            tasks.append(await open_stream(application, cookie, gone))
        await asyncio.sleep(1)
        gc.collect()
        after = tracemalloc.take_snapshot()
        n = args.streams
        by_site = after.compare_to(before, "traceback")
        total = sum(s.size_diff for s in by_site)
        for stat in sorted(after.compare_to(before, "filename"), key=lambda s: -s.size_diff)[
            : args.top
        ]:
            log(f"{stat.size_diff / n:8.0f} B/stream  {stat.traceback[0].filename}")
        log("--- by allocation site")
        for stat in by_site[: args.top]:
            log(f"{stat.size_diff / n:8.0f} B/stream")
            for line in stat.traceback.format()[-6:]:
                log(f"    {line}")
        gone.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(
            f"streams={n} python_kb_per_stream={total / n / 1024:.1f}", file=result_out, flush=True
        )

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    # One user holds every stream here.
    os.environ["LIMIT_SSE_STREAMS_PER_USER"] = str(args.streams + 10)
    return run_in_scratch_database(args, title="SSE stream memory", run=run)


if __name__ == "__main__":
    sys.exit(main())
