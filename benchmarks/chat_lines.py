"""Benchmark: rendering the chat page's 100 lines (the part of /chat/<id>/ that item 12 of
issue 11 found to be two thirds of its server time).

    .venv/bin/python benchmarks/chat_lines.py [--runs R]

No database: 100 unsaved lines (mostly messages with formatting and a link, some joins, parts,
quits, an action, a notice, a kick, an agent's line) rendered through
channels_app/_chat_lines.html as the page renders them, R times (default 300).

stdout gets exactly one line: lines=100 render_ms_p50=… render_ms_p90=…
"""

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def sample_lines() -> list[object]:
    from channels_app.models import Message
    from channels_app.selectors.chat import Line, local_day, nick_colour

    t0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    kinds = ["message"] * 8 + ["join", "part", "quit", "action", "notice", "kick", "nick"]
    out: list[object] = []
    previous = None
    for n in range(100):
        kind = kinds[n % len(kinds)]
        sender = f"nick{n % 13}"
        text = {
            "message": f"line {n}: \x02bold\x02 and \x0304red\x03 see https://example.org/{n} ok",
            "kick": "victim too noisy",
            "nick": f"newnick{n}",
        }.get(kind, f"words {n}")
        message = Message(
            id=n + 1, channel_id=1, kind=kind, sender=sender, text=text,
            server_time=t0 + timedelta(minutes=7 * n), tags={},
        )  # fmt: skip
        message.highlighted = n % 17 == 0  # type: ignore[attr-defined]
        day = local_day(message.server_time)
        out.append(
            Line(
                message=message, day=day, new_day=day != previous,
                nick_class=f"nick-c{nick_colour(sender)}", is_self=n % 11 == 0,
                agent_nick="helper" if n % 23 == 0 else "",
            )
        )  # fmt: skip
        previous = day
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    import django

    django.setup()
    from django.template.loader import render_to_string

    from channels_app.models import Channel

    lines = sample_lines()
    channel = Channel(id=1, name="#bench", server_id=1)
    context = {"channel": channel, "lines": lines, "has_older": True, "time_format": "24h"}
    render_to_string("channels_app/_chat_lines.html", context)  # templates loaded and cached
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        render_to_string("channels_app/_chat_lines.html", context)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p90 = times[int(len(times) * 0.9)]
    print(f"lines=100 render_ms_p50={statistics.median(times):.2f} render_ms_p90={p90:.2f}")


if __name__ == "__main__":
    main()
