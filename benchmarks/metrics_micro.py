"""The CPU cost of metrics per delivery, in process, without sockets.

    python -m benchmarks.metrics_micro

1,000 streams (``broker.open_stream``) on one topic; each round publishes one
event and then asks every stream for its next chunk, as the server does after
each write. One event per chunk is the worst case for the metrics: the write
is timed once per chunk, so here once per delivery. Metrics off and on
run in back-to-back pairs (order alternating), each timed with
``process_time`` and GC off; the figure is the median of the pairs' ratios.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

from flask_sse_broker import SSEBroker, SSEConfig


def one(metrics: bool, streams: int, rounds: int) -> float:
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, metrics=metrics or None, handle_sigterm=False))
    conns = [broker.open_stream(topics=["t"]) for _ in range(streams)]
    for conn in conns:
        next(conn)  # the first frames
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        for i in range(rounds):
            broker.broadcast_to_topic("t", i)
            for conn in conns:
                next(conn)  # times the previous write, takes the new event
        elapsed = time.process_time() - start
    finally:
        gc.enable()
    broker.shutdown(timeout=0)
    return elapsed / (streams * rounds) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_micro", description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    results: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    one(False, 100, 10)  # warm up imports and caches
    one(True, 100, 10)
    for run in range(args.runs):
        # Pairs back to back, the order alternating: the machine's drift
        # cancels out of each pair's ratio.
        order = (False, True) if run % 2 == 0 else (True, False)
        pair = {metrics: one(metrics, args.streams, args.rounds) for metrics in order}
        for metrics, value in pair.items():
            results[metrics].append(value)
        ratios.append(pair[True] / pair[False])
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"metrics off: {off:.3f} us/delivery (runs: {', '.join(f'{v:.2f}' for v in results[False])})")
    print(f"metrics on:  {on:.3f} us/delivery (runs: {', '.join(f'{v:.2f}' for v in results[True])})")
    print(
        f"on/off, median of {args.runs} back-to-back pairs: {(statistics.median(ratios) - 1) * 100:+.1f} % "
        "per delivery (one event per write: the worst case)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
