"""Run every scenario against every server; write JSON and a markdown table.

    python -m benchmarks            # the full run (about 15 minutes)
    python -m benchmarks --quick    # one short pass, for a smoke test

See ``benchmarks/README.md`` for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import typing as t
from pathlib import Path

from . import cload, loadgen
from .delivery import _publish_path, _stream_path, deliver, warm_up
from .loadgen import CPUMeter, Group, Publisher
from .procstats import cpu_seconds, machine
from .report import markdown
from .servers import IMPLS, LOADGEN_CPU, Running

RESULTS = Path(__file__).resolve().parent / "results"


async def fanout(
    impl_name: str,
    sizes: list[int],
    n_burst: int,
    n_steady: int,
    rate: float,
    heartbeat: float,
    lg: t.Any = loadgen,
) -> list[dict[str, t.Any]]:
    """Burst then steady on one topic; ``lg``: ``loadgen`` or ``cload``."""
    out = []
    for n in sizes:
        server = Running(IMPLS[impl_name], heartbeat)
        try:
            impl = server.impl
            publisher = Publisher(server.port, _publish_path(impl))
            await warm_up(publisher)
            phases = [("burst", n_burst, None), ("steady", n_steady, rate)]
            group = lg.Group(max(n_burst, n_steady))
            await lg.open_streams(group, server.port, _stream_path(impl), [0] * n)
            primed = await lg.prime(group, publisher, [0])
            for mode, count, r in phases:
                result = await deliver(
                    server, group, [publisher], [(0, s) for s in range(count)], r, group.primed * count
                )
                result.update(
                    scenario="fanout",
                    mode=mode,
                    subscribers=n,
                    opened=group.ok,
                    primed=group.primed,
                    all_primed=primed,
                )
                out.append(result)
                _log(impl_name, result)
            await group.aclose()
            publisher.close()
        finally:
            server.stop()
    return out


async def topics(
    impl_name: str, n_subs: int, n_topics: int, n_msgs: int, heartbeat: float, n_publishers: int
) -> dict[str, t.Any]:
    server = Running(IMPLS[impl_name], heartbeat)
    try:
        impl = server.impl
        publisher = Publisher(server.port, _publish_path(impl))
        await warm_up(publisher)
        group = Group(n_msgs)
        await loadgen.open_streams(
            group, server.port, _stream_path(impl), [i % n_topics for i in range(n_subs)]
        )
        await loadgen.prime(group, publisher, range(n_topics))
        schedule = [(tp, seq) for seq in range(n_msgs) for tp in range(n_topics)]
        publishers = [publisher] + [
            Publisher(server.port, _publish_path(impl)) for _ in range(n_publishers - 1)
        ]
        result = await deliver(server, group, publishers, schedule, None, group.primed * n_msgs)
        for p in publishers:
            p.close()
        exact = (
            all(s.counts == b"\x01" * n_msgs for s in group.streams if s.primed)
            and group.wrong_topic == 0
            and group.out_of_order == 0
        )
        result.update(
            scenario="topics",
            subscribers=n_subs,
            topics=n_topics,
            messages=n_msgs,
            primed=group.primed,
            exact=exact,
        )
        _log(impl_name, result)
        loadgen.close_streams(group)
        publisher.close()
        return result
    finally:
        server.stop()


def idle_window_for(requested: float, heartbeat: float) -> float:
    """The idle window: a whole number of heartbeat periods (at least two),
    so it holds the same number of heartbeat rounds wherever it starts."""
    if heartbeat <= 0:
        return requested
    rounds = max(2, round(requested / heartbeat))
    return rounds * heartbeat


async def connections(
    impl_name: str, sizes: list[int], idle_window: float, heartbeat: float, distinct_topics: bool = False
) -> list[dict[str, t.Any]]:
    """Open ``sizes`` idle streams cumulatively on one server; RSS and idle
    CPU of the whole server (every process of its tree) at each.

    Each stream is ``GET <stream path>`` of topic 0, or of a topic of its own
    (``distinct_topics``). The window starts once every stream has received
    a primed event (so no stream is still being set up) and lasts a whole
    number of heartbeat periods.
    """
    server = Running(IMPLS[impl_name], heartbeat)
    window = idle_window_for(idle_window, heartbeat)
    out = []
    try:
        impl = server.impl
        publisher = Publisher(server.port, _publish_path(impl))
        await warm_up(publisher)
        await asyncio.sleep(0.5)
        rss0 = server.rss()
        groups: list[Group] = []
        opened = 0
        for n in sizes:
            group = Group(1, keep_latency=False)
            groups.append(group)
            t0 = time.monotonic()
            topics = list(range(opened, n)) if distinct_topics else [0] * (n - opened)
            await loadgen.open_streams(group, server.port, _stream_path(impl), topics, timeout=90)
            await loadgen.prime(group, publisher, sorted(set(topics)), timeout=60)
            open_s = time.monotonic() - t0
            opened = n
            await asyncio.sleep(1.0)
            alive = sum(1 for g in groups for s in g.streams if s.primed and s.state != loadgen.DONE)
            rss = server.rss()
            meter = CPUMeter()
            pids = server.measured_pids()
            per_pid0 = {pid: cpu_seconds(pid) for pid in pids}
            workers0 = server.worker_cpu()
            load = os.getloadavg()[0]
            w0 = time.monotonic()
            await asyncio.sleep(window)
            per_pid = {pid: cpu_seconds(pid) - per_pid0[pid] for pid in pids}
            workers = server.worker_cpu() - workers0
            elapsed = time.monotonic() - w0
            idle = sum(per_pid.values()) / elapsed
            alive_after = sum(1 for g in groups for s in g.streams if s.primed and s.state != loadgen.DONE)
            result = {
                "scenario": "connections",
                "connections": n,
                "topics": len(set(topics)) if distinct_topics else 1,
                "succeeded": min(alive, alive_after),
                "open_seconds": round(open_s, 2),
                "rss_mib": round(rss / 2**20, 1),
                "rss_kib_per_connection": round((rss - rss0) / 1024 / max(1, alive), 2),
                "idle_cpu_percent": round(idle * 100, 2),
                # The figure before the whole tree was counted: workers only.
                "idle_cpu_percent_workers": round(workers / elapsed * 100, 2),
                "idle_cpu_percent_by_process": [round(v / elapsed * 100, 3) for v in per_pid.values()],
                "idle_window_s": round(elapsed, 2),
                "load_average": round(load, 2),
                "loadgen_cpu": meter.utilisation(),
                "server_alive": server.alive(),
            }
            out.append(result)
            _log(impl_name, result)
            if not server.alive():
                break
        for g in groups:
            loadgen.close_streams(g)
        publisher.close()
    finally:
        server.stop()
    return out


def _log(impl: str, result: dict[str, t.Any]) -> None:
    keys = (
        "scenario",
        "mode",
        "subscribers",
        "connections",
        "deliveries_per_s",
        "cpu_us_per_delivery",
        "p50_ms",
        "p99_ms",
        "lost",
        "duplicated",
        "publish_rate",
        "succeeded",
        "rss_kib_per_connection",
        "idle_cpu_percent",
        "idle_cpu_percent_workers",
        "idle_cpu_percent_by_process",
        "load_average",
        "exact",
        "loadgen_cpu",
    )
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items() if k in keys}
    print(f"  [{impl}] {shown}", flush=True)


def micro(quick: bool) -> dict[str, t.Any]:
    cmd = [sys.executable, "-m", "benchmarks.publish_micro", "--json"]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )
    if done.returncode:
        return {"error": done.stderr[-2000:]}
    result: dict[str, t.Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def one_run(impls: list[str], args: argparse.Namespace) -> list[dict[str, t.Any]]:
    rows: list[dict[str, t.Any]] = []
    for name in impls:
        print(f"- {name}", flush=True)
        hb = args.heartbeat
        try:
            if "fanout" in args.scenarios and _selected(name, args.fanout_impls):
                lg = {"c": cload, "c-spin": cload.SPIN}.get(args.loadgen, loadgen)
                for r in await fanout(name, args.fanout_sizes, args.burst, args.steady, args.rate, hb, lg):
                    rows.append({"impl": name, **r})
            if "topics" in args.scenarios and _selected(name, args.topics_impls):
                rows.append(
                    {"impl": name, **await topics(name, 1000, 100, args.topic_messages, hb, args.publishers)}
                )
            if "connections" in args.scenarios and name in args.connection_impls:
                for r in await connections(
                    name, args.connection_sizes, args.idle_window, hb, args.idle_topics == "distinct"
                ):
                    rows.append({"impl": name, **r})
        except Exception as e:  # one server failing must not lose the others' figures
            print(f"  [{name}] FAILED: {e!r}", flush=True)
            rows.append({"impl": name, "scenario": "error", "error": repr(e)})
    return rows


def _selected(name: str, only: set[str]) -> bool:
    return not only or name in only


def summarise(rows: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """Median of every numeric figure over the runs of each (impl, scenario, size, mode)."""
    groups: dict[tuple[t.Any, ...], list[dict[str, t.Any]]] = {}
    for row in rows:
        if row["scenario"] == "error":
            continue
        key = (row["impl"], row["scenario"], row.get("mode"), row.get("subscribers"), row.get("connections"))
        groups.setdefault(key, []).append(row)
    out = []
    for rs in groups.values():
        med: dict[str, t.Any] = {"runs": len(rs)}
        for k in rs[0]:
            values = [r.get(k) for r in rs]
            nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if nums and len(nums) == len(values):
                med[k] = statistics.median(nums)
            elif all(isinstance(v, bool) for v in values):
                med[k] = all(values)
            else:
                med[k] = values[0]
        med["loadgen_bottleneck"] = any(r.get("loadgen_bottleneck") for r in rs)
        out.append(med)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one short pass (smoke test)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--impls", default="ours,handwritten,starlette,nchan,ours-pywsgi,flask-sse")
    parser.add_argument("--connection-impls", default="ours,handwritten,starlette,nchan,flask-sse")
    parser.add_argument("--fanout-impls", default="", help="servers of the fan-out scenario (default: all)")
    parser.add_argument("--topics-impls", default="", help="servers of the topics scenario (default: all)")
    parser.add_argument("--scenarios", default="fanout,topics,connections")
    parser.add_argument("--fanout-sizes", default="100,1000,5000")
    parser.add_argument("--connection-sizes", default="1000,5000,10000")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--steady", type=int, default=100, help="messages of the steady phase")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--topic-messages", type=int, default=20)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument(
        "--idle-window",
        type=float,
        default=20.0,
        help="seconds of idle CPU measurement, rounded to a whole number (>= 2) of heartbeat periods",
    )
    parser.add_argument(
        "--idle-topics",
        choices=("one", "distinct"),
        default="one",
        help="idle streams on one topic, or each on a topic of its own",
    )
    parser.add_argument("--publishers", type=int, default=4, help="concurrent publishers in the topics burst")
    parser.add_argument("--no-micro", action="store_true")
    parser.add_argument(
        "--loadgen",
        choices=("python", "c", "c-spin"),
        default="python",
        help="streams read by loadgen.py or sseload.c (c-spin: sseload never sleeps)",
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
        args.steady = 40
        args.burst = 100
        args.connection_sizes = "1000,5000"
        args.idle_window = 10.0
    args.fanout_sizes = [int(x) for x in args.fanout_sizes.split(",")]
    args.connection_sizes = [int(x) for x in args.connection_sizes.split(",")]
    args.scenarios = set(args.scenarios.split(","))
    if args.loadgen != "python" and args.scenarios - {"fanout"}:
        parser.error("--loadgen c runs the fan-out scenario only: add --scenarios fanout")
    args.connection_impls = set(args.connection_impls.split(","))
    args.fanout_impls = set(filter(None, args.fanout_impls.split(",")))
    args.topics_impls = set(filter(None, args.topics_impls.split(",")))
    impls = []
    for name in args.impls.split(","):
        why = IMPLS[name].available()
        if why:
            print(f"skipping {name}: {why}", flush=True)
        else:
            impls.append(name)
    try:
        os.sched_setaffinity(0, {LOADGEN_CPU})
    except OSError:
        print("could not pin the load generator", flush=True)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    info = machine()
    started = time.time()
    rows: list[dict[str, t.Any]] = []
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        rows += [{"run": run, **r} for r in asyncio.run(one_run(impls, args))]
    micro_result = {} if args.no_micro else micro(args.quick)
    summary = summarise(rows)
    RESULTS.mkdir(exist_ok=True)
    stem = "results" + (f"-{args.tag}" if args.tag else "") + ("-quick" if args.quick else "")
    payload = {
        "machine": info,
        "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        "seconds": round(time.time() - started),
        "summary": summary,
        "runs": rows,
        "micro": micro_result,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str))
    table = markdown(summary, micro_result, info, args.runs)
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"written {RESULTS / stem}.json and .md in {payload['seconds']} s")
    return 0
