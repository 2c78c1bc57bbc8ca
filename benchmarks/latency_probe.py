"""Where the latency tail of a fan-out comes from (issue 13, diagnostic).

The fan-out scenario of ``python -m benchmarks`` (same servers, load
generator, pinning and ``deliver()``), with every delivery recorded instead of
only its latency: for each phase, besides p50/p99, the p99 of each fifth of
the events in publish order (a tail at the start of a burst is a transient,
one spread over all fifths is steady state), how many events one read of a
stream carried (several: the server wrote them in one ``send``), the spread
between the first and the last stream receiving an event (how long one pass
over all streams takes, as the load generator sees it) and the publish round
trip (p50/p90/p99).

    python -m benchmarks.latency_probe ours@main,ours 1000 --burst 200 --steady 0 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import typing as t

from . import loadgen, run
from .loadgen import _PAYLOAD, Group, Publisher, SSEStream
from .servers import IMPLS, LOADGEN_CPU, Running

#: Every delivery of the phase: (seq, arrival time, latency, events in its read).
RECORD: list[tuple[int, float, float, int]] = []
#: Every publish of the phase: round trip in seconds.
ROUND_TRIPS: list[float] = []

_frames = SSEStream._frames
_publish = Publisher.publish


def _recording_frames(self: SSEStream, block: bytes, now: float) -> None:
    _frames(self, block, now)
    if self.primed:
        found = _PAYLOAD.findall(block)
        RECORD.extend((int(seq), now, now - float(ts), len(found)) for seq, _, ts in found)


async def _timed_publish(self: Publisher, topic: int, seq: int) -> int:
    t0 = time.perf_counter()
    status = await _publish(self, topic, seq)
    ROUND_TRIPS.append(time.perf_counter() - t0)
    return status


def _ms(values: t.Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def summary(count: int) -> dict[str, t.Any]:
    """The figures of one phase from :data:`RECORD` and :data:`ROUND_TRIPS`."""
    latencies = [r[2] for r in RECORD]
    fifths = []
    for i in range(5):
        lo, hi = i * count // 5, (i + 1) * count // 5
        fifths.append(round(_ms([r[2] for r in RECORD if lo <= r[0] < hi], 0.99), 1))
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for seq, now, _, _ in RECORD:
        first[seq] = min(first.get(seq, now), now)
        last[seq] = max(last.get(seq, now), now)
    spread = [last[s] - first[s] for s in first]
    return {
        "p50_ms": round(_ms(latencies, 0.5), 1),
        "p99_ms": round(_ms(latencies, 0.99), 1),
        "p99_by_fifth_ms": fifths,
        "events_per_read": round(statistics.mean(r[3] for r in RECORD), 2) if RECORD else None,
        "spread_p50_p99_ms": [round(_ms(spread, 0.5), 1), round(_ms(spread, 0.99), 1)],
        "publish_rtt_p50_p90_p99_ms": [round(_ms(ROUND_TRIPS, q), 1) for q in (0.5, 0.9, 0.99)],
    }


async def probe(impls: list[str], n: int, burst: int, steady: int, rate: float, runs: int) -> None:
    SSEStream._frames = _recording_frames  # type: ignore[method-assign]
    Publisher.publish = _timed_publish  # type: ignore[method-assign]
    for _ in range(runs):
        for name in impls:
            server = Running(IMPLS[name], 5.0)
            try:
                publisher = Publisher(server.port, run._publish_path(server.impl))
                await run.warm_up(publisher)
                group = Group(max(burst, steady))
                await loadgen.open_streams(group, server.port, run._stream_path(server.impl), [0] * n)
                await loadgen.prime(group, publisher, [0])
                for mode, count, r in (("burst", burst, None), ("steady", steady, rate)):
                    if not count:
                        continue
                    RECORD.clear()
                    ROUND_TRIPS.clear()
                    result = await run.deliver(
                        server, group, [publisher], [(0, s) for s in range(count)], r, group.primed * count
                    )
                    figures = summary(count)
                    figures.update(
                        publish_rate=round(result["publish_rate"], 1),
                        cpu_us=round(result["cpu_us_per_delivery"], 2),
                        loadgen_cpu=round(result["loadgen_cpu"], 2),
                        lost=result["lost"],
                    )
                    print(f"{name} {mode} {n}: {figures}", flush=True)
                loadgen.close_streams(group)
                publisher.close()
            finally:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("impls", help="comma-separated servers, e.g. ours@main,ours,nchan")
    parser.add_argument("subscribers", type=int)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--steady", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOADGEN_CPU})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(probe(args.impls.split(","), args.subscribers, args.burst, args.steady, args.rate, args.runs))


if __name__ == "__main__":
    main()
