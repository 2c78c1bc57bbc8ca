"""What the benchmarks read about processes: CPU time, RSS and process trees
from ``/proc``, free ports, and the machine the run is on."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import typing as t

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of one process, threads included.

    Live threads are read from ``/proc/<pid>/task/*/schedstat`` (nanosecond
    resolution); threads that already exited are counted from
    ``/proc/<pid>/stat`` (10 ms ticks), so the figure never goes backwards.
    """
    total_ticks = _stat_ticks(f"/proc/{pid}/stat")
    live_ns = live_ticks = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                live_ns += int(f.read().split()[0])
            live_ticks += _stat_ticks(f"/proc/{pid}/task/{tid}/stat")
    except (OSError, ValueError):
        return total_ticks / CLK_TCK
    if not live_ns:
        return total_ticks / CLK_TCK
    # The process's ticks and its threads' are rounded separately (the
    # kernel's ``cputime_adjust``): a difference of one tick is that rounding,
    # not an exited thread, and counting it made an idle process's CPU jump
    # by 10 ms between two reads (even backwards).
    exited = total_ticks - live_ticks
    return live_ns / 1e9 + (exited if exited > 1 else 0) / CLK_TCK


def _stat_ticks(path: str) -> int:
    try:
        with open(path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:  # exited meanwhile
        return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents first."""
    out = [pid]
    for child in children(pid):
        out += descendants(child)
    return out


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def machine() -> dict[str, t.Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    versions = {}
    for mod in ("flask", "gunicorn", "gevent", "uvicorn", "sse_starlette", "uvloop", "flask_sse"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "?")
        except ImportError:
            pass
    try:
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    except OSError:
        nginx = ""
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": nginx,
        "versions": versions,
        "loop": type(asyncio.get_event_loop_policy()).__module__,
    }
