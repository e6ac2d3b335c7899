"""Benchmark: lines a gateway back from an outage backfills per second with IRCv3 chathistory.

    .venv/bin/python benchmarks/recovery_chathistory.py [--lines L] [--page P] [--keep]

One account (provisioned through `tenancy.services.provision_account`) with one server and
one autojoin channel on the scripted chathistory server of tests/chathistory_server.py (no
server packaged here offers chathistory; the script follows the spec, and runs on a thread of
this process). A real `gateway.manager.Gateway` on a thread of this process, as
`manage.py irc_gateway` runs it, joins the channel and stores 10 live lines; then it stops.
While it is away the channel gets L lines (default 10,000), one millisecond apart, carrying
msgid and server-time. A new gateway starts: it registers, joins, and asks for what it missed
with CHATHISTORY AFTER the last stored msgid, P lines a request (the server's CHATHISTORY
token, default 100), GATEWAY_CHATHISTORY_MAX_LINES set to L.

The clock runs from the moment the server accepts the new gateway's connection to the moment
the last missed line is committed (polled every 2 ms by its msgid, on a connection of its
own: the Store writes an account's lines in order, each batch in one transaction, so when the
last is visible every one before it is). Then every missed msgid must be stored exactly once.

It runs in a database of its own (`palaver_bench_chathistory_recovery` on the server
DATABASE_URL names), dropped and recreated at the start and dropped at the end unless --keep.

The reference, in the same run: a third gateway, with the read-rate limit lifted, gets the same
number of lines said live in the channel (written to its socket at once); its clock runs from
the first line written to the last committed. The ratio of the two says what asking for lines
costs beyond storing them.

stdout gets exactly one line:
    chathistory_backfill_lines=… seconds=… lines_per_s=… page=… requests=… first_request_s=…
    live_lines_per_s=… ratio=…
first_request_s is when the first CHATHISTORY arrived at the server, from the same start;
ratio is lines_per_s / live_lines_per_s.
"""

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Run as a script, Python puts benchmarks/ on the path, not the project.
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

from _linesource import (  # noqa: E402
    GatewayThread,
    chat_text,
    create_accounts,
    forget_server_states,
    wait_until,
)
from provisioning import BenchmarkError, back_to_public, log, run_in_scratch_database  # noqa: E402

DEFAULT_DATABASE = "palaver_bench_chathistory_recovery"
CHANNEL = "#bench"
LIVE_LINES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000, help="missed lines (10,000)")
    parser.add_argument(
        "--page", type=int, default=100, help="the server's CHATHISTORY maximum (100)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="give up after (s)")
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"name of the scratch database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    return parser.parse_args(argv)


def stored_msgids(account: object) -> list[str]:
    from channels_app.models import Message
    from tenancy import switch

    with switch(account):  # type: ignore[arg-type]
        return list(
            Message.objects.filter(channel__name=CHANNEL, kind="message")
            .exclude(msgid="")
            .values_list("msgid", flat=True)
        )


def wait_committed(account: object, msgid: str, timeout: float) -> float:
    """When the line `msgid` became visible (time.monotonic()), polled every 2 ms."""
    from channels_app.models import Message
    from tenancy import switch

    deadline = time.monotonic() + timeout
    with switch(account):  # type: ignore[arg-type]
        done = Message.objects.filter(channel__name=CHANNEL, msgid=msgid)
        while not done.exists():
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the line {msgid} was not stored in {timeout:.0f} s")
            time.sleep(0.002)
    return time.monotonic()


def check_once(account: object, expected: set[str]) -> None:
    found = [m for m in stored_msgids(account) if m in expected]
    if len(found) != len(expected) or len(set(found)) != len(found):
        raise BenchmarkError(
            f"expected {len(expected):,} lines once each; found {len(found):,} "
            f"({len(set(found)):,} distinct)"
        )
    log(f"checked: {len(found):,} lines stored, each msgid exactly once")


def run(args: argparse.Namespace, bench_url: str, result_out: TextIO) -> None:
    from django.conf import settings
    from django.core.management import call_command

    from tests.chathistory_server import ChathistoryServer

    log("migrating the public schema")
    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    back_to_public()
    settings.GATEWAY_CHATHISTORY_MAX_LINES = args.lines

    server = ChathistoryServer(max_messages=args.page).start()
    try:
        log(f"chathistory server on 127.0.0.1:{server.port}, CHATHISTORY={args.page}")
        (account,) = create_accounts(1, port=server.port, name_prefix="Backfill")
        runner = GatewayThread()
        try:
            runner.start()
            wait_until(lambda: server.joined(CHANNEL), 60, "the first join")
            for i in range(LIVE_LINES):
                server.say("carol", CHANNEL, chat_text(i))
            wait_until(lambda: len(stored_msgids(account)) == LIVE_LINES, 30, "the live lines")
        finally:
            runner.stop()
        log(f"gateway stopped; the channel says {args.lines:,} lines meanwhile")
        server.add_history(
            "carol", CHANNEL, [chat_text(i) for i in range(args.lines)], start=datetime.now(UTC)
        )
        missed = server.history(CHANNEL)[LIVE_LINES:]
        last = missed[-1].msgid
        accepted_before = len(server.accepted_at)

        runner = GatewayThread()
        try:
            runner.start()
            wait_until(
                lambda: len(server.accepted_at) > accepted_before, 60, "the gateway's connection"
            )
            started = server.accepted_at[accepted_before]
            ended = wait_committed(account, last, args.timeout)
            runner.wait_quiet(30)
        finally:
            runner.stop()
            if runner.failed is not None:
                raise BenchmarkError(f"the gateway crashed: {runner.failed!r}")
        requests = [at for _, at in server.commands_at("CHATHISTORY")]
        check_once(account, {s.msgid for s in missed})

        # The reference: the same number of lines said live, into a gateway that reads as fast
        # as it can (the read-rate limit lifted), through the same Store.
        settings.GATEWAY_MAX_LINES_PER_SECOND = 1e9
        settings.GATEWAY_LINE_BURST = 10_000_000
        runner = GatewayThread()
        try:
            runner.start()
            wait_until(lambda: len(server.joined(CHANNEL)) == 1, 60, "the join")
            runner.wait_quiet(30)
            log(f"reference: {args.lines:,} lines said live")
            live_started = time.monotonic()
            live = server.relay("carol", CHANNEL, [chat_text(i) for i in range(args.lines)])
            live_ended = wait_committed(account, live[-1].msgid, args.timeout)
            runner.wait_quiet(30)
        finally:
            runner.stop()
            if runner.failed is not None:
                raise BenchmarkError(f"the gateway crashed: {runner.failed!r}")
        check_once(account, {s.msgid for s in live})
    finally:
        server.stop()

    forget_server_states([account])
    seconds = ended - started
    first = requests[0] - started if requests else float("nan")
    rate = args.lines / seconds
    live_rate = args.lines / (live_ended - live_started)
    log(
        f"backfill: {args.lines:,} lines in {seconds:.2f} s ({rate:,.0f} lines/s), "
        f"{len(requests)} requests of {args.page}, the first {first * 1000:.0f} ms after "
        f"connect; the same lines said live: {live_rate:,.0f} lines/s"
    )
    print(
        f"chathistory_backfill_lines={args.lines} seconds={seconds:.2f} lines_per_s={rate:.0f} "
        f"page={args.page} requests={len(requests)} first_request_s={first:.3f} "
        f"live_lines_per_s={live_rate:.0f} ratio={rate / live_rate:.2f}",
        file=result_out,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    return run_in_scratch_database(
        parse_args(argv), title="chathistory backfill benchmark", run=run
    )


if __name__ == "__main__":
    sys.exit(main())
