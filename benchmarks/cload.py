"""The load generator in C (``sseload.c``), driven from the benchmark.

The Python load generator (``loadgen.py``) is near saturation in the steady
5,000 and burst 1,000 fan-outs, so its latencies are partly its own queueing.
``sseload`` opens and reads the streams in one epoll thread, with the same
parsing and counting rules; the publisher stays in Python
(:class:`benchmarks.loadgen.Publisher`). ``Group``, ``open_streams``,
``prime`` and ``close_streams`` mirror ``loadgen``'s, so ``run.fanout`` and
``delivery.deliver`` take either (``python -m benchmarks --loadgen c``).

The binary is built with ``gcc -O2`` on first use into a cache directory
(``$XDG_CACHE_HOME/flask-sse-broker-bench``, or ``~/.cache``), keyed by the
source's hash; it runs pinned to the load generator's CPU.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import types
import typing as t
from array import array
from collections import Counter
from pathlib import Path

from .loadgen import Publisher
from .procstats import cpu_seconds
from .servers import LOADGEN_CPU

SOURCE = Path(__file__).resolve().parent / "sseload.c"


class CLoadError(RuntimeError):
    pass


def binary() -> Path:
    """The compiled ``sseload``, built on first use."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flask-sse-broker-bench"
    target = cache / f"sseload-{digest}"
    if target.exists():
        return target
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if gcc is None:
        raise CLoadError("--loadgen c needs a C compiler: gcc not found on PATH (apt-get install gcc)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".sseload-{digest}-{os.getpid()}"
    done = subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if done.returncode:
        raise CLoadError(f"compiling {SOURCE} failed:\n{done.stderr}")
    tmp.replace(target)
    return target


class ProcessMeter:
    """CPU share of one core used by another process (the C load generator)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_cpu = cpu_seconds(pid)
        self.start_wall = time.monotonic()

    def utilisation(self) -> float:
        wall = time.monotonic() - self.start_wall
        return (cpu_seconds(self.pid) - self.start_cpu) / wall if wall > 0 else 0.0


class Group:
    """The streams of one scenario, held by an ``sseload`` process.

    The counters are those of :class:`benchmarks.loadgen.Group`, as of the
    last :meth:`refresh` (cheap) or :meth:`collect` (everything, latencies
    included).
    """

    kind = "c"
    #: ``sseload ... spin``: poll without sleeping (see ``SPIN``).
    spin = False

    def __init__(self, n_messages: int, keep_latency: bool = True) -> None:
        self.n_messages = n_messages
        self.keep_latency = keep_latency
        self.proc: asyncio.subprocess.Process | None = None
        self.latencies = array("d")
        self.deliveries = self.wrong_topic = self.out_of_order = 0
        self.primed = self.ok = self.failed = self.closed = self.live = 0
        self.first_at = self.last_at = 0.0
        self.bytes = 0
        self.received = self.total = 0
        self.unprimed_topics: list[int] = []
        self.own: dict[str, t.Any] = {}
        self._dir = tempfile.mkdtemp(prefix="sseload-")

    async def start(self) -> None:
        if self.proc is not None:
            return
        self.proc = await asyncio.create_subprocess_exec(
            str(binary()),
            str(self.n_messages),
            *(["spin"] if self.spin else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=lambda: os.sched_setaffinity(0, {LOADGEN_CPU}),
        )

    async def command(self, line: str) -> dict[str, t.Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()
        answer = await proc.stdout.readline()
        if not answer:
            raise CLoadError(f"sseload exited ({await proc.wait()}) on {line!r}")
        reply: dict[str, t.Any] = json.loads(answer)
        for key in ("deliveries", "primed", "ok", "failed", "closed", "live", "first_at", "last_at"):
            if key in reply:
                setattr(self, key, reply[key])
        if "unprimed_topics" in reply:
            self.unprimed_topics = reply["unprimed_topics"]
        return reply

    # What benchmarks.delivery asks of a load generator.
    async def begin(self) -> None:
        await self.command("reset")
        self.latencies = array("d")
        self.deliveries = self.wrong_topic = self.out_of_order = self.bytes = 0
        self.received = self.total = 0
        self.first_at = self.last_at = 0.0

    async def refresh(self) -> None:
        await self.command("count")

    async def collect(self) -> None:
        path = os.path.join(self._dir, "latencies")
        reply = await self.command(f"stats {path}" if self.keep_latency else "stats")
        self.bytes = reply["bytes"]
        self.wrong_topic = reply["wrong_topic"]
        self.out_of_order = reply["out_of_order"]
        self.received, self.total = reply["received"], reply["total"]
        self.own = reply
        self.latencies = array("d")
        if self.keep_latency:
            with open(path, "rb") as f:
                self.latencies.frombytes(f.read())
            os.unlink(path)

    def received_total(self) -> tuple[int, int]:
        return self.received, self.total

    def figures(self) -> dict[str, t.Any]:
        """What sseload itself did in the phase: reads, epoll wake-ups, how
        long a wake-up's batch took (an event waits in sseload at most about
        two batches), user and system CPU seconds, context switches."""
        own = self.own
        if not own:
            return {}
        return {
            "loadgen_reads": own["reads"],
            "loadgen_wakeups": own["wakeups"],
            "loadgen_batch_p50_ms": round(own["batch_p50"] * 1000, 3),
            "loadgen_batch_p99_ms": round(own["batch_p99"] * 1000, 3),
            "loadgen_batch_max_ms": round(own["batch_max"] * 1000, 3),
            "loadgen_user_s": own["user_s"],
            "loadgen_sys_s": own["sys_s"],
            "loadgen_voluntary_switches": own["voluntary_switches"],
            "loadgen_involuntary_switches": own["involuntary_switches"],
            # Share of the phase spent handling events (with spin, loadgen_cpu is ~100 %).
            "loadgen_busy": own["busy_s"] / own["since_reset_s"] if own["since_reset_s"] else None,
        }

    def meter(self) -> ProcessMeter:
        assert self.proc is not None
        return ProcessMeter(self.proc.pid)

    async def aclose(self) -> None:
        """Abort every stream and end the process."""
        if self.proc is None:
            return
        await self.command("close")
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"quit\n")
        self.proc.stdin.close()
        await self.proc.wait()
        self.proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


async def open_streams(
    group: Group,
    port: int,
    path_for: t.Callable[[int], str],
    topics: t.Sequence[int],
    concurrency: int = 500,
    timeout: float = 60.0,
) -> None:
    """One stream per entry of ``topics``, ``concurrency`` connects at a time."""
    await group.start()
    assert group.proc is not None and group.proc.stdin is not None
    for topic, count in Counter(topics).items():
        path = path_for(topic)
        if any(c.isspace() for c in path):
            raise CLoadError(f"sseload takes paths without white space: {path!r}")
        group.proc.stdin.write(f"add {port} {topic} {count} {path}\n".encode())
    await group.command(f"connect {concurrency} {timeout}")


async def prime(group: Group, publisher: Publisher, topics: t.Iterable[int], timeout: float = 60.0) -> bool:
    """Publish a priming event on every topic until every open stream saw one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wanted = sorted(set(topics))
    await group.refresh()
    while loop.time() < deadline:
        unprimed = set(group.unprimed_topics)
        for tp in wanted:
            if tp in unprimed:
                await publisher.post(tp, b"prime")
        wait_until = loop.time() + 2.0
        while loop.time() < min(wait_until, deadline):
            await group.refresh()
            if group.primed >= group.live:
                return True
            await asyncio.sleep(0.05)
    return group.primed >= group.live


async def close_streams(group: Group) -> None:
    await group.aclose()


class SpinGroup(Group):
    """``sseload`` polling epoll without sleeping: its CPU never idles, so
    the server never pays for waking it (on a VM, an IPI per wake-up); its
    CPU share is then ~100 % by construction, ``loadgen_busy`` says how much
    of it was work."""

    kind = "c-spin"
    spin = True


#: ``--loadgen c-spin``: this module with :class:`SpinGroup`.
SPIN = types.SimpleNamespace(
    Group=SpinGroup, open_streams=open_streams, prime=prime, close_streams=close_streams
)
