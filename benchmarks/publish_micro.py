"""Microbenchmark: what ``broadcast_to_topic`` costs the publisher.

5,000 connections on one topic are opened in process with
``broker.open_stream``; nobody reads them, and ``event_buffer_size`` is large
enough that nothing overflows. Each publish is timed on its own
(``time.perf_counter`` around the call, timeit-style with the collector off);
the figure is the median return time. It also reports the time until the
event is queued on every connection, which differs from the return time when
the fan-out runs off the publisher's thread.

    python -m benchmarks.publish_micro [--subscribers 5000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

from flask_sse_broker import SSEBroker, SSEConfig


def measure(subscribers: int, publishes: int, repeats: int) -> dict[str, float]:
    broker = SSEBroker(
        SSEConfig(event_buffer_size=publishes * repeats + 10, heartbeat_interval=0, handle_sigterm=False)
    )
    conns = [broker.open_stream(topics=["bench"]) for _ in range(subscribers)]
    for conn in conns:
        next(conn)  # the first frames: the stream is now live
    runs = []
    settle = []
    gc.disable()
    try:
        for _ in range(repeats):
            times = []
            for i in range(publishes):
                t0 = time.perf_counter()
                broker.broadcast_to_topic("bench", {"n": i})
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            expected = subscribers * publishes * (len(runs) + 1)
            while broker.stats()["queued_now"] < expected:  # the fan-out may lag the return
                time.sleep(0.0005)
                if time.perf_counter() - t0 > 30:
                    break
            settle.append(time.perf_counter() - t0)
            runs.append(statistics.median(times))
    finally:
        gc.enable()
    queued = broker.stats()["queued_now"]
    for conn in conns:
        conn.close()
    broker.shutdown(timeout=0)
    return {
        "subscribers": subscribers,
        "publishes_per_run": publishes,
        "runs": repeats,
        "publish_median_ms": statistics.median(runs) * 1000,
        "publish_best_run_ms": min(runs) * 1000,
        "drain_after_last_publish_ms": statistics.median(settle) * 1000,
        "queued_everywhere": float(queued == subscribers * publishes * repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    publishes, repeats = (20, 3) if args.quick else (100, 5)
    result = measure(args.subscribers, publishes, repeats)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
