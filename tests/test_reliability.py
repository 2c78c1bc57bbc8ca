"""Faults found under hostile load (issue 14, items 10-13), over real sockets."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
import time
import typing as t
import urllib.parse

import pytest
import redis

from flask_sse_broker import SSEBroker, SSEConfig
from flask_sse_broker._decoder import iter_events
from flask_sse_broker.exceptions import BackendError

from .redis_support import (
    SHARED_URL,
    ConnectionReader,
    RedisServer,
    delete_prefix,
    new_prefix,
    requires_redis,
    requires_redis_server,
)
from .support import Server, http_request, wait_for


class Drain:
    """A client that reads its stream as fast as it comes and throws it away."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//")[1].split("/")[0].split(":")
        path = "/" + url.split("//")[1].split("/", 1)[1]
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.received = 0
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 20):
                self.received += len(chunk)
        except OSError:
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.ended.wait(5)
        self.sock.close()


def stalled_client(url: str) -> socket.socket:
    """A client that sends its request and never reads: a tiny receive buffer,
    so the server's writes to it soon block in the kernel."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def stats(srv: Server) -> dict[str, t.Any]:
    status, body = http_request("GET", srv.url("/_sse/stats"))
    assert status == 200, body
    return t.cast(dict[str, t.Any], json.loads(body))


# -- item 10: shutdown ends streams whose write is blocked --------------------------------


@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_sigterm_ends_streams_dropped_for_overflow_while_their_write_blocks(
    make_server: t.Callable[..., Server], kind: str
) -> None:
    config = {"SSE_EVENT_BUFFER_SIZE": 20, "SSE_HEARTBEAT_INTERVAL": 1}
    srv = make_server(kind, config=config, gunicorn_args=["--graceful-timeout", "8"])
    url = srv.url("/_sse/connect?topics=load")
    readers = [Drain(url) for _ in range(3)]
    stalled = [stalled_client(url) for _ in range(2)]
    try:
        wait_for(lambda: stats(srv)["connections"] == 5, 15, what="five streams open")

        def overflowed() -> bool:
            srv.publish("load", count=20, pad=32768)
            return bool(stats(srv)["overflow_disconnects"] >= 2)

        wait_for(overflowed, 60, interval=0.05, what="both stalled clients dropped for overflow")
        assert srv.proc is not None
        start = time.monotonic()
        srv.signal(signal.SIGTERM)
        returncode = srv.proc.wait(30)
        elapsed = time.monotonic() - start
        assert returncode == 0
        # Well inside the 8 s graceful timeout: the broker ended the blocked
        # writes, gunicorn did not have to wait them out (or kill the worker).
        assert elapsed < 5, f"the worker took {elapsed:.1f}s to exit"
        for reader in readers:
            assert reader.ended.wait(5)
    finally:
        for reader in readers:
            reader.close()
        for sock in stalled:
            sock.close()


# -- item 11: event ids validated to the backends' real range -----------------------------

#: Ids of the broker's shape but outside what any backend writes: parts over
#: 2**64 - 1 (Redis stream ids are two unsigned 64-bit integers), or written
#: with digits that are not ASCII (``\\d`` matches any Unicode digit).
OUT_OF_RANGE_IDS = [
    "18446744073709551616-0",
    "99999999999999999999-1",
    "1-99999999999999999999",
    "1-18446744073709551616",
    "\uff11-1",  # fullwidth digit one
    "\u0661-\u0661",  # Arabic-Indic digit one
    "1-\u0967",  # Devanagari digit one
]


@pytest.fixture(scope="module", params=["memory", "redis"])
def id_server(request: pytest.FixtureRequest) -> t.Iterator[Server]:
    config: dict[str, t.Any] = {"SSE_HEARTBEAT_INTERVAL": 0.5}
    prefix = new_prefix()
    if request.param == "redis":
        try:
            redis.Redis.from_url(SHARED_URL, socket_connect_timeout=1).ping()
        except redis.RedisError:
            pytest.skip("no Redis on 127.0.0.1:6379")
        config.update(SSE_REDIS_URL=SHARED_URL, SSE_REDIS_PREFIX=prefix)
    srv = Server("werkzeug", config=config).start()
    yield srv
    srv.stop()
    if request.param == "redis":
        delete_prefix(SHARED_URL, prefix)


def connect_status(srv: Server, target: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """The status of a connect request, and its body unless it is a stream."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        body = "" if response.status == 200 else response.read().decode()
        return response.status, body
    finally:
        conn.close()


@pytest.mark.parametrize("cursor", OUT_OF_RANGE_IDS)
def test_an_out_of_range_last_event_id_in_the_query_is_a_400(id_server: Server, cursor: str) -> None:
    query = urllib.parse.urlencode({"lastEventId": cursor})
    status, body = connect_status(id_server, f"/_sse/connect?{query}")
    assert status == 400, body
    assert "last event id" in json.loads(body)["error"]


@pytest.mark.parametrize("cursor", [c for c in OUT_OF_RANGE_IDS if c.isascii()])
def test_an_out_of_range_last_event_id_header_is_a_400(id_server: Server, cursor: str) -> None:
    status, body = connect_status(id_server, "/_sse/connect", {"Last-Event-ID": cursor})
    assert status == 400, body


def test_the_largest_id_is_well_formed_and_reset(id_server: Server) -> None:
    # 2**64 - 1 in both parts: a foreign id, not a malformed one.
    top = "18446744073709551615-18446744073709551615"
    conn = http.client.HTTPConnection("127.0.0.1", id_server.port, timeout=10)
    try:
        conn.request("GET", "/_sse/connect", headers={"Last-Event-ID": top})
        response = conn.getresponse()
        assert response.status == 200
        events = iter_events(iter(lambda: response.read1(65536), b""))
        assert [next(events).event for _ in range(2)] == ["connected", "reset"]
    finally:
        conn.close()


# -- item 12: a publish that timed out is safe to retry ------------------------------------


@pytest.fixture
def frozen_redis() -> t.Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@requires_redis_server
def test_a_publish_retried_with_its_key_after_a_timeout_is_stored_and_delivered_once(
    frozen_redis: RedisServer,
) -> None:
    prefix = new_prefix()
    broker = SSEBroker(SSEConfig(redis_url=frozen_redis.url, redis_prefix=prefix, heartbeat_interval=0))
    try:
        reader = ConnectionReader(broker.open_stream(topics=["orders"]))
        reader.connected()
        frozen_redis.pause()
        try:
            with pytest.raises(BackendError) as info:
                broker.broadcast_to_topic("orders", "paid")
        finally:
            # The frozen Redis still holds the command: it runs now.
            frozen_redis.resume()
        key = info.value.idempotency_key
        assert key
        # What the docs tell a caller to do after BackendError: retry with the key.
        broker.broadcast_to_topic("orders", "paid", idempotency_key=key)
        broker.broadcast_to_topic("orders", "marker")
        events = [reader.next(15), reader.next(15)]
        assert [e.json() for e in events] == ["paid", "marker"]
        stored = redis.Redis.from_url(frozen_redis.url).xlen(f"{prefix}:stream")
        assert stored == 2
    finally:
        broker.shutdown(timeout=0.5)


@requires_redis
def test_a_publish_repeated_with_the_same_key_returns_without_storing_again() -> None:
    prefix = new_prefix()
    broker = SSEBroker(SSEConfig(redis_url=SHARED_URL, redis_prefix=prefix, heartbeat_interval=0))
    try:
        reader = ConnectionReader(broker.open_stream(topics=["t"]))
        reader.connected()
        broker.broadcast_to_topic("t", 1, idempotency_key="k-1")
        broker.broadcast_to_topic("t", 1, idempotency_key="k-1")
        broker.broadcast_to_topic("t", 2, idempotency_key="k-2")
        assert [reader.next(10).json(), reader.next(10).json()] == [1, 2]
        assert redis.Redis.from_url(SHARED_URL).xlen(f"{prefix}:stream") == 2
    finally:
        broker.shutdown(timeout=0.5)
        delete_prefix(SHARED_URL, prefix)


# -- item 13: remembered sessions are bounded ---------------------------------------------


def remembered(broker: SSEBroker, client_id: str) -> frozenset[str]:
    conn = broker.open_stream(client_id)
    try:
        return conn.client.topics
    finally:
        conn.close()


def test_remembered_sessions_are_bounded_by_count_oldest_first() -> None:
    broker = SSEBroker(SSEConfig(max_sessions=3, session_ttl=60, heartbeat_interval=0))
    try:
        ids = []
        for i in range(5):
            conn = broker.open_stream(topics=[f"t{i}"])
            ids.append(conn.client.id)
            conn.close()
        stats = broker.stats()
        assert (stats["sessions"], stats["sessions_evicted"]) == (3, 2)
        assert remembered(broker, ids[0]) == frozenset()
        assert remembered(broker, ids[1]) == frozenset()
        assert remembered(broker, ids[2]) == {"t2"}
    finally:
        broker.shutdown(timeout=0)


def test_remembered_sessions_are_bounded_by_bytes() -> None:
    config = SSEConfig(max_session_bytes=1000, session_ttl=60, heartbeat_interval=0, max_topic_length=200)
    broker = SSEBroker(config)
    try:
        ids = []
        for i in range(4):
            conn = broker.open_stream(topics=[f"{i}-{j}-" + "x" * 140 for j in range(3)])  # ~450 bytes
            ids.append(conn.client.id)
            conn.close()
        stats = broker.stats()
        assert stats["sessions"] == 2 and stats["sessions_evicted"] == 2
        assert stats["session_bytes"] <= 1000
        assert remembered(broker, ids[0]) == frozenset()
        assert len(remembered(broker, ids[3])) == 3
    finally:
        broker.shutdown(timeout=0)


def test_a_session_larger_than_the_byte_limit_is_not_kept() -> None:
    config = SSEConfig(max_session_bytes=100, session_ttl=60, heartbeat_interval=0, max_topic_length=200)
    broker = SSEBroker(config)
    try:
        conn = broker.open_stream(topics=["y" * 150])
        conn.close()
        assert broker.stats()["sessions"] == 0
        assert broker.stats()["sessions_evicted"] == 1
    finally:
        broker.shutdown(timeout=0)


def test_a_resumed_session_frees_its_room() -> None:
    broker = SSEBroker(SSEConfig(max_sessions=1, session_ttl=60, heartbeat_interval=0))
    try:
        first = broker.open_stream(topics=["a"])
        first_id = first.client.id
        first.close()
        again = broker.open_stream(first_id)  # takes its session back
        other = broker.open_stream(topics=["b"])
        other.close()
        assert broker.stats()["sessions_evicted"] == 0
        again.close()
        assert broker.stats()["sessions_evicted"] == 1  # one room: the older one goes
    finally:
        broker.shutdown(timeout=0)
