"""Microbenchmark: what topic patterns add to ``broadcast_to_topic``.

Two brokers, built side by side in one process:

``plain``
    10,000 connections, each subscribed to its own plain topic ``t/<i>/x``.
``patterns``
    The same 10,000 plain-topic connections, plus 10,000 connections each
    holding a *different* pattern: ``t/<j>/*``, ``*/<j>/x``, ``t/<j>/**`` and
    ``q<j>/*`` in turn (the last kind never matches; the others match the
    topic of their ``j``).

Each publish goes to ``t/<k>/x`` for ``k`` cycling over every topic, so it
reaches one connection in ``plain`` and one to three in ``patterns`` (each
once). Each publish is timed on its own (``time.perf_counter`` around the
call, collector off); a run's figure is the median, runs alternate between
the brokers, and the result is the median of the runs and their ratio. For
scale, it also times what matching by a scan of every pattern would cost per
publish (the design the index avoids).

    python -m benchmarks.topics_micro [--connections 10000] [--runs 5] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

from flask_sse_broker import SSEBroker, SSEConfig


def _pattern(j: int) -> str:
    return (f"t/{j}/*", f"*/{j}/x", f"t/{j}/**", f"q{j}/*")[j % 4]


def build(connections: int, patterns: bool) -> tuple[SSEBroker, list]:  # type: ignore[type-arg]
    # Each run publishes to half the topics, once each, and nobody reads:
    # the default buffer of 100 holds every run without an overflow.
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False))
    conns = [broker.open_stream(topics=[f"t/{i}/x"]) for i in range(connections)]
    if patterns:
        conns += [broker.open_stream(topics=[_pattern(j)]) for j in range(connections)]
    for conn in conns:
        next(conn)  # the first frames: the stream is now live
    return broker, conns


def run_once(
    broker: SSEBroker,
    conns: list,  # type: ignore[type-arg]
    connections: int,
    publishes: int,
    offset: int,
) -> tuple[float, float]:
    """The median publish time of one run, and the mean recipients per publish."""
    topics = [f"t/{(offset + i * 7919) % connections}/x" for i in range(publishes)]
    times = []
    queued = 0
    gc.disable()
    try:
        for topic in topics:
            t0 = time.perf_counter()
            queued += broker.broadcast_to_topic(topic, {"n": 1})
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return statistics.median(times), queued / publishes


def _naive_matches(pattern: list[str], segments: list[str]) -> bool:
    if pattern[-1] == "**":
        head = len(pattern) - 1
        return len(segments) > head and all(
            p in ("*", s) for p, s in zip(pattern[:head], segments[:head], strict=True)
        )
    if len(pattern) != len(segments):
        return False
    return all(p in ("*", s) for p, s in zip(pattern, segments, strict=True))


def scan_cost(connections: int, publishes: int) -> float:
    """Median time to find a topic's patterns by testing every one (split
    once, empty segments ignored: a lower bound of a scan's cost)."""
    held = [_pattern(j).split("/") for j in range(connections)]
    times = []
    for i in range(publishes):
        topic = f"t/{(i * 7919) % connections}/x"
        t0 = time.perf_counter()
        segments = topic.split("/")
        _ = [p for p in held if _naive_matches(p, segments)]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(connections: int, publishes: int, runs: int) -> dict[str, float]:
    plain, plain_conns = build(connections, False)
    patterned, patterned_conns = build(connections, True)
    plain_runs, pattern_runs = [], []
    recipients = {}
    for r in range(runs):
        median, recipients["plain"] = run_once(plain, plain_conns, connections, publishes, r)
        plain_runs.append(median)
        median, recipients["patterns"] = run_once(patterned, patterned_conns, connections, publishes, r)
        pattern_runs.append(median)
    scan = scan_cost(connections, min(publishes, 50))
    for broker, conns in ((plain, plain_conns), (patterned, patterned_conns)):
        for conn in conns:
            conn.close()
        broker.shutdown(timeout=0)
    plain_ms = statistics.median(plain_runs) * 1000
    pattern_ms = statistics.median(pattern_runs) * 1000
    return {
        "connections_plain": connections,
        "connections_patterns": 2 * connections,
        "publishes_per_run": publishes,
        "runs": runs,
        "recipients_per_publish_plain": recipients["plain"],
        "recipients_per_publish_patterns": recipients["patterns"],
        "plain_publish_median_us": plain_ms * 1000,
        "patterns_publish_median_us": pattern_ms * 1000,
        "ratio_patterns_over_plain": pattern_ms / plain_ms,
        "plain_runs_us": [round(x * 1e6, 2) for x in plain_runs],  # type: ignore[dict-item]
        "patterns_runs_us": [round(x * 1e6, 2) for x in pattern_runs],  # type: ignore[dict-item]
        "scan_of_every_pattern_us": scan * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    publishes = 500 if args.quick else 5000
    runs = 3 if args.quick else args.runs
    result = measure(args.connections, publishes, runs)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
