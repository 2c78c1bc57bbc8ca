"""The reconnect storm: every client of a worker connecting at once.

    python -m benchmarks.storm                       # 10,000 clients, 3 runs
    python -m benchmarks.storm --clients 5000 --concurrency 200 --runs 1

What happens after every deploy: SIGTERM ends the streams and every client
reconnects within its ``retry``. One gunicorn gevent worker (``apps/ours.py``),
the in-process backend and the Redis backend in the same run, servers
interleaved. Two storms per server:

``fresh``
    N brand-new clients open ``/_sse/connect?topics=t`` at once, at most
    ``--concurrency`` connection attempts in flight.
``resume``
    The same N clients drop their streams and reconnect at once with the
    ``token`` and the last event id their ``connected`` event carried, after a
    few events were published meanwhile (so every resume replays).

Each storm counts the answers by status and times how long it took until
every client was streaming (its ``event: connected`` frame arrived), from the
first connection attempt. A client whose answer was not 200 does not retry:
the figure is how many the server turned away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import time
import typing as t

from .loadgen import CPUMeter, Publisher
from .servers import IMPLS, LOADGEN_CPU, Running

_CONNECTED = re.compile(rb"event: connected\r?\ndata: (\{.*?\})\r?\n")
_ERROR = re.compile(rb'"error": ?"((?:[^"\\]|\\.)*)"')


class StormClient(asyncio.Protocol):
    """One client: its status, when it started streaming, its token and cursor."""

    def __init__(self, request: bytes, storm: Storm) -> None:
        self.request = request
        self.storm = storm
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.status = 0
        self.streaming_at = 0.0
        self.token: str | None = None
        self.last_id: str | None = None
        self.events = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            self.events += data.count(b"\nid: ")
            return
        self.buf += data
        if not self.status:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.buf[9:12])
        if self.status != 200:
            match = _ERROR.search(self.buf)
            if match or len(self.buf) > 4096:
                self._finish(match.group(1).decode(errors="replace") if match else "?")
            return
        match = _CONNECTED.search(self.buf)
        if match is None:
            return
        hello = json.loads(match.group(1))
        self.token = hello.get("token")
        self.last_id = hello.get("lastEventId")
        self.streaming_at = time.monotonic()
        self.events += self.buf.count(b"\nid: ") - 1
        self.buf = b""
        self._finish(None)

    def _finish(self, error: str | None) -> None:
        if error is not None:
            error = re.sub(r"'[^']*'", "'…'", error)  # one line per kind, not per client id
            self.storm.errors[error] = self.storm.errors.get(error, 0) + 1
            if self.transport is not None:
                self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Storm:
    """One storm's clients and what they were answered."""

    def __init__(self) -> None:
        self.clients: list[StormClient] = []
        self.errors: dict[str, int] = {}
        self.refused = 0
        self.timed_out = 0

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.clients:
            key = str(c.status) if c.status else "none"
            out[key] = out.get(key, 0) + 1
        return out

    def close(self) -> None:
        for c in self.clients:
            if c.transport is not None:
                c.transport.abort()


async def storm(
    port: int, paths: t.Sequence[str], concurrency: int, timeout: float
) -> tuple[Storm, float, float]:
    """Open one client per path at once, ``concurrency`` attempts in flight.
    Returns the storm, the seconds until the last client was streaming, and
    the load generator's CPU share."""
    loop = asyncio.get_running_loop()
    result = Storm()
    sem = asyncio.Semaphore(concurrency)
    meter = CPUMeter()
    t0 = time.monotonic()
    deadline = t0 + timeout

    async def one(path: str) -> None:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        client = StormClient(request, result)
        result.clients.append(client)
        async with sem:
            left = deadline - loop.time()
            try:
                await asyncio.wait_for(loop.create_connection(lambda: client, "127.0.0.1", port), left)
                # The attempt is "in flight" until its answer starts streaming.
                await asyncio.wait_for(asyncio.shield(client.done), max(0.01, deadline - loop.time()))
            except (TimeoutError, asyncio.TimeoutError):
                result.timed_out += 1
            except OSError:
                result.refused += 1

    await asyncio.gather(*(one(p) for p in paths))
    streaming = [c.streaming_at for c in result.clients if c.streaming_at]
    elapsed = (max(streaming) - t0) if streaming else float("nan")
    return result, elapsed, meter.utilisation()


async def one_server(impl_name: str, args: argparse.Namespace) -> list[dict[str, t.Any]]:
    """A fresh storm on one server, then a deploy: the server gets SIGTERM (its
    streams end), a new one starts, and every client resumes on it at once."""
    server = Running(IMPLS[impl_name], args.heartbeat)
    successor: Running | None = None
    rows = []
    try:
        publisher = Publisher(server.port, lambda topic: f"/publish?topic={topic}")
        await publisher.post(0, b"warmup")
        fresh, fresh_s, fresh_lg = await storm(
            server.port, ["/_sse/connect?topics=0"] * args.clients, args.concurrency, args.timeout
        )
        rows.append(_row(impl_name, "fresh", fresh, fresh_s, fresh_lg, args))
        resumable = [c for c in fresh.clients if c.token and c.last_id]
        publisher.close()
        # The deploy: the old worker ends its streams on SIGTERM (and writes
        # its clients' sessions to Redis); the history stays in Redis.
        prefix, server.redis_prefix = server.redis_prefix, None
        server.stop()
        fresh.close()
        env = {"SSE_REDIS_PREFIX_REUSE": prefix} if prefix else {}
        successor = Running(IMPLS[impl_name], args.heartbeat, env=env)
        publisher = Publisher(successor.port, lambda topic: f"/publish?topic={topic}")
        for i in range(args.missed):  # published while everyone is away
            await publisher.post(0, b"%d:0:%.6f" % (i, time.time()))
        paths = [f"/_sse/connect?topics=0&token={c.token}&lastEventId={c.last_id}" for c in resumable]
        resume, resume_s, resume_lg = await storm(successor.port, paths, args.concurrency, args.timeout)
        row = _row(impl_name, "resume", resume, resume_s, resume_lg, args)
        got = [c.events for c in resume.clients if c.status == 200]
        row["replayed_min"] = min(got) if got else None
        rows.append(row)
        resume.close()
        publisher.close()
    finally:
        server.stop()
        if successor is not None:
            successor.stop()
    return rows


def _row(
    impl: str, kind: str, s: Storm, seconds: float, loadgen: float, args: argparse.Namespace
) -> dict[str, t.Any]:
    statuses = s.statuses()
    row = {
        "impl": impl,
        "storm": kind,
        "clients": len(s.clients),
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "refused": s.refused,
        "timed_out": s.timed_out,
        "errors": dict(sorted(s.errors.items(), key=lambda kv: -kv[1])[:3]),
        "all_streaming_s": round(seconds, 3),
        "loadgen_cpu": round(loadgen, 2),
    }
    print(f"  [{impl}] {kind}: {json.dumps(row)}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storm", description=__doc__)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=500, help="connection attempts in flight")
    parser.add_argument("--impls", default="ours,ours-redis")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--missed", type=int, default=5, help="events published between the storms")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--heartbeat", type=float, default=15.0)
    parser.add_argument("--json", default="", help="write every row and the medians to this file")
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOADGEN_CPU})
    rows: list[dict[str, t.Any]] = []
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        for impl in args.impls.split(","):
            rows += [{"run": run, **r} for r in asyncio.run(one_server(impl, args))]
    summary = []
    for impl in args.impls.split(","):
        for kind in ("fresh", "resume"):
            rs = [r for r in rows if r["impl"] == impl and r["storm"] == kind]
            if not rs:
                continue
            summary.append(
                {
                    "impl": impl,
                    "storm": kind,
                    "runs": len(rs),
                    "ok_median": statistics.median(r["ok"] for r in rs),
                    "ok_min": min(r["ok"] for r in rs),
                    "clients": rs[0]["clients"],
                    "all_streaming_s_median": statistics.median(r["all_streaming_s"] for r in rs),
                }
            )
    print("\n| server | storm | clients | answered 200 (median, min) | all streaming s (median) |")
    print("|---|---|---:|---:|---:|")
    for s in summary:
        print(
            f"| {IMPLS[s['impl']].label} | {s['storm']} | {s['clients']:,} "
            f"| {s['ok_median']:,.0f} ({s['ok_min']:,}) | {s['all_streaming_s_median']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
