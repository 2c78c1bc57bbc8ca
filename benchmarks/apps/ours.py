"""flask-sse-broker under test: the blueprint plus a publish route."""

from __future__ import annotations

import os
import typing as t

from flask import Flask, request

from flask_sse_broker import SSEBroker, SSEConfig, create_blueprint

app = Flask(__name__)
app.config["SECRET_KEY"] = "bench"
broker = SSEBroker(
    SSEConfig(
        heartbeat_interval=float(os.environ.get("BENCH_HEARTBEAT", "5")),
        event_buffer_size=int(os.environ.get("BENCH_BUFFER", "100")),
        max_topics_per_connection=10,
        # The Redis mode (``ours-redis``): the same app, events through Redis.
        redis_url=os.environ.get("SSE_REDIS_URL") or None,
        redis_prefix=os.environ.get("SSE_REDIS_PREFIX", "flask_sse"),
    )
)
# Benchmarks of what an optimisation bought switch it off through its
# documented attribute (``ours-event``), never by patching internals.
broker.batched_wakeups = os.environ.get("BENCH_WAKE", "batched") == "batched"
# HTTP publish (``benchmarks.publish_http``) and metrics (``ours-metrics``),
# as Flask config so the app also runs a library without those settings.
if os.environ.get("BENCH_PUBLISH_KEY"):
    app.config["SSE_PUBLISH_KEY"] = os.environ["BENCH_PUBLISH_KEY"]
if os.environ.get("BENCH_METRICS"):
    app.config["SSE_METRICS"] = True
app.register_blueprint(create_blueprint(broker))

if os.environ.get("BENCH_DEEP"):
    # Profiling only: a deeper Python stack during the connect request.
    def _deep(n: int) -> int:
        return _deep(n - 1) + 1 if n else 0

    @app.before_request
    def _deeper() -> None:
        _deep(int(os.environ["BENCH_DEEP"]))


if os.environ.get("BENCH_STACKMAX"):
    # Profiling only: the deepest Python stack (bytes of frames, from the
    # greenlet's first frame) while a stream's connect request runs.
    import sys

    def _frame_bytes(f: t.Any) -> int:
        c = f.f_code
        return 80 + 8 * (c.co_nlocals + len(c.co_cellvars) + len(c.co_freevars) + c.co_stacksize)

    _deepest: list[t.Any] = [0, ""]

    def _prof(frame: t.Any, event: str, arg: t.Any) -> None:
        if event != "call":
            return
        total, f, chain = 0, frame, []
        while f is not None:
            total += _frame_bytes(f)
            chain.append(f"{f.f_code.co_name}:{_frame_bytes(f)}")
            f = f.f_back
        if total > _deepest[0] and chain[-1].startswith("_handle_and_close_when_done"):
            _deepest[:2] = [total, " < ".join(chain)]

    sys.setprofile(_prof)

    @app.get("/_stackmax")
    def stackmax() -> dict[str, t.Any]:
        found = {"bytes": _deepest[0], "chain": _deepest[1]}
        _deepest[:] = [0, ""]
        return found


if os.environ.get("BENCH_GC_STATS"):
    # Profiling only: how often the cyclic GC runs in the worker and for how long.
    import gc
    import time

    _gc_time = [0.0, 0.0, 0.0]
    _gc_start = [0.0]

    _gc_log = os.environ.get("BENCH_GC_LOG")  # a file: every collection over 1 ms

    def _gc_clock(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _gc_start[0] = time.perf_counter()
        else:
            took = time.perf_counter() - _gc_start[0]
            _gc_time[info["generation"]] += took
            if _gc_log and took > 0.001:
                with open(_gc_log, "a") as log:
                    log.write(f"{time.time():.3f} gen {info['generation']} {took * 1000:.1f} ms\n")

    gc.callbacks.append(_gc_clock)

    @app.get("/_gcstats")
    def gc_stats() -> dict[str, object]:
        return {"stats": gc.get_stats(), "seconds": _gc_time, "objects": len(gc.get_objects())}

    @app.get("/_types")
    def types() -> dict[str, list[int]]:
        import sys
        from collections import Counter

        count: Counter[str] = Counter()
        size: Counter[str] = Counter()
        for o in gc.get_objects():
            try:
                name = f"{type(o).__module__}.{type(o).__qualname__}"
                count[name] += 1
                size[name] += sys.getsizeof(o)
            except Exception:  # a proxy whose type or size cannot be read
                continue
        import greenlet

        saved = [g._stack_saved for g in gc.get_objects() if isinstance(g, greenlet.greenlet)]
        count["greenlet-stacks-saved"] = len(saved)
        size["greenlet-stacks-saved"] = sum(saved)
        return {k: [count[k], size[k]] for k in count}


if os.environ.get("BENCH_TRACEMALLOC"):
    # Profiling only (run the server with PYTHONTRACEMALLOC=1): what the
    # streams opened since the last call keep, per allocating line, divided
    # by ``n`` (the number of streams opened in between).
    import gc
    import tracemalloc

    _last: list[tracemalloc.Snapshot] = []

    @app.get("/_tracemalloc")
    def allocations() -> dict[str, t.Any]:
        n = int(request.args.get("n", "1"))
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        out: dict[str, t.Any] = {}
        if _last:
            diff = snap.compare_to(_last[0], request.args.get("key", "lineno"))
            out["bytes_per_stream"] = sum(d.size_diff for d in diff) / n
            out["top"] = [[str(d.traceback), d.size_diff / n, d.count_diff / n] for d in diff[:40]]
        _last[:] = [snap]
        return out


@app.post("/publish")
def publish() -> dict[str, int]:
    queued = broker.broadcast_to_topic(request.args["topic"], request.get_data(as_text=True))
    return {"queued": queued}
