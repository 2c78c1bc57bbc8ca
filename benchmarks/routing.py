"""Routing: does a process receive events it has no recipient for?

    python -m benchmarks.routing                     # P = 1, 4, 16; 3 runs
    python -m benchmarks.routing --processes 1,4 --runs 1 --seconds 5
    python -m benchmarks.routing --cluster           # on a 3-primary Redis Cluster

P subscriber processes share one private ``redis-server`` (started on a free
port for the run, so nothing else's traffic is counted), or with
``--cluster`` a private three-primary Redis Cluster (``SSE_REDIS_CLUSTER``;
Redis figures summed over the primaries). ``--topics`` topics
are spread over them round-robin, one in-process stream per topic (a reader
thread each: a lightweight subscriber, no HTTP), so every published event has
exactly one recipient in the whole system however large P is. A publisher (a
broker of this process with no streams) publishes ``--rate`` events per second
for ``--seconds``, round-robin over the topics.

Figures per P, over the publishing phase:

``redis_out_bytes_per_event``
    Redis's ``total_net_output_bytes`` growth divided by the events published:
    what Redis sends for one event (to every listener, plus the publisher's
    reply).
``cpu_us_per_event`` / ``max_process_cpu_us_per_event``
    The subscriber processes' CPU (``/proc/<pid>/stat``, user + system) divided
    by the events published: summed over all of them, and the busiest one.
``read_bytes_per_event``
    Bytes the subscriber processes received from Redis (``bytes_received`` of
    their sockets, from ``ss -ti``), summed, per event.

With every process receiving every event, the first three grow linearly with
P; with routing they stay flat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import typing as t

from .procstats import cpu_seconds, free_port
from .servers import ROOT


def _bytes_received(redis_ports: list[int]) -> dict[int, int]:
    """Bytes each process received from Redis so far, per PID: the sum of
    ``bytes_received`` (TCP_INFO, via ``ss``) of its sockets to Redis."""
    ports = " or ".join(f"dport = :{port}" for port in redis_ports)
    out = subprocess.run(["ss", "-tinpH", ports], capture_output=True, text=True, check=True).stdout
    totals: dict[int, int] = {}
    pid = None
    for line in out.splitlines():
        found = re.search(r"pid=(\d+)", line)
        if found:
            pid = int(found.group(1))
        got = re.search(r"bytes_received:(\d+)", line)
        if got and pid is not None:
            totals[pid] = totals.get(pid, 0) + int(got.group(1))
    return totals


# -- one subscriber process ----------------------------------------------------


def node(url: str, prefix: str, topics: list[str], cluster: bool) -> None:
    """Open one stream per topic, read them, report counts when stdin closes."""
    from flask_sse_broker import BrokerUnavailable, SSEBroker, SSEConfig

    broker = SSEBroker(
        SSEConfig(**_config(url, prefix, cluster), heartbeat_interval=0, event_buffer_size=10_000)
    )
    received = dict.fromkeys(topics, 0)

    def read(topic: str) -> None:
        for _ in range(100):  # a 503 while the listener starts: as a browser, again
            try:
                conn = broker.open_stream(topics=[topic])
                break
            except BrokerUnavailable:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"no stream for {topic}")
        for chunk in conn:
            received[topic] += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")

    for topic in topics:
        threading.Thread(target=read, args=(topic,), daemon=True).start()
    deadline = time.monotonic() + 30
    while broker.stats().get("connections", 0) < len(topics) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready", flush=True)
    sys.stdin.read()  # the benchmark closes stdin when done
    # Each stream's first frame (``connected``) carries an id too.
    print(json.dumps({"received": sum(received.values()) - len(topics)}), flush=True)
    broker.shutdown(timeout=1)


# -- the benchmark ---------------------------------------------------------------


def _config(url: str, prefix: str, cluster: bool) -> dict[str, t.Any]:
    return {"redis_url": url, "redis_prefix": prefix, **({"redis_cluster": True} if cluster else {})}


class PrivateCluster:
    """A three-primary cluster (tests/cluster_support.py), same interface."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.cluster_support import LocalCluster

        self.cluster = LocalCluster(3).start()
        self.ports = [n.port for n in self.cluster.nodes]
        self.url = self.cluster.url

    def out_bytes(self) -> int:
        return sum(int(n.client().info("stats")["total_net_output_bytes"]) for n in self.cluster.nodes)

    def stop(self) -> None:
        self.cluster.stop()


class PrivateRedis:
    def __init__(self, tmp: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        self.client = redis.Redis(port=self.port)
        self.ports = [self.port]
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def out_bytes(self) -> int:
        return int(self.client.info("stats")["total_net_output_bytes"])

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


def one(p: int, args: argparse.Namespace, server: PrivateRedis | PrivateCluster) -> dict[str, t.Any]:
    redis_url, out_bytes = server.url, server.out_bytes
    from flask_sse_broker import SSEBroker, SSEConfig

    prefix = f"bench-routing-{os.getpid()}-{p}-{time.monotonic_ns()}"
    topics = [f"t{i}" for i in range(args.topics)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    kind = "cluster" if args.cluster else "single"
    for i in range(p):
        mine = ",".join(topics[i::p])
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.routing", "--node", redis_url, prefix, mine, kind],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
        )
    publisher = SSEBroker(SSEConfig(**_config(redis_url, prefix, args.cluster)))
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a subscriber process did not start")
        time.sleep(0.5)  # let the listeners settle before the figures start
        pids = [proc.pid for proc in procs]
        cpu0 = [cpu_seconds(pid) for pid in pids]
        got0 = _bytes_received(server.ports)
        out0 = out_bytes()
        n = int(args.rate * args.seconds)
        body = "x" * args.payload
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.broadcast_to_topic(topics[i % len(topics)], body)
        time.sleep(1.0)  # the last events reach their readers
        cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        got = _bytes_received(server.ports)
        read = [got.get(pid, 0) - got0.get(pid, 0) for pid in pids]
        out = out_bytes() - out0
        received = 0
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            line = proc.stdout.readline()
            received += json.loads(line)["received"] if line.strip() else 0
    finally:
        publisher.shutdown(timeout=1)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
    row = {
        "processes": p,
        "published": n,
        "received": received,
        "redis_out_bytes_per_event": round(out / n, 1),
        "cpu_us_per_event": round(sum(cpu) / n * 1e6, 1),
        "max_process_cpu_us_per_event": round(max(cpu) / n * 1e6, 1),
        "read_bytes_per_event": round(sum(read) / n, 1),
    }
    print(f"  P={p}: {json.dumps(row)}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--node":
        node(sys.argv[2], sys.argv[3], sys.argv[4].split(","), sys.argv[5] == "cluster")
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__)
    parser.add_argument("--processes", default="1,4,16")
    parser.add_argument("--topics", type=int, default=64)
    parser.add_argument("--rate", type=float, default=300.0, help="events published per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--payload", type=int, default=100, help="bytes of data per event")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default="")
    parser.add_argument("--cluster", action="store_true", help="a 3-primary Redis Cluster")
    args = parser.parse_args(argv)
    import tempfile

    tmp = tempfile.mkdtemp(prefix="sse-bench-routing-")
    server = PrivateCluster() if args.cluster else PrivateRedis(tmp)
    rows = []
    try:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for p in (int(x) for x in args.processes.split(",")):
                rows.append({"run": run, **one(p, args, server)})
    finally:
        server.stop()
    keys = (
        "redis_out_bytes_per_event",
        "cpu_us_per_event",
        "max_process_cpu_us_per_event",
        "read_bytes_per_event",
    )
    print("\n| processes | Redis out bytes / event | subscriber CPU µs / event (sum) | busiest process "
          "| bytes read / event (sum) | received / published |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    summary = []
    for p in sorted({r["processes"] for r in rows}):
        rs = [r for r in rows if r["processes"] == p]
        med = {k: statistics.median(r[k] for r in rs) for k in keys}
        med.update(processes=p, received=min(r["received"] for r in rs), published=rs[0]["published"])
        summary.append(med)
        print(
            f"| {p} | {med['redis_out_bytes_per_event']:,.0f} | {med['cpu_us_per_event']:,.0f} "
            f"| {med['max_process_cpu_us_per_event']:,.0f} | {med['read_bytes_per_event']:,.0f} "
            f"| {med['received']:,} / {med['published']:,} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
