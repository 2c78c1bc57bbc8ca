"""The load generator: thousands of SSE streams on one asyncio loop.

Each stream is a raw :class:`asyncio.Protocol`, no HTTP library: the response
head, the chunked transfer coding and the SSE frames are parsed incrementally
as bytes arrive, and only the ``data:`` lines the benchmark published are
decoded. Every published payload is ``<seq>:<topic>:<unix time at publish>``,
so each delivery's publish->receive latency is known (client and server share
one clock: everything runs on 127.0.0.1).

A payload containing ``prime`` marks a stream as subscribed: the benchmark
primes every topic until every stream has seen one, so no server is measured
before its subscriptions are in place, whatever it sends (or not) on connect.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time
import typing as t
from array import array

#: A benchmark payload on a ``data:`` line, optionally JSON-quoted.
_PAYLOAD = re.compile(rb'data: ?"?(\d+):(\d+):(\d+\.\d+)')

HEADERS, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, IDENTITY, DONE = range(6)


class Group:
    """Every stream of one scenario and what they received."""

    def __init__(self, n_messages: int, keep_latency: bool = True) -> None:
        self.n_messages = n_messages
        self.streams: list[SSEStream] = []
        self.latencies = array("d")
        self.keep_latency = keep_latency
        self.deliveries = 0
        self.wrong_topic = 0
        self.out_of_order = 0
        self.primed = 0
        self.ok = 0
        self.failed = 0
        self.closed = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.bytes = 0

    def reset(self) -> None:
        """Forget what was received, keep the streams (for the next phase)."""
        self.latencies = array("d")
        self.deliveries = self.wrong_topic = self.out_of_order = self.bytes = 0
        self.first_at = self.last_at = 0.0
        for stream in self.streams:
            stream.counts = bytearray(self.n_messages)
            stream.last_seq = -1

    # What benchmarks.delivery asks of a load generator (cload.Group too).
    kind = "python"

    async def begin(self) -> None:
        self.reset()

    async def refresh(self) -> None:
        """Counters are live here; the C load generator has to be asked."""

    async def collect(self) -> None:
        """Latencies are live here; the C load generator has to be asked."""

    def received_total(self) -> tuple[int, int]:
        """(distinct (stream, seq) received, deliveries counted) of primed streams."""
        received = sum(len(s.counts) - s.counts.count(0) for s in self.streams if s.primed)
        return received, sum(sum(s.counts) for s in self.streams if s.primed)

    def figures(self) -> dict[str, t.Any]:
        """Figures of the load generator's own (cload.Group has some)."""
        return {}

    def meter(self) -> CPUMeter:
        return CPUMeter()

    async def aclose(self) -> None:
        close_streams(self)


class SSEStream(asyncio.Protocol):
    def __init__(self, group: Group, topic: int, request: bytes) -> None:
        self.group = group
        self.topic = topic
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.state = HEADERS
        self.buf = b""
        self.sse = b""
        self.remaining = 0
        self.status = 0
        self.primed = False
        self.counts = bytearray(group.n_messages)
        self.last_seq = -1
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.group.closed += 1
        self.state = DONE
        if not self.ready.done():
            self.ready.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.group.bytes += len(data)
        buf = self.buf + data if self.buf else data
        state = self.state
        if state == HEADERS:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            self.status = int(head[9:12])
            if self.status != 200:
                self.group.failed += 1
                self.ready.set_result(False)
                self.state = DONE
                self.transport.close()  # type: ignore[union-attr]
                return
            self.group.ok += 1
            self.ready.set_result(True)
            state = CHUNK_SIZE if b"transfer-encoding: chunked" in head else IDENTITY
            buf = buf[end + 4 :]
        if state == IDENTITY:
            body = buf
            buf = b""
        else:
            parts = []
            pos = 0
            size = len(buf)
            remaining = self.remaining
            while pos < size:
                if state == CHUNK_DATA:
                    take = min(remaining, size - pos)
                    parts.append(buf[pos : pos + take])
                    pos += take
                    remaining -= take
                    if not remaining:
                        state = CHUNK_CRLF
                elif state == CHUNK_CRLF:
                    if size - pos < 2:
                        break
                    pos += 2
                    state = CHUNK_SIZE
                else:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    remaining = int(buf[pos:eol].split(b";", 1)[0], 16)
                    pos = eol + 2
                    if not remaining:
                        state = DONE
                        break
                    state = CHUNK_DATA
            self.remaining = remaining
            buf = buf[pos:]
            body = b"".join(parts)
        self.buf = buf
        self.state = state
        text = self.sse + body if self.sse else body
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n")
        end = text.rfind(b"\n\n")
        if end < 0:
            self.sse = text
            return
        self.sse = text[end + 2 :]
        self._frames(text[:end], now)

    def _frames(self, block: bytes, now: float) -> None:
        group = self.group
        if not self.primed:
            if b"prime" not in block:
                return
            self.primed = True
            group.primed += 1
        found = _PAYLOAD.findall(block)
        if not found:
            return
        counts = self.counts
        topic = self.topic
        n = group.n_messages
        last = self.last_seq
        lat = []
        for seq_b, topic_b, ts_b in found:
            seq = int(seq_b)
            if int(topic_b) != topic or seq >= n:
                group.wrong_topic += 1
                continue
            if counts[seq] < 255:
                counts[seq] += 1
            if seq <= last:
                group.out_of_order += 1
            last = seq
            lat.append(now - float(ts_b))
        self.last_seq = last
        group.deliveries += len(lat)
        if group.keep_latency:
            group.latencies.extend(lat)
        if not group.first_at:
            group.first_at = now
        group.last_at = now


async def open_streams(
    group: Group,
    port: int,
    path_for: t.Callable[[int], str],
    topics: t.Sequence[int],
    concurrency: int = 500,
    timeout: float = 60.0,
) -> None:
    """Open one stream per entry of ``topics``, ``concurrency`` at a time."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    deadline = loop.time() + timeout

    async def one(topic: int) -> None:
        request = (
            f"GET {path_for(topic)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        async with sem:
            stream = SSEStream(group, topic, request)
            group.streams.append(stream)
            left = deadline - loop.time()
            if left <= 0:
                group.failed += 1
                return
            try:
                await asyncio.wait_for(loop.create_connection(lambda: stream, "127.0.0.1", port), left)
                # Headers may come only with the first event (flask-sse):
                # priming settles that, so do not wait for them here.
                await asyncio.wait_for(asyncio.shield(stream.ready), min(0.2, max(0.01, left)))
            except (TimeoutError, asyncio.TimeoutError):
                pass
            except OSError:
                group.failed += 1

    await asyncio.gather(*(one(tp) for tp in topics))


def close_streams(group: Group) -> None:
    for stream in group.streams:
        if stream.transport is not None:
            stream.transport.abort()


class Publisher:
    """One keep-alive HTTP/1.1 connection that POSTs payloads, one at a time."""

    def __init__(self, port: int, path_for: t.Callable[[int], str]) -> None:
        self.port = port
        self.path_for = path_for
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.statuses: dict[int, int] = {}

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, topic: int, body: bytes, timeout: float = 30.0) -> int:
        for attempt in range(2):
            try:
                if self.writer is None:
                    await self._connect()
                return await asyncio.wait_for(self._post(topic, body), timeout)
            except (OSError, asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _post(self, topic: int, body: bytes) -> int:
        assert self.writer is not None and self.reader is not None
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (self.path_for(topic).encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        match = re.search(rb"content-length: *(\d+)", lower)
        if match:
            await self.reader.readexactly(int(match.group(1)))
        elif b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if not size:
                    break
        if b"connection: close" in lower:
            self.close()
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    async def publish(self, topic: int, seq: int) -> int:
        return await self.post(topic, b"%d:%d:%.6f" % (seq, topic, time.time()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = self.reader = None


async def prime(group: Group, publisher: Publisher, topics: t.Iterable[int], timeout: float = 60.0) -> bool:
    """Publish a priming event on every topic until every open stream saw one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    topics = sorted(set(topics))
    by_topic: dict[int, list[SSEStream]] = {}
    for s in group.streams:
        by_topic.setdefault(s.topic, []).append(s)
    live = sum(1 for s in group.streams if s.state != DONE and s.transport is not None)
    while loop.time() < deadline:
        for tp in topics:
            if not all(s.primed for s in by_topic.get(tp, ()) if s.state != DONE):
                await publisher.post(tp, b"prime")
        wait_until = loop.time() + 2.0
        while loop.time() < min(wait_until, deadline):
            live = sum(1 for s in group.streams if s.state != DONE and s.transport is not None)
            if group.primed >= live:
                return True
            await asyncio.sleep(0.05)
    return group.primed >= live


class CPUMeter:
    """This process's own CPU time, to tell when the load generator is the
    bottleneck rather than the server."""

    def __init__(self) -> None:
        self.start_cpu = self._cpu()
        self.start_wall = time.monotonic()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def utilisation(self) -> float:
        wall = time.monotonic() - self.start_wall
        return (self._cpu() - self.start_cpu) / wall if wall > 0 else 0.0
