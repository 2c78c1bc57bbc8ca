"""Publish throughput on a Redis Cluster: does it grow with the primaries?

    python -m benchmarks.cluster                       # 4 publishers, 3 runs of 4 s
    python -m benchmarks.cluster --publishers 2 --runs 1 --seconds 2
    python -m benchmarks.cluster --batch 100           # batches of 100 events

For each setup, ``--publishers`` processes each make a broker and call
``broadcast_to_topic`` (the library's publish: the Lua script, ``XADD`` and
``(S)PUBLISH``) in a loop for ``--seconds``, round-robin over ``--topics``
topics, with a ``--payload``-byte payload (100). With ``--batch N`` they
publish N events per call instead, through what ``POST /_sse/publish`` with
``{"events": [...]}`` runs (``SSEBroker._publish_events``, the backend's
``publish_batch``: one ``MULTI``/``EXEC`` on one Redis, one pipeline per
primary on a cluster), the events built once before the clock starts; so the
Python publishers' per-call cost is spread over N events and Redis, not
them, becomes the bottleneck. Setups:

``redis``
    one plain ``redis-server`` and the single-Redis backend (the baseline);
``cluster-1``
    a one-primary cluster (every slot on one node), ``SSE_REDIS_CLUSTER``;
``cluster-3``
    a three-primary cluster (``redis-cli --cluster create``), ``SSE_REDIS_CLUSTER``.

Every server is started for the run on free ports (tests/cluster_support.py)
and stopped by PID afterwards; all setups' servers run at once and the runs
alternate between them (run 1 of each setup, then run 2 of each, ...), so
the other load on the machine falls on all of them alike. Reported per
setup, medians over ``--runs``:

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

from .procstats import cpu_seconds


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
    if args.batch:
        counts[index] = _publish_batches(broker, names, payload, args, start, index)
        return
    deadline = _ready(start, index)
    sent = 0
    while time.monotonic() < deadline:
        broker.broadcast_to_topic(names[sent % topics], payload)
        sent += 1
    counts[index] = sent


def _publish_batches(
    broker: t.Any, names: list[str], payload: str, args: argparse.Namespace, start: t.Any, index: int
) -> int:
    """``--batch``: N events per call, round-robin over the topics."""
    from flask_sse_broker import SSEEvent
    from flask_sse_broker._wire import Audience

    event = SSEEvent(payload)
    size = args.batch
    batches = [
        [(Audience.TOPIC, names[(b * size + i) % len(names)], event) for i in range(size)]
        for b in range(len(names))
    ]
    broker._publish_events(batches[0])  # every primary connected before the clock starts
    deadline = _ready(start, index)
    sent = 0
    while time.monotonic() < deadline:
        broker._publish_events(batches[sent // size % len(batches)])
        sent += size
    return sent


def _ready(start: t.Any, index: int) -> float:
    """Say this publisher is connected, wait for the start; the shared end
    (``time.monotonic`` is one clock for every process)."""
    ready, go, deadline = start
    ready[index] = 1
    go.wait()
    return float(deadline.value)


def _run_once(url: str, cluster: bool, server_pids: list[int], args: argparse.Namespace) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    # Every publisher connected before the clock starts (a slow import on a
    # loaded machine must not shift its events out of the measured window).
    start = (ctx.Array("b", args.publishers), ctx.Event(), ctx.Value("d", 0.0))
    counts = ctx.Array("l", args.publishers)
    procs = [
        ctx.Process(target=_publisher, args=(url, cluster, args, start, counts, i))
        for i in range(args.publishers)
    ]
    for p in procs:
        p.start()
    limit = time.monotonic() + 120
    while not all(start[0]) and time.monotonic() < limit:
        time.sleep(0.05)
    before = [cpu_seconds(pid) for pid in server_pids]
    pub_before = [cpu_seconds(p.pid) for p in procs if p.pid is not None]
    start[2].value = time.monotonic() + args.seconds
    start[1].set()
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
    parser.add_argument("--batch", type=int, default=0, help="events per publish call (0: one by one)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    names = args.setups.split(",")
    setups = {}
    try:
        for name in names:
            setups[name] = _setup(name)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for i in range(args.runs):
            for name in names if i % 2 == 0 else reversed(names):
                _, url, cluster, pids = setups[name]
                runs[name].append(_run_once(url, cluster, pids, args))
                print(name, f"run {i + 1}", round(runs[name][-1]["events_per_s"]), flush=True)
    finally:
        for server, *_ in setups.values():
            server.stop()
    results: dict[str, dict[str, t.Any]] = {}
    for name in names:
        results[name] = {key: statistics.median(r[key] for r in runs[name]) for key in runs[name][0]}
        results[name]["runs"] = [{k: round(v, 1) for k, v in r.items()} for r in runs[name]]
        shown = {k: round(v, 1) for k, v in results[name].items() if k != "runs"}
        print(name, json.dumps(shown), [round(r["events_per_s"]) for r in runs[name]], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpus": os.cpu_count(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
