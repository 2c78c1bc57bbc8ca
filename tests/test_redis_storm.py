"""A reconnect storm over real Redis (SPEC 9.6): served without 503 while
Redis is healthy, even when far more streams open at once than the command
pool has connections.

Every client here is a raw asyncio connection (like the benchmark's), so two
thousand of them open at once from one test process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import typing as t

import pytest

from .redis_support import SHARED_URL, delete_prefix, new_prefix, requires_redis
from .support import Server

pytestmark = requires_redis

STORM_APP = "tests.apps.storm_app:create_app()"
T = t.TypeVar("T")
_CONNECTED = re.compile(rb"event: connected\r?\ndata: (\{.*?\})\r?\n")


@pytest.fixture
def prefix() -> t.Iterator[str]:
    value = new_prefix()
    yield value
    delete_prefix(SHARED_URL, value)


class _Client(asyncio.Protocol):
    """One stream: its status, its ``connected`` data, the ids it received."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.status = 0
        self.hello: dict[str, t.Any] | None = None
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.status and b"\r\n\r\n" in self.buf:
            self.status = int(self.buf[9:12])
        if self.status and self.status != 200:
            self._answered()
        elif self.hello is None:
            match = _CONNECTED.search(self.buf)
            if match:
                self.hello = json.loads(match.group(1))
                self._answered()

    def ids(self) -> list[str]:
        """The ids of the events the test published (their data is a number)."""
        return re.findall(r"data: [0-9]+\nid: ([0-9]+-[0-9]+)\n", self.buf.decode(errors="replace"))

    def _answered(self) -> None:
        if not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._answered()


async def _storm(port: int, paths: list[str], in_flight: int = 500, timeout: float = 120.0) -> list[_Client]:
    """Open one stream per path at once, ``in_flight`` attempts at a time (more
    would overflow the listen backlog: the kernel, not the app, would refuse
    them); return once each is answered."""
    loop = asyncio.get_running_loop()
    clients = []
    sem = asyncio.Semaphore(in_flight)

    async def one(path: str) -> None:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
        client = _Client(request)
        clients.append(client)
        async with sem:
            try:
                await loop.create_connection(lambda: client, "127.0.0.1", port)
            except OSError:
                return
            await client.answered

    await asyncio.wait_for(asyncio.gather(*(one(p) for p in paths)), timeout)
    return clients


def _run(coro: t.Coroutine[t.Any, t.Any, T]) -> T:
    """Run a coroutine on a loop of its own, in a thread: the browser tests
    leave Playwright's loop running in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=300)


def _statuses(clients: list[_Client]) -> dict[t.Any, int]:
    """Status -> how many; a refusal counted under its status and message."""
    out: dict[t.Any, int] = {}
    for c in clients:
        key: t.Any = c.status
        if c.status != 200:
            match = re.search(rb'"error": ?"([^"]*)"', c.buf)
            key = (c.status, re.sub(r"'[^']*'", "'…'", match.group(1).decode()) if match else "")
        out[key] = out.get(key, 0) + 1
    return out


def _close(clients: list[_Client]) -> None:
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


def _server(prefix: str, pool: int) -> Server:
    config = {
        "SSE_REDIS_URL": SHARED_URL,
        "SSE_REDIS_PREFIX": prefix,
        "SSE_HEARTBEAT_INTERVAL": 5,
        "SSE_MAX_CONNECTIONS": 10_000,
    }
    return Server(
        "gevent",
        app=STORM_APP,
        config=config,
        env={"SSE_TEST_REDIS_POOL": str(pool)},
        gunicorn_args=["--backlog", "4096"],
    )


def test_a_storm_of_new_clients_on_a_small_pool_is_all_answered_200(prefix: str) -> None:
    with _server(prefix, pool=1) as srv:

        async def run() -> dict[int, int]:
            clients = await _storm(srv.port, ["/_sse/connect?topics=t"] * 2000)
            try:
                return _statuses(clients)
            finally:
                _close(clients)

        assert _run(run()) == {200: 2000}


def test_a_storm_of_resuming_clients_is_all_answered_200_and_misses_nothing(prefix: str) -> None:
    with _server(prefix, pool=1) as srv:

        async def run() -> tuple[dict[int, int], list[int]]:
            first = await _storm(srv.port, ["/_sse/connect?topics=t"] * 1000)
            assert _statuses(first) == {200: 1000}
            _close(first)
            for i in range(3):  # published while every client is away
                srv.publish("t", i)
            paths = [
                f"/_sse/connect?topics=t&token={c.hello['token']}&lastEventId={c.hello['lastEventId']}"
                for c in first
                if c.hello is not None
            ]
            second = await _storm(srv.port, paths)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while loop.time() < deadline and any(len(c.ids()) < 3 for c in second if c.status == 200):
                    await asyncio.sleep(0.05)
                return _statuses(second), [len(c.ids()) for c in second]
            finally:
                _close(second)

        statuses, replayed = _run(run())
        assert statuses == {200: 1000}
        assert set(replayed) == {3}
