"""The Markdown tables of a benchmark run (``results/results[-TAG].md``)."""

from __future__ import annotations

import typing as t

from .servers import IMPLS

Row = dict[str, t.Any]


def markdown(summary: list[Row], micro_result: dict[str, t.Any], info: dict[str, t.Any], runs: int) -> str:
    """Every scenario's table, after a line on how the figures were taken."""
    lines = [
        f"Medians of {runs} run(s); server pinned to CPU 0, load generator to CPU 1. {info['cpu']}, "
        f"{info['cpus']} CPUs, Python {info['python']}, kernel {info['kernel']}.",
        "",
    ]
    by_scenario: dict[str, list[Row]] = {}
    for row in summary:
        by_scenario.setdefault(row["scenario"], []).append(row)
    lines += _fanout(by_scenario.get("fanout", []))
    lines += _topics(by_scenario.get("topics", []))
    lines += _connections(by_scenario.get("connections", []))
    lines += _micro(micro_result)
    return "\n".join(lines)


def _f(value: t.Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _order(impl: str) -> int:
    return list(IMPLS).index(impl)


def _label(impl: str) -> str:
    return IMPLS[impl].label


def _fanout(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    lines = [
        "### Fan-out (one topic)",
        "",
        "| mode | subscribers | server | CPU µs / delivery | deliveries/s | publishes/s "
        "| p50 ms | p99 ms | max ms | lost | dup | loadgen CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["mode"], r["subscribers"], _order(r["impl"]))):
        lg = f"{r['loadgen_cpu'] * 100:.0f} %" + (" ⚠" if r["loadgen_bottleneck"] else "")
        lines.append(
            f"| {r['mode']} | {r['subscribers']:,} | {_label(r['impl'])} "
            f"| {_f(r['cpu_us_per_delivery'], 2)} "
            f"| {_f(r['deliveries_per_s'], 0)} | {_f(r['publish_rate'], 1)} | {_f(r['p50_ms'])} "
            f"| {_f(r['p99_ms'])} | {_f(r['max_ms'])} | {_f(r['lost'], 0)} "
            f"| {_f(r['duplicated'], 0)} | {lg} |"
        )
    if any(r["impl"].startswith("ours-redis") for r in rows):
        lines.append(
            "Redis rows: events go through the shared Redis at 127.0.0.1:6379 (not pinned); "
            "its CPU is counted in their CPU µs / delivery."
        )
    return [*lines, ""]


def _topics(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    lines = [
        "### Topics (1,000 subscribers over 100 topics, burst)",
        "",
        "| server | deliveries/s | CPU µs / delivery | p99 ms | lost | exact per-topic delivery |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: _order(r["impl"])):
        lines.append(
            f"| {_label(r['impl'])} | {_f(r['deliveries_per_s'], 0)} | {_f(r['cpu_us_per_delivery'], 2)} "
            f"| {_f(r['p99_ms'])} | {_f(r['lost'], 0)} | {_f(r['exact'])} |"
        )
    return [*lines, ""]


def _connections(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    lines = [
        "### Idle connections (heartbeat every 5 s)",
        "",
        "Idle CPU % is the whole server (every process of its tree, master included: what `top`"
        " shows), over a whole number of heartbeat periods; the workers-only column is the figure"
        " counted before.",
        "",
        "| connections | server | succeeded | RSS KiB / connection | idle CPU % | workers only | load avg |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["connections"], _order(r["impl"]))):
        lines.append(
            f"| {r['connections']:,} | {_label(r['impl'])} | {_f(r['succeeded'], 0)} "
            f"| {_f(r['rss_kib_per_connection'])} | {_f(r['idle_cpu_percent'], 2)} "
            f"| {_f(r.get('idle_cpu_percent_workers'), 2)} | {_f(r.get('load_average'), 1)} |"
        )
    return [*lines, ""]


def _micro(result: dict[str, t.Any]) -> list[str]:
    if not result or "error" in result:
        return []
    lines = [
        "### In-process publish (`broadcast_to_topic`, 5,000 local subscribers)",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {_f(v, 3)} |" for k, v in result.items() if isinstance(v, (int, float))]
    return [*lines, ""]
