"""One delivery phase of a scenario: publish a schedule, wait for the
deliveries, and read the figures (latency, loss, CPU) off the load generator.

Works with either load generator: :class:`benchmarks.loadgen.Group` (Python,
in this process) or :class:`benchmarks.cload.Group` (the C one, a process of
its own); both give ``begin``/``refresh``/``collect``/``received_total``/
``meter``.
"""

from __future__ import annotations

import asyncio
import time
import typing as t

from .loadgen import CPUMeter, Publisher
from .servers import Impl, Running

#: Load generator CPU use (share of one core) above which it, not the server,
#: probably limited the figures.
LOADGEN_BOTTLENECK = 0.9
#: Nobody waits longer than this for deliveries after the last publish.
DRAIN_TIMEOUT = 20.0
QUIET = 3.0


def percentile(sorted_values: t.Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def warm_up(publisher: Publisher, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await publisher.post(999_999, b"warmup", timeout=5) < 500:
                return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def deliver(
    server: Running,
    group: t.Any,
    publishers: list[Publisher],
    schedule: list[tuple[int, int]],
    rate: float | None,
    expected: int,
) -> dict[str, t.Any]:
    """Publish ``schedule`` ((topic, seq) pairs), at ``rate`` per second or as
    fast as the server answers, and wait for the deliveries.

    With several publishers each owns the topics ``topic % len(publishers)``
    and publishes them in order, concurrently with the others.
    """
    await group.begin()
    await asyncio.sleep(0.3)
    meter = group.meter()
    own = CPUMeter()
    cpu0, worker0 = server.cpu(), server.worker_cpu()
    t0 = time.time()
    counts = {"published": 0, "bad": 0}

    async def publish_share(index: int) -> None:
        publisher = publishers[index]
        for i, (topic, seq) in enumerate(schedule):
            if topic % len(publishers) != index:
                continue
            if rate:
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.time() - t0 > 60:
                break  # a server that cannot keep up is cut off, not waited for
            if await publisher.publish(topic, seq) >= 300:
                counts["bad"] += 1
            counts["published"] += 1

    await asyncio.gather(*(publish_share(i) for i in range(len(publishers))))
    published = counts["published"]
    statuses_bad = counts["bad"]
    t_pub = time.time()
    cpu_at_last, worker_at_last = server.cpu(), server.worker_cpu()
    await group.refresh()
    seen = group.deliveries
    last_progress = time.monotonic()
    deadline = last_progress + DRAIN_TIMEOUT
    while group.deliveries < expected:
        await asyncio.sleep(0.05)
        await group.refresh()
        now = time.monotonic()
        if group.deliveries != seen:
            seen = group.deliveries
            last_progress = now
            cpu_at_last, worker_at_last = server.cpu(), server.worker_cpu()
        elif now - last_progress > QUIET or now > deadline:
            break
    else:
        cpu_at_last, worker_at_last = server.cpu(), server.worker_cpu()
    loadgen_cpu = meter.utilisation()
    own_cpu = own.utilisation()
    figures = group.figures()
    # A spinning sseload uses its whole core by design: its work is loadgen_busy.
    busy = figures.get("loadgen_busy") if group.kind == "c-spin" else None
    working = loadgen_cpu if busy is None else busy
    await group.collect()
    lat = sorted(group.latencies)
    received, total = group.received_total()
    duration = (group.last_at or time.time()) - t0
    deliveries = group.deliveries
    cpu = cpu_at_last - cpu0
    return {
        "published": published,
        "publish_rate": published / max(1e-9, t_pub - t0),
        "bad_publishes": statuses_bad,
        "expected": expected,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / duration if duration > 0 else 0.0,
        "lost": expected - received,
        "duplicated": total - received,
        "out_of_order": group.out_of_order,
        "wrong_topic": group.wrong_topic,
        "p50_ms": _ms(percentile(lat, 0.50)),
        "p99_ms": _ms(percentile(lat, 0.99)),
        "max_ms": _ms(lat[-1] if lat else None),
        "server_cpu_s": cpu,
        "cpu_us_per_delivery": cpu / deliveries * 1e6 if deliveries else None,
        # The worker alone: the Redis rows' figure above adds the shared Redis.
        "worker_cpu_us_per_delivery": (worker_at_last - worker0) / deliveries * 1e6 if deliveries else None,
        "loadgen_cpu": loadgen_cpu,
        # This process (the publisher; with the Python load generator, that too).
        "bench_process_cpu": own_cpu,
        "loadgen": group.kind,
        "loadgen_bottleneck": working > LOADGEN_BOTTLENECK,
        "server_alive": server.alive(),
        **figures,
    }


def _stream_path(impl: Impl) -> t.Callable[[int], str]:
    return lambda topic: impl.stream.format(topic=topic)


def _publish_path(impl: Impl) -> t.Callable[[int], str]:
    return lambda topic: impl.publish.format(topic=topic)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)
