"""benchmarks/sseload.c (the C load generator) counts what loadgen.py counts.

A scripted server sends the same SSE bytes to both load generators (chunked
with a chunk extension and CRLF lines, and as an identity body), in small
pieces; both must report the same deliveries, duplicates, out-of-order and
wrong-topic payloads, and latencies of the right size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import time
import typing as t

import pytest

# The benchmarks live in the checkout only (CI runs a copy of tests/ against
# the installed package): skipped there.
cload = pytest.importorskip("benchmarks.cload", reason="benchmarks/ is not importable here")
loadgen = pytest.importorskip("benchmarks.loadgen", reason="benchmarks/ is not importable here")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

N_MESSAGES = 10


def _run(main: t.Coroutine[t.Any, t.Any, t.Any]) -> t.Any:
    """``asyncio.run`` in a thread of its own: the session's Playwright keeps
    an event loop running in the main one (see tests/test_http.py)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main).result(timeout=120)


def _events(now: float) -> list[bytes]:
    def p(seq: int, topic: int = 0) -> bytes:
        return b"%d:%d:%.6f" % (seq, topic, now)

    return [
        b": hello\n\n",
        b"event: sse\ndata: prime\n\n",
        b"data: " + p(0) + b"\n\n",
        b"event: x\ndata: " + p(1) + b"\nid: 5\n\n",
        b"data: " + p(2) + b"\n\ndata: " + p(3) + b"\n\n",
        b"data: " + p(3) + b"\n\n",  # duplicate
        b"data: " + p(5) + b"\n\n",
        b"data: " + p(2) + b"\n\n",  # out of order (and a duplicate)
        b"data: " + p(4, topic=7) + b"\n\n",  # wrong topic
        b"data: " + p(12) + b"\n\n",  # beyond n_messages: wrong topic too
        b'data: "' + p(6) + b'"\n\n',  # JSON-quoted
        b"data: " + p(7) + b"\r\n\r\n",
        b": heartbeat\n\n",
        b"data:" + p(9) + b"\n\n",
    ]


async def _serve(chunked: bool) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Connection: close\r\n\r\n"
        out = bytearray(head)
        for event in _events(time.time()):
            out += b"%x;ext=1\r\n%s\r\n" % (len(event), event) if chunked else event
        for i in range(0, len(out), 7):  # small pieces: every state split
            writer.write(bytes(out[i : i + 7]))
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client goes (aborts: a reset)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _figures(lg: t.Any, chunked: bool, streams: int = 3) -> dict[str, t.Any]:
    server, port = await _serve(chunked)
    group = lg.Group(N_MESSAGES)
    try:
        await lg.open_streams(group, port, lambda topic: f"/sse?topic={topic}", [0] * streams)
        deadline = time.monotonic() + 10
        while group.deliveries < 10 * streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            await group.refresh()
        await group.collect()
        return {
            "ok": group.ok,
            "primed": group.primed,
            "deliveries": group.deliveries,
            "received_total": group.received_total(),
            "out_of_order": group.out_of_order,
            "wrong_topic": group.wrong_topic,
            "latencies": len(group.latencies),
            "latency_ok": all(0 <= x < 5 for x in group.latencies),
        }
    finally:
        await group.aclose()
        server.close()


@pytest.mark.parametrize("chunked", [True, False])
def test_c_counts_like_python(chunked: bool) -> None:
    async def all_three() -> list[dict[str, t.Any]]:
        return [await _figures(lg, chunked) for lg in (loadgen, cload, cload.SPIN)]

    python, c, spin = _run(all_three())
    expected = {
        "ok": 3,
        "primed": 3,
        "deliveries": 30,
        "received_total": (3 * 8, 30),
        "out_of_order": 6,
        "wrong_topic": 6,
        "latencies": 30,
        "latency_ok": True,
    }
    assert python == expected
    assert c == expected
    assert spin == expected


def test_refused_stream_is_failed() -> None:
    async def run() -> t.Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        group = cload.Group(1)
        try:
            await cload.open_streams(group, server.sockets[0].getsockname()[1], lambda tp: "/x", [0, 0])
            await group.refresh()
            return group.ok, group.failed, group.live
        finally:
            await group.aclose()
            server.close()

    assert _run(run()) == (0, 2, 0)
