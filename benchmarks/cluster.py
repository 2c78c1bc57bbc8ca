"""Publish throughput on a Redis Cluster: does it grow with the primaries?

    python -m benchmarks.cluster                       # 4 publishers, 3 runs of 4 s
    python -m benchmarks.cluster --publishers 2 --runs 1 --seconds 2

For each setup, ``--publishers`` processes each make a broker and call
``broadcast_to_topic`` (the library's publish: the Lua script, ``XADD`` and
``(S)PUBLISH``) in a loop for ``--seconds``, round-robin over ``--topics``
topics, with a ``--payload``-byte payload (100). Setups:

``redis``
    one plain ``redis-server`` and the single-Redis backend (the baseline);
``cluster-1``
    a one-primary cluster (every slot on one node), ``SSE_REDIS_CLUSTER``;
``cluster-3``
    a three-primary cluster (``redis-cli --cluster create``), ``SSE_REDIS_CLUSTER``.

Every server is started for the run on free ports (tests/cluster_support.py)
and stopped by PID afterwards. Reported per setup, medians over ``--runs``:

``events_per_s``
    events published per second, all publishers together;
``redis_cpu_us_per_event`` / ``busiest_primary_cpu_us_per_event``
    the Redis servers' CPU time (``/proc/<pid>/stat``) per event, summed and
    for the busiest one: the single-node ceiling is 1e6 / that figure.
``publisher_cpu_us_per_event``
    the publisher processes' CPU per event.

One machine runs publishers and servers alike, so the cluster's extra
primaries compete for the same cores: the busiest primary's CPU per event is
the figure that shows how far the ceiling moves on real hosts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
import typing as t

from tests.cluster_support import LocalCluster
from tests.redis_support import RedisServer

from .servers import cpu_seconds


def _publisher(
    url: str, cluster: bool, args: argparse.Namespace, start: t.Any, counts: t.Any, index: int
) -> None:
    from flask_sse_broker import SSEBroker, SSEConfig

    broker = SSEBroker(
        SSEConfig(redis_url=url, redis_cluster=cluster, redis_prefix="bench-cluster", heartbeat_interval=0)
    )
    topics = args.topics
    names = [f"topic-{i}" for i in range(topics)]
    payload = "x" * args.payload
    broker.broadcast_to_topic(names[0], payload)  # connect before the clock starts
    start.wait()
    deadline = time.monotonic() + args.seconds
    sent = 0
    while time.monotonic() < deadline:
        broker.broadcast_to_topic(names[sent % topics], payload)
        sent += 1
    counts[index] = sent


def _run_once(url: str, cluster: bool, server_pids: list[int], args: argparse.Namespace) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    counts = ctx.Array("l", args.publishers)
    procs = [
        ctx.Process(target=_publisher, args=(url, cluster, args, start, counts, i))
        for i in range(args.publishers)
    ]
    for p in procs:
        p.start()
    time.sleep(2.0)  # the publishers import and connect
    before = [cpu_seconds(pid) for pid in server_pids]
    pub_before = [cpu_seconds(p.pid) for p in procs if p.pid is not None]
    start.set()
    time.sleep(args.seconds)
    after = [cpu_seconds(pid) for pid in server_pids]
    pub_after = [cpu_seconds(p.pid) for p in procs if p.pid is not None]
    for p in procs:
        p.join(30)
    events = sum(counts)
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return {
        "events_per_s": events / args.seconds,
        "redis_cpu_us_per_event": sum(spent) / events * 1e6,
        "busiest_primary_cpu_us_per_event": max(spent) / events * 1e6,
        "publisher_cpu_us_per_event": (sum(pub_after) - sum(pub_before)) / events * 1e6,
    }


def _setup(name: str) -> tuple[t.Any, str, bool, list[int]]:
    if name == "redis":
        server = RedisServer().start()
        assert server.proc is not None
        return server, server.url, False, [server.proc.pid]
    cluster = LocalCluster(int(name.split("-")[1])).start()
    return cluster, cluster.url, True, [n.proc.pid for n in cluster.nodes if n.proc is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default="redis,cluster-1,cluster-3")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--topics", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--payload", type=int, default=100, help="bytes of data per event")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, t.Any]] = {}
    for name in args.setups.split(","):
        server, url, cluster, pids = _setup(name)
        try:
            runs = [_run_once(url, cluster, pids, args) for _ in range(args.runs)]
        finally:
            server.stop()
        results[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        results[name]["runs"] = [round(r["events_per_s"]) for r in runs]
        shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in results[name].items()}
        print(name, json.dumps(shown), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpus": os.cpu_count(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
