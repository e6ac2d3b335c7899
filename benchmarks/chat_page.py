"""Benchmark: opening the chat with 50 channels and 1,000,000 stored lines in one account.

    .venv/bin/python benchmarks/chat_page.py [--lines 1000000] [--channels 50] [--buffers 500]
        [--runs 30] [--no-browser] [--database NAME] [--keep] [--reuse]

Provisions two accounts in a database of its own (`bench_speed_chat_page`; --keep keeps it and
--reuse starts from a kept one):
- "Chat": one server, --channels channels, --lines lines loaded with COPY (indexes dropped
  and rebuilt as the migrations define them, then VACUUM ANALYZE, as benchmarks/history.py
  does), spread evenly over the channels, each channel read up to 20 lines before its end;
- "Sidebar": --buffers buffers (four fifths channels, the rest private queries, over two
  servers), 100 lines each, each read up to 10 lines before its end.

Then, on one uvicorn worker (DEBUG off, benchmarks/pages.py's web), --runs times each:
- server: GET /chat/ (which redirects to the buffer last open) and the channel page it names,
  one after the other on one connection, from the first byte sent to the last byte of the page
  (its 100 latest lines are in that HTML): `chat_ms_p50`, `chat_ms_p95`;
- browser (Playwright, Debian's chromium, unless --no-browser): navigation start to first
  contentful paint of /chat/ (the lines are server-rendered: the first paint shows them),
  `browser_fcp_ms_p50` over 5 loads;
- page weight: the JS and CSS the chat page links, fetched and summed, raw and gzipped
  (`assets_kb`, `assets_gzip_kb`; target < 150 KB);
- sidebar: `channels_app.selectors.chat.sidebar` (every buffer with its unread and highlight
  counts, and the servers' states from Redis) in the Sidebar account, in this process:
  `sidebar_ms_p50` (target < 20 ms).

stdout gets exactly one line:
    chat_ms_p50=… chat_ms_p95=… browser_fcp_ms_p50=… assets_kb=… assets_gzip_kb=…
    sidebar_ms_p50=… sidebar_buffers=… lines=… channels=…
"""

import argparse
import gzip
import http.client
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

import psycopg  # noqa: E402
from pages import database_exists, web_server  # noqa: E402
from provisioning import (  # noqa: E402
    BenchmarkError,
    back_to_public,
    log,
    p95,
    run_in_scratch_database,
)
from psycopg import sql  # noqa: E402
from sse_streams import redis_server  # noqa: E402

DEFAULT_DATABASE = "bench_speed_chat_page"
CHAT_ACCOUNT = "Chat"
SIDEBAR_ACCOUNT = "Sidebar"
CHAT_EMAIL = "chat@bench.example"
SIDEBAR_LINES = 100
CHROMIUM = Path("/usr/bin/chromium")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the Chat account")
    parser.add_argument("--channels", type=int, default=50, help="channels in the Chat account")
    parser.add_argument("--buffers", type=int, default=500, help="buffers in the Sidebar account")
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each")
    parser.add_argument("--no-browser", action="store_true", help="skip the browser part")
    parser.add_argument("--project", default=str(PROJECT_DIR), help="the web's checkout")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="scratch database")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--reuse", action="store_true", help="start from a kept database")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    return args


# --- the data ---------------------------------------------------------------------------------


def copy_messages(bench_url: str, schema: str, channel_ids: list[int], per_channel: int) -> None:
    """COPY per_channel lines into each channel (interleaved, times increasing with ids), with
    the message table's indexes dropped during the load and rebuilt after."""
    with psycopg.connect(bench_url) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
            "AND tablename = 'channels_app_message' AND indexname NOT LIKE '%%_pkey'",
            [schema],
        ).fetchall()
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        total = per_channel * len(channel_ids)
        start = datetime.now(UTC) - timedelta(days=365)
        step = timedelta(days=364) / max(total, 1)
        copy_sql = sql.SQL(
            "COPY {} (channel_id, kind, sender, text, server_time, msgid, tags, created_at) "
            "FROM STDIN"
        ).format(sql.Identifier(schema, "channels_app_message"))
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
            batch: list[str] = []
            for i in range(total):
                channel_id = channel_ids[i % len(channel_ids)]
                at = (start + step * i).isoformat()
                kind = "join" if i % 37 == 0 else "message"
                text = "" if kind == "join" else f"line {i}: the quick brown fox, see example.org"
                batch.append(f"{channel_id}\t{kind}\tnick{i % 23}\t{text}\t{at}\t\t{{}}\t{at}\n")
                if len(batch) == 20_000:
                    copy.write("".join(batch))
                    batch.clear()
            if batch:
                copy.write("".join(batch))
        conn.commit()
        log(f"  {total:,} lines copied in {time.perf_counter() - started:.0f} s")
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            conn.execute(definition)
            conn.commit()
    with psycopg.connect(bench_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "channels_app_message"))
        )


def mark_read(unread: int) -> None:
    """Each channel read up to `unread` lines before its newest (in the active schema)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE channels_app_channel c SET last_read_message_id = ("
            " SELECT id FROM channels_app_message m WHERE m.channel_id = c.id"
            " ORDER BY server_time DESC, id DESC OFFSET %s LIMIT 1)",
            [unread],
        )


def populate(args: argparse.Namespace, bench_url: str) -> None:
    from django.db import connection

    from accounts.models import User
    from channels_app.models import Channel, Server
    from tenancy import switch
    from tenancy.services import provision_account

    log(f"Chat account: {args.channels} channels, {args.lines:,} lines")
    chat = provision_account(name=CHAT_ACCOUNT)
    back_to_public()
    user = User(account=chat, email=CHAT_EMAIL, is_account_admin=True)
    user.set_unusable_password()
    user.save()
    with switch(chat):
        server = Server.objects.create(name="Libera", host="irc.libera.chat", nick="bench")
        channel_ids = [
            Channel.objects.create(server=server, name=f"#channel{i:02d}").pk
            for i in range(args.channels)
        ]
        connection.close()
        copy_messages(bench_url, chat.schema_name, channel_ids, args.lines // args.channels)
        mark_read(20)
    back_to_public()

    log(f"Sidebar account: {args.buffers} buffers, {SIDEBAR_LINES} lines each")
    side = provision_account(name=SIDEBAR_ACCOUNT)
    back_to_public()
    with switch(side):
        servers = [
            Server.objects.create(name=name, host="irc.example.org", nick="bench")
            for name in ("Libera", "OFTC")
        ]
        queries = args.buffers // 5
        buffers = Channel.objects.bulk_create(
            Channel(
                server=servers[i % 2],
                name=f"#side{i:03d}" if i >= queries else f"friend{i:03d}",
                kind=Channel.Kind.CHANNEL if i >= queries else Channel.Kind.QUERY,
            )
            for i in range(args.buffers)
        )
        connection.close()
        copy_messages(bench_url, side.schema_name, [b.pk for b in buffers], SIDEBAR_LINES)
        mark_read(10)
    back_to_public()


# --- the measurements -------------------------------------------------------------------------


def cookie_for(email: str) -> str:
    from django.conf import settings
    from django.test import Client

    from accounts.models import User

    browser = Client()
    browser.force_login(User.objects.get(email=email))
    return f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"


def get(conn: http.client.HTTPConnection, path: str, cookie: str) -> tuple[int, str, bytes]:
    conn.request("GET", path, headers={"Cookie": cookie, "Host": "localhost"})
    response = conn.getresponse()
    body = response.read()
    return response.status, response.getheader("Location") or "", body


def time_chat(port: int, cookie: str, runs: int) -> tuple[list[float], bytes]:
    """/chat/ and the page it redirects to, --runs times: milliseconds each, the last page."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    page = b""
    for i in range(runs + 3):
        started = time.perf_counter()
        status, location, _ = get(conn, "/chat/", cookie)
        if status != 302 or not location:
            raise BenchmarkError(f"/chat/ answered {status}, not a redirect to a buffer")
        status, _, page = get(conn, location, cookie)
        elapsed = (time.perf_counter() - started) * 1000
        if status != 200 or b'class="line' not in page:
            raise BenchmarkError(f"{location} answered {status} without lines")
        if i >= 3:  # warm-up
            samples.append(elapsed)
    conn.close()
    return samples, page


def asset_weight(port: int, page: bytes) -> tuple[int, int]:
    """Bytes of the JS and CSS the page links: raw, gzipped."""
    html = page.decode()
    urls = re.findall(r'<script[^>]+src="([^"]+)"', html)
    urls += re.findall(r'<link[^>]+rel="stylesheet"[^>]+href="([^"]+)"', html)
    urls += re.findall(r'<link[^>]+href="([^"]+)"[^>]+rel="stylesheet"', html)
    raw = zipped = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for url in dict.fromkeys(urls):
        status, _, body = get(conn, url, "")
        if status != 200:
            raise BenchmarkError(f"{url} answered {status}")
        raw += len(body)
        zipped += len(gzip.compress(body, 6))
    conn.close()
    if not urls:
        raise BenchmarkError("the chat page links no JS or CSS: the pattern is out of date")
    return raw, zipped


def browser_fcp(port: int, cookie: str, loads: int = 5) -> float:
    """Median navigation start -> first contentful paint of /chat/, in Chromium."""
    from playwright.sync_api import sync_playwright

    name, _, value = cookie.partition("=")
    samples = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context()
        context.add_cookies([{"name": name, "value": value, "url": f"http://127.0.0.1:{port}"}])
        page = context.new_page()
        for i in range(loads + 1):
            page.goto(f"http://127.0.0.1:{port}/chat/")
            page.wait_for_selector("li.line")
            fcp = page.evaluate(
                "() => new Promise(done => { const e = performance.getEntriesByName("
                "'first-contentful-paint'); if (e.length) return done(e[0].startTime);"
                " new PerformanceObserver(l => done(l.getEntries()[0].startTime))"
                ".observe({type: 'paint', buffered: true}); })"
            )
            if i:
                samples.append(float(fcp))
        browser.close()
    return statistics.median(samples)


def time_sidebar(runs: int) -> tuple[list[float], int]:
    from accounts.models import Account
    from channels_app.selectors import chat as selectors
    from tenancy import switch

    account = Account.objects.get(name=SIDEBAR_ACCOUNT)
    samples = []
    with switch(account):
        for i in range(runs + 3):
            started = time.perf_counter()
            entries = selectors.sidebar(account.pk)
            elapsed = (time.perf_counter() - started) * 1000
            if i >= 3:
                samples.append(elapsed)
        count = sum(len(e.channels) + len(e.queries) + len(e.server_buffers) for e in entries)
        unread = sum(b.unread for e in entries for b in e.channels + e.queries)
    back_to_public()
    # Ten lines after each read marker, fewer where joins (not counted) fell among them.
    if not 0 < unread <= 10 * count:
        raise BenchmarkError(f"expected up to {10 * count} unread lines, the sidebar says {unread}")
    return samples, count


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.core.management import call_command
    from django.db import connections

    from accounts.models import Account

    if not (args.reuse and Account.objects.filter(name=SIDEBAR_ACCOUNT).exists()):
        log("migrating the public schema")
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
        back_to_public()
        populate(args, bench_url)
    cookie = cookie_for(CHAT_EMAIL)
    sidebar_ms, buffers = time_sidebar(args.runs)
    connections.close_all()
    args.seconds = 0  # web_server reads only project
    with redis_server() as redis_url, web_server(args, bench_url, redis_url) as port:
        chat_ms, page = time_chat(port, cookie, args.runs)
        assets, assets_gzip = asset_weight(port, page)
        fcp = None if args.no_browser else browser_fcp(port, cookie)
    fields = [
        f"chat_ms_p50={statistics.median(chat_ms):.1f}",
        f"chat_ms_p95={p95(chat_ms):.1f}",
        f"browser_fcp_ms_p50={fcp:.0f}" if fcp is not None else "browser_fcp_ms_p50=skipped",
        f"assets_kb={assets / 1024:.1f}",
        f"assets_gzip_kb={assets_gzip / 1024:.1f}",
        f"sidebar_ms_p50={statistics.median(sidebar_ms):.1f}",
        f"sidebar_buffers={buffers}",
        f"lines={args.lines}",
        f"channels={args.channels}",
    ]
    print(" ".join(fields), file=result_out, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recreate = not (args.reuse and database_exists(args.database))
    if args.reuse:
        args.keep = True
    return run_in_scratch_database(args, title="chat page benchmark", run=run, recreate=recreate)


if __name__ == "__main__":
    sys.exit(main())
