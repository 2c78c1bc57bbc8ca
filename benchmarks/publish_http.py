"""HTTP publish: the topics scenario published through ``POST /_sse/publish``,
one request per event against batches of 100.

    python -m benchmarks.publish_http            # 3 runs, medians
    python -m benchmarks.publish_http --runs 1 --messages 8

1,000 streams over 100 topics (10 each) on ``ours`` (gunicorn gevent, one
worker), as in the topics scenario of ``benchmarks.run``, and ``--messages``
events per topic published by 4 concurrent publishers (each owning a quarter
of the topics, so per-topic order is checked) in three ways, each on a fresh
server, interleaved within a run:

- ``route``: the benchmark app's own ``POST /publish?topic=T`` (a Flask view
  calling ``broadcast_to_topic``), one request per event: the figure of the
  topics scenario;
- ``single``: ``POST /_sse/publish`` with one event per request;
- ``batch100``: ``POST /_sse/publish`` with ``{"events": [...]}`` of 100 events.

Deliveries/s, server CPU per delivery and latency are measured exactly as
``benchmarks.run`` does (same ``deliver`` function, same load generator).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
import typing as t
from pathlib import Path

from . import loadgen
from .loadgen import Group, Publisher
from .run import RESULTS, _publish_path, _stream_path, deliver, warm_up
from .servers import IMPLS, LOADGEN_CPU, Running

KEY = "bench-publish-key"
MODES = ("route", "single", "batch100")
BATCH = 100


class EndpointPublisher(Publisher):
    """Publishes through ``POST /_sse/publish``: each event at once, or
    buffered into batches of ``batch`` events (each publisher's share of the
    schedule is a multiple of it, so nothing is left in the buffer)."""

    def __init__(self, port: int, batch: int = 1) -> None:
        super().__init__(port, lambda topic: "/_sse/publish")
        self.batch = batch
        self.buffer: list[dict[str, t.Any]] = []

    async def publish(self, topic: int, seq: int) -> int:
        self.buffer.append({"topic": str(topic), "data": f"{seq}:{topic}:{time.time():.6f}"})
        if len(self.buffer) < self.batch:
            return 200
        events, self.buffer = self.buffer, []
        body = events[0] if self.batch == 1 else {"events": events}
        return await self.post(topic, json.dumps(body, separators=(",", ":")).encode())

    async def _post(self, topic: int, body: bytes) -> int:
        assert self.writer is not None and self.reader is not None
        self.writer.write(
            b"POST /_sse/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"content-length: *(\d+)", head.lower())
        if match:
            await self.reader.readexactly(int(match.group(1)))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status


async def one(mode: str, n_subs: int, n_topics: int, n_msgs: int, n_publishers: int) -> dict[str, t.Any]:
    server = Running(IMPLS["ours"], 5.0, env={"BENCH_PUBLISH_KEY": KEY})
    try:
        impl = server.impl
        plain = Publisher(server.port, _publish_path(impl))
        await warm_up(plain)
        group = Group(n_msgs)
        await loadgen.open_streams(
            group, server.port, _stream_path(impl), [i % n_topics for i in range(n_subs)]
        )
        await loadgen.prime(group, plain, range(n_topics))
        schedule = [(tp, seq) for seq in range(n_msgs) for tp in range(n_topics)]
        publishers: list[Publisher]
        if mode == "route":
            publishers = [plain] + [
                Publisher(server.port, _publish_path(impl)) for _ in range(n_publishers - 1)
            ]
        else:
            batch = BATCH if mode == "batch100" else 1
            publishers = [EndpointPublisher(server.port, batch) for _ in range(n_publishers)]
        result = await deliver(server, group, publishers, schedule, None, group.primed * n_msgs)
        for p in [plain, *publishers]:
            p.close()
        result.update(
            mode=mode,
            requests=sum(sum(p.statuses.values()) for p in publishers),
            exact=all(s.counts == b"\x01" * n_msgs for s in group.streams if s.primed)
            and group.wrong_topic == 0
            and group.out_of_order == 0,
            primed=group.primed,
        )
        loadgen.close_streams(group)
        return result
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish_http", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=40, help="events per topic (a multiple of 4)")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--tag", default="publish-http")
    args = parser.parse_args(argv)
    share = 100 * args.messages // args.publishers
    if share % BATCH:
        parser.error(f"each publisher's share ({share} events) must be a multiple of {BATCH}")
    os.sched_setaffinity(0, {LOADGEN_CPU})
    rows = []
    for run in range(args.runs):
        for mode in MODES:
            row = asyncio.run(one(mode, 1000, 100, args.messages, args.publishers))
            row["run"] = run
            rows.append(row)
            print(
                f"run {run} {mode:9s} {row['deliveries_per_s']:9.0f} deliveries/s "
                f"{row['cpu_us_per_delivery'] or 0:6.1f} us/delivery  requests={row['requests']} "
                f"lost={row['lost']} exact={row['exact']} p99={row['p99_ms']} ms",
                file=sys.stderr,
            )
    summary = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {
            key: statistics.median(r[key] for r in mine if r[key] is not None)
            for key in ("deliveries_per_s", "cpu_us_per_delivery", "p50_ms", "p99_ms", "publish_rate")
        }
        summary[mode]["exact"] = all(r["exact"] for r in mine)
    ratio = summary["batch100"]["deliveries_per_s"] / summary["single"]["deliveries_per_s"]
    ratio_route = summary["batch100"]["deliveries_per_s"] / summary["route"]["deliveries_per_s"]
    out = {"rows": rows, "summary": summary, "batch_vs_single": ratio, "batch_vs_route": ratio_route}
    path = Path(RESULTS) / f"results-{args.tag}.json"
    path.write_text(json.dumps(out, indent=2))
    lines = [
        "| publishing | deliveries/s | CPU µs/delivery | p50 ms | p99 ms | exact |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        s = summary[mode]
        lines.append(
            f"| {mode} | {s['deliveries_per_s']:,.0f} | {s['cpu_us_per_delivery']:.1f} | "
            f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['exact']} |"
        )
    lines.append(f"\nbatch100 / single: {ratio:.2f}x; batch100 / route: {ratio_route:.2f}x")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
