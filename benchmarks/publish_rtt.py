"""Publish round trips during a steady fan-out (issue 13).

    python -m benchmarks.publish_rtt 5000 ours ours-head ours ours-head

For each server in turn: 5,000 (the first argument) streams on one topic,
100 publishes at 20/s through the app's publish route, and the round trip of
each publish request as the load generator sees it (p50, p90, max), with the
fan-out figures of the same phase. Set ``GUNICORN_CMD_ARGS="--access-logfile
FILE --access-logformat '%(m)s %(U)s %(L)s'"`` to also get the server's own
time per request.
"""

from __future__ import annotations

import asyncio
import sys
import time
import typing as t

from . import loadgen
from .loadgen import Group, Publisher
from .run import _publish_path, _stream_path, deliver, warm_up
from .servers import IMPLS, Running


async def one(name: str, n: int) -> None:
    server = Running(IMPLS[name], 5.0)
    try:
        publisher = Publisher(server.port, _publish_path(server.impl))
        await warm_up(publisher)
        group = Group(200)
        await loadgen.open_streams(group, server.port, _stream_path(server.impl), [0] * n)
        await loadgen.prime(group, publisher, [0])
        trips: list[float] = []
        publish = publisher.publish

        async def timed(topic: int, seq: int) -> int:
            start = time.perf_counter()
            status = await publish(topic, seq)
            trips.append((time.perf_counter() - start) * 1000)
            return status

        publisher.publish = timed  # type: ignore[method-assign]
        result = await deliver(
            server, group, [publisher], [(0, s) for s in range(100)], 20.0, group.primed * 100
        )
        trips.sort()
        figures: dict[str, t.Any] = {
            k: result[k] for k in ("publish_rate", "p50_ms", "p99_ms", "cpu_us_per_delivery", "lost")
        }
        p50, p90 = trips[len(trips) // 2], trips[len(trips) * 9 // 10]
        print(f"{name}: publish round trip ms p50 {p50:.1f} p90 {p90:.1f} max {trips[-1]:.1f}; {figures}")
        loadgen.close_streams(group)
        publisher.close()
    finally:
        server.stop()


def main() -> None:
    for name in sys.argv[2:]:
        asyncio.run(one(name, int(sys.argv[1])))


if __name__ == "__main__":
    main()
