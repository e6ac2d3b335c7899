"""Benchmark: every signed-in page against a bare Django view, in one run, on one uvicorn worker.

    .venv/bin/python benchmarks/pages.py [--accounts 1000] [--users 50] [--seconds 5]
        [--rounds 3] [--connections 16] [--project DIR] [--database NAME] [--keep] [--reuse]

DESIGN.md's target: signed-in pages at >= 50% of a bare Django view's requests/s with 1,000
accounts in the database. This provisions --accounts accounts (tenancy.services, as sign-up
does); --users of them get a signed-in user, a server with three channels, 100 lines in the
first (the chat page's page size), five highlights (notifications), a knowledge base. With
--keep the database stays, and --reuse starts from it (only sessions are made anew).

The web is one uvicorn worker (`config.asgi:application`, DEBUG off) with the settings of
benchmarks/_pages_settings.py: the project's, plus the bare view /bench/bare/ (a view returning
two bytes, through the whole middleware stack, unauthenticated), which only those settings
route, and two signed-in rows of their own: `empty_signed_in` (login_required, two bytes: the
fixed cost of a signed-in request) and `chrome` (base.html with no content: the nav and user
menu every page shares). Its Redis is a redis-server of the benchmark's own (as
benchmarks/sse_streams.py does).

The load generator is wrk (Debian package `wrk`: `apt-get install wrk`), --connections
connections, one thread per core, for --seconds per measurement. A signed-in page is requested
for the --users users in turn (a Lua script rotates the session cookie and the URL with each
request), so the worker serves many accounts, as it would. Each round measures the bare view,
then each page in turn; --rounds rounds interleave them so that machine noise hits both alike.
Every URL is first fetched once and must answer 200 (not a redirect to sign-in); wrk's count
of non-2xx/3xx answers must stay 0.

stdout gets exactly one line: for the bare view and each page, `<page>_rps=` (median over the
rounds), `<page>_p50_ms=`, `<page>_p99_ms=` (medians), `<page>_ratio=` (page requests/s over
the bare view's, medians of one run), then `min_ratio=` and `min_page=` (the worst page).
"""

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    run_in_scratch_database,
    server_url,
    with_database,
)
from sse_streams import free_port, redis_server  # noqa: E402

DEFAULT_DATABASE = "bench_speed_pages"
BARE = "bare"
# (name, path template): {server}, {channel} are the user's own ids.
PAGES: list[tuple[str, str]] = [
    # The fixed cost of a signed-in request (benchmarks/_pages_urls.py): login_required and
    # two bytes; then base.html with no content (the chrome every page shares).
    ("empty_signed_in", "/bench/empty/"),
    ("chrome", "/bench/chrome/"),
    ("dashboard", "/"),
    ("servers", "/servers/"),
    ("server", "/servers/{server}/"),
    ("chat", "/chat/{channel}/"),
    ("search", "/search/?q=benchmark"),
    ("notifications", "/notifications/"),
    ("settings", "/settings/chat/"),
    ("sessions", "/sessions/"),
    ("agents", "/agents/"),
    ("tasks", "/agents/tasks/"),
    ("knowledge", "/knowledge/"),
    ("providers", "/providers/"),
    ("tools", "/tools/"),
]
LINES_PER_CHAT = 100
EMAIL = "pages{i}@bench.example"

WRK_SCRIPT = r"""
local requests = {}
local n = 0
local i = 0
init = function(args)
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local path, cookie = line:match("^(%S+)\t(.*)$")
    n = n + 1
    requests[n] = wrk.format("GET", path, cookie ~= "" and {Cookie = cookie} or {})
  end
  i = math.random(n) - 1
end
request = function()
  i = (i % n) + 1
  return requests[i]
end
done = function(summary, latency, requests)
  local f = io.open(os.getenv("BENCH_RESULT"), "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "bad": %d, "errors": %d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
  f:close()
end
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1000, help="accounts in the database")
    parser.add_argument("--users", type=int, default=50, help="signed-in users requests rotate")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians over them)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--pages", default="", help="comma-separated subset of the pages")
    parser.add_argument("--project", default=str(PROJECT_DIR), help="the web's checkout")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="scratch database")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--reuse", action="store_true", help="start from a kept database")
    args = parser.parse_args(argv)
    if not 1 <= args.users <= args.accounts:
        parser.error("--users must be between 1 and --accounts")
    known = {name for name, _ in PAGES}
    args.page_names = [p for p in args.pages.split(",") if p] or [name for name, _ in PAGES]
    if unknown := set(args.page_names) - known:
        parser.error(f"unknown pages: {', '.join(sorted(unknown))}")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed: apt-get install wrk (Debian package)")
    return args


# --- the data ---------------------------------------------------------------------------------


def populate(args: argparse.Namespace) -> None:
    """--accounts accounts, the first --users of them with a user and a day of chat."""
    from datetime import timedelta

    from django.utils import timezone
    from tqdm import tqdm

    from accounts.models import Account, User
    from channels_app.models import Channel, Message, Notification, Server
    from knowledge.models import KnowledgeBase
    from tenancy import switch
    from tenancy.services import provision_account

    existing = Account.objects.count()
    for i in tqdm(range(existing, args.accounts), desc="accounts", unit="acct", file=sys.stderr):
        account = provision_account(name=f"Pages {i:05d}")
        back_to_public()
        if i >= args.users:
            continue
        user = User(account=account, email=EMAIL.format(i=i), is_account_admin=True)
        user.set_unusable_password()
        user.save()
        with switch(account):
            server = Server.objects.create(name="Bench", host="irc.example.org", nick=f"me{i}")
            channels = [
                Channel.objects.create(server=server, name=name) for name in ("#a", "#b", "#c")
            ]
            start = timezone.now() - timedelta(hours=2)
            messages = Message.objects.bulk_create(
                Message(
                    channel=channels[0],
                    sender=f"nick{n % 7}",
                    text=f"line {n} of the benchmark, me{i}: see https://example.org/{n}",
                    server_time=start + timedelta(seconds=n),
                )
                for n in range(LINES_PER_CHAT)
            )
            Notification.objects.bulk_create(
                Notification(message=m, kind=Notification.Kind.HIGHLIGHT) for m in messages[-5:]
            )
            KnowledgeBase.objects.create(name="Bench notes")
        back_to_public()


def sign_in(args: argparse.Namespace) -> list[tuple[str, dict[str, int]]]:
    """(cookie, ids) for each benchmark user: a fresh session per run."""
    from django.conf import settings
    from django.test import Client

    from accounts.models import User
    from channels_app.models import Channel, Server
    from tenancy import switch

    out = []
    for i in range(args.users):
        user = User.objects.get(email=EMAIL.format(i=i))
        with switch(user.account):
            ids = {
                "server": Server.objects.get().pk,
                "channel": Channel.objects.get(name="#a").pk,
            }
        back_to_public()
        browser = Client()
        browser.force_login(user)
        cookie = browser.cookies[settings.SESSION_COOKIE_NAME].value
        out.append((f"{settings.SESSION_COOKIE_NAME}={cookie}", ids))
    return out


# --- the web and the load ---------------------------------------------------------------------


@contextlib.contextmanager
def web_server(args: argparse.Namespace, bench_url: str, redis_url: str) -> Iterator[int]:
    """One uvicorn worker on a free port, with the bare view's settings."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "REDIS_URL": redis_url,
        "DEBUG": "false",
        "DJANGO_SETTINGS_MODULE": "benchmarks._pages_settings",
        # The project first; this checkout after it, for benchmarks/_pages_settings.py when
        # --project is an older tree without it (benchmarks/ is a namespace package).
        "PYTHONPATH": os.pathsep.join([args.project, str(PROJECT_DIR)]),
    }
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--lifespan", "off"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    command += ["--log-level", "warning", "--backlog", "4096", "--timeout-graceful-shutdown", "1"]
    process = subprocess.Popen(command, cwd=args.project, env=env)  # noqa: S603
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchmarkError("the web did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check(port: int, path: str, cookie: str) -> None:
    """One request: 200, not a redirect (a lost session would redirect to sign-in)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with opener.open(request, timeout=30) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != 200:
        raise BenchmarkError(f"GET {path} answered {status}, not 200")


def wrk(port: int, requests: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, float]:
    """wrk over `requests` ((path, cookie) in turn): requests/s, p50 and p99 in ms."""
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        script = Path(tmp, "rotate.lua")
        script.write_text(WRK_SCRIPT)
        listing = Path(tmp, "requests.tsv")
        listing.write_text("".join(f"{path}\t{cookie}\n" for path, cookie in requests))
        result = Path(tmp, "result.json")
        threads = max(1, min(os.cpu_count() or 1, args.connections))
        command = ["wrk", "-t", str(threads), "-c", str(args.connections)]
        command += ["-d", f"{int(args.seconds)}s", "--timeout", "10s", "-s", str(script)]
        command += [f"http://127.0.0.1:{port}"]
        env = {**os.environ, "BENCH_REQUESTS": str(listing), "BENCH_RESULT": str(result)}
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
        data = json.loads(result.read_text())
    if data["bad"] or data["errors"]:
        raise BenchmarkError(f"wrk saw {data['bad']} bad answers, {data['errors']} errors")
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50": data["p50_us"] / 1000,
        "p99": data["p99_us"] / 1000,
    }


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    populate(args)
    users = sign_in(args)
    from django.db import connections

    connections.close_all()
    templates = dict(PAGES)
    plan: dict[str, list[tuple[str, str]]] = {BARE: [("/bench/bare/", "")]}
    for name in args.page_names:
        plan[name] = [(templates[name].format(**ids), cookie) for cookie, ids in users]
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in plan}
    with redis_server() as redis_url, web_server(args, bench_url, redis_url) as port:
        for requests in plan.values():
            for path, cookie in requests:
                check(port, path, cookie)
        log("warming up")
        wrk(port, [r for requests in plan.values() for r in requests], args)
        for round_number in range(args.rounds):
            for name, requests in plan.items():
                sample = wrk(port, requests, args)
                samples[name].append(sample)
                log(
                    f"round {round_number + 1} {name}: {sample['rps']:.1f}/s "
                    f"p50 {sample['p50']:.1f} ms p99 {sample['p99']:.1f} ms"
                )
    medians = {
        name: {key: statistics.median(s[key] for s in runs) for key in ("rps", "p50", "p99")}
        for name, runs in samples.items()
    }
    bare_rps = medians[BARE]["rps"]
    fields = []
    ratios = {}
    for name, m in medians.items():
        fields += [f"{name}_rps={m['rps']:.1f}", f"{name}_p50_ms={m['p50']:.2f}"]
        fields += [f"{name}_p99_ms={m['p99']:.2f}"]
        if name != BARE:
            ratios[name] = m["rps"] / bare_rps
            fields.append(f"{name}_ratio={ratios[name]:.3f}")
    worst = min(ratios, key=ratios.__getitem__)
    fields += [f"min_ratio={ratios[worst]:.3f}", f"min_page={worst}"]
    fields += [f"accounts={args.accounts}", f"connections={args.connections}"]
    print(" ".join(fields), file=result_out, flush=True)


def database_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(with_database(server_url(), "postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        return row is not None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recreate = not (args.reuse and database_exists(args.database))
    if args.reuse:
        args.keep = True
    return run_in_scratch_database(args, title="pages benchmark", run=run, recreate=recreate)


if __name__ == "__main__":
    sys.exit(main())
