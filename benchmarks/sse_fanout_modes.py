"""Benchmark: the live fanout's two ways to listen, at 10,000 streams over many accounts.

    .venv/bin/python benchmarks/sse_fanout_modes.py [--streams 10000] [--accounts 2000]
        [--processes 5] [--events 50000]

One web process's `channels_app.live_fanout.Fanout` holds --streams subscriptions over
--accounts accounts, on a redis-server of the benchmark's own. Production runs several web
processes, each serving its share of the accounts, so the publisher (a child process)
publishes --events events round-robin over --processes times as many accounts, of which this
process serves one share. Measured for each mode:

- channels: one SUBSCRIBE per account with a stream here (UNSUBSCRIBE when its last ends);
- pattern: one PSUBSCRIBE to every account's channel.

Outputs: seconds to subscribe all the streams, this process's CPU per published event while
the events flow (it receives, in pattern mode, the events of every account, its own or not),
and Redis's CPU per published event. stdout gets one line per mode:
    mode=… subscribe_s=… process_cpu_us_per_event=… redis_cpu_us_per_event=… delivered=…
"""

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from sse_streams import redis_server  # noqa: E402

PREFIX = "fanout-bench"


def channel(i: int) -> str:
    return f"{PREFIX}:events:{i}"


def publisher(url: str, accounts: int, events: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for n in range(events):
        pipe.publish(channel(n % accounts), b'{"type":"read","channel_id":1,"up_to":1}')
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()
    client.close()


def redis_cpu(client: object) -> float:
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(url: str, mode: str, args: argparse.Namespace) -> str:
    import redis

    from channels_app.live_fanout import Fanout

    received = [0]

    def decode(data: bytes) -> bytes:
        received[0] += 1
        return data

    fanout = Fanout(url, decode=decode, queue_limit=10**6, mode=mode, pattern=channel(0)[:-1] + "*")
    started = time.monotonic()
    subs = await asyncio.gather(
        *(fanout.subscribe(channel(i % args.accounts)) for i in range(args.streams))
    )
    subscribe_s = time.monotonic() - started

    sync = redis.Redis.from_url(url)
    total_accounts = args.accounts * args.processes
    ours = args.events // args.processes  # events for this process's accounts
    redis_before, cpu_before = redis_cpu(sync), time.process_time()
    child = multiprocessing.get_context("spawn").Process(
        target=publisher, args=(url, total_accounts, args.events)
    )
    child.start()
    deadline = time.monotonic() + 120
    while received[0] < ours and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        for sub in subs:
            sub.items.clear()
    await asyncio.sleep(0.5)  # what else arrives (pattern mode: everyone's events)
    child.join(60)
    cpu = time.process_time() - cpu_before
    redis_used = redis_cpu(sync) - redis_before
    sync.close()
    await fanout.close()
    return (
        f"mode={mode} subscribe_s={subscribe_s:.2f} "
        f"process_cpu_us_per_event={cpu / args.events * 1e6:.1f} "
        f"redis_cpu_us_per_event={redis_used / args.events * 1e6:.1f} "
        f"delivered={received[0]}/{ours}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    import django

    django.setup()
    with redis_server() as url:
        for mode in ("channels", "pattern"):
            print(asyncio.run(measure(url, mode, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
