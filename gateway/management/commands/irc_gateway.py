import asyncio
import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.manager import Gateway


def parse_shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in value.split("/", 1))
    except ValueError:
        raise CommandError(f"--shard takes K/N, e.g. 0/4, not {value!r}") from None
    if n < 1 or not 0 <= k < n:
        raise CommandError(f"--shard {value}: K must be 0..N-1 and N at least 1")
    return k, n


class Command(BaseCommand):
    help = "Hold the IRC connections of every account in this shard, storing what arrives."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shard", default="0/1", help="K/N: this process holds shard K of N")

    def handle(self, *args: Any, **options: Any) -> None:
        shard, shards = parse_shard(options["shard"])
        logging.getLogger("gateway").setLevel(logging.INFO)
        self.stdout.write(f"IRC gateway: shard {shard}/{shards}")
        asyncio.run(self._main(shard, shards))

    async def _main(self, shard: int, shards: int) -> None:
        gateway = Gateway(shard=shard, shards=shards)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(gateway.run())
        await asyncio.wait(
            [runner, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED"
        )
        if runner.done() and runner.exception():
            raise CommandError(f"gateway stopped: {runner.exception()}")
        self.stdout.write("IRC gateway: stopping (QUIT to every server, writing held lines)")
        await gateway.stop()
        runner.cancel()
