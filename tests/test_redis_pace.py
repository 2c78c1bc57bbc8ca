"""Redis mode keeping pace (issue 10): the listener reads many replies per
wake-up, the publish script runs on connections of its own, and a wake-up
round lets a publisher waiting for Redis finish within the round.

Order, loss and duplicates are checked exactly; nothing here times anything.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import typing as t

import pytest
import redis

from flask_sse_broker import BackendError, SSEBroker, SSEConfig
from flask_sse_broker._wire import Audience
from flask_sse_broker.backends._redis_resp import ReplyReader
from flask_sse_broker.backends.redis import RedisBackend
from flask_sse_broker.event import SSEEvent

from .redis_support import (
    SHARED_URL,
    Cluster,
    ConnectionReader,
    RedisServer,
    connections_named,
    requires_redis,
    requires_redis_server,
)
from .support import ROOT, wait_for

# -- the reply reader, over a socket pair ---------------------------------------


def _message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(data), data)


@pytest.fixture
def pair() -> t.Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(2)
    yield a, b
    a.close()
    b.close()


def test_every_reply_of_one_read_comes_out_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, redis_side = pair
    reader = ReplyReader(ours)
    wire = b"".join(_message(b"p:t:x", b"E %d" % i) for i in range(200))
    wire += b"*3\r\n$9\r\nsubscribe\r\n$5\r\np:t:y\r\n:2\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    redis_side.sendall(wire)
    replies: list[t.Any] = []
    while len(replies) < 202:
        reader.fill()
        replies += reader.replies()
    assert replies[:200] == [[b"message", b"p:t:x", b"E %d" % i] for i in range(200)]
    assert replies[200:] == [[b"subscribe", b"p:t:y", 2], [b"pong", b""]]
    assert not reader.buffered()


def test_a_reply_split_across_reads_is_kept_until_complete(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, redis_side = pair
    reader = ReplyReader(ours)
    body = b"x" * 100_000  # more than one recv takes
    wire = _message(b"c", b"first") + _message(b"c", body) + _message(b"c", b"last")
    got: list[t.Any] = []
    for i in range(0, len(wire), 7_000):
        redis_side.sendall(wire[i : i + 7_000])
        reader.fill()
        got += reader.replies()
    while len(got) < 3:
        reader.fill()
        got += reader.replies()
    assert [r[2] for r in got] == [b"first", body, b"last"]


def test_an_error_reply_raises_after_the_replies_before_it(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, redis_side = pair
    reader = ReplyReader(ours)
    redis_side.sendall(_message(b"c", b"ok") + b"-ERR only SUBSCRIBE allowed\r\n")
    reader.fill()
    handled = []
    with pytest.raises(redis.ResponseError, match="only SUBSCRIBE"):
        for reply in reader.replies():
            handled.append(reply[2])
    assert handled == [b"ok"]
    assert not reader.buffered()
    redis_side.sendall(b"%not resp\r\n")
    reader.fill()
    with pytest.raises(redis.InvalidResponse):
        list(reader.replies())


def test_a_closed_connection_is_a_connection_error(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, redis_side = pair
    redis_side.close()
    with pytest.raises(redis.ConnectionError):
        ReplyReader(ours).fill()


# -- the listener -----------------------------------------------------------------


def _batch(n: int, start: int = 0) -> list[tuple[Audience, str | None, SSEEvent]]:
    return [(Audience.TOPIC, "t", SSEEvent(i)) for i in range(start, start + n)]


@requires_redis
def test_a_burst_reaches_the_listener_in_few_reads_in_order_and_once(cluster: Cluster) -> None:
    server, publisher = cluster.broker(event_buffer_size=5000), cluster.broker()
    reader = ConnectionReader(server.open_stream("alice", topics=["t"]))
    reader.connected()
    channels = server.backend._listener.channels  # type: ignore[attr-defined]
    reads, received = channels.reads, channels.received
    # One MULTI/EXEC: Redis writes the 500 messages back to back.
    publisher._publish_events(_batch(500))
    assert [e.json() for e in reader.take(500)] == list(range(500))
    assert channels.received - received == 500
    assert channels.reads - reads < 100, "one socket read per message: the burst was not read in bulk"


@requires_redis
def test_nothing_is_lost_or_doubled_when_the_listener_reconnects_mid_burst(cluster: Cluster) -> None:
    server, publisher = cluster.broker(event_buffer_size=5000), cluster.broker()
    reader = ConnectionReader(server.open_stream("alice", topics=["t"]))
    reader.connected()
    node = server.backend.node  # type: ignore[attr-defined]
    admin = redis.Redis.from_url(SHARED_URL)
    try:
        for round_ in range(3):
            listeners = [
                entry
                for entry in connections_named(SHARED_URL, f"{cluster.prefix}:{node}")
                if int(entry.get("sub", 0))
            ]
            assert len(listeners) == 1, listeners
            # A burst in flight while the pub/sub connection is killed: part
            # of it may sit half-read in the buffer of the connection that dies.
            publisher._publish_events(_batch(300, round_ * 600))
            admin.client_kill_filter(_id=listeners[0]["id"])
            publisher._publish_events(_batch(300, round_ * 600 + 300))
            assert [e.json() for e in reader.take(600)] == list(range(round_ * 600, round_ * 600 + 600))
            wait_for(lambda: server.backend._listener.connected, 10, 0.05, "the listener back")  # type: ignore[attr-defined]
    finally:
        admin.close()
    publisher.broadcast("end")
    assert reader.next().json() == "end"


# -- the publish path ---------------------------------------------------------------


@requires_redis
def test_more_publishers_than_publish_connections_all_get_through_in_order(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RedisBackend, "publish_connections", 1)
    server, publisher = cluster.broker(event_buffer_size=5000), cluster.broker()
    readers = {n: ConnectionReader(server.open_stream(f"c{n}", topics=[f"t{n}"])) for n in range(6)}
    for r in readers.values():
        r.connected()

    def publish(n: int) -> None:
        for i in range(60):
            publisher.broadcast_to_topic(f"t{n}", i)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for r in readers.values():
        assert [e.json() for e in r.take(60)] == list(range(60))
    assert publisher.backend._publish_call._made == 1  # type: ignore[attr-defined]


@requires_redis_server
def test_publishing_survives_a_script_cache_flush_and_a_hung_redis(private_redis: RedisServer) -> None:
    broker = SSEBroker(SSEConfig(redis_url=private_redis.url, redis_prefix="pace", heartbeat_interval=0.5))
    try:
        reader = ConnectionReader(broker.open_stream("alice", topics=["t"]))
        reader.connected()
        broker.broadcast_to_topic("t", 1)
        admin = redis.Redis.from_url(private_redis.url)
        admin.script_flush()  # as after a Redis restart: NOSCRIPT, then loaded again
        admin.close()
        broker.broadcast_to_topic("t", 2)
        private_redis.pause()
        try:
            with pytest.raises(BackendError):
                broker.broadcast_to_topic("t", "while hung")
        finally:
            private_redis.resume()
        # The timed-out call's late reply is never read as a later call's.
        for i in range(3, 8):
            broker.broadcast_to_topic("t", i)
        got = []
        while 7 not in got:
            got.append(reader.next().json())
        # The publish that timed out may have run once Redis resumed: then
        # it is delivered once, in its place.
        assert got.count("while hung") <= 1
        assert [g for g in got if g != "while hung"] == [1, 2, 3, 4, 5, 6, 7]
    finally:
        broker.shutdown(0.5)


# -- the wake-up round and a publisher waiting for its reply ----------------------

_ROUND = r"""
from gevent import monkey; monkey.patch_all()
import socket, sys
import gevent
from flask_sse_broker import _wake

order = []
wakes = [_wake.new_wake() for _ in range(320)]
assert isinstance(wakes[0], _wake.GreenletWake)

def stream(i, wake):
    wake.wait()
    order.append(i)
    if i == 3:
        b.send(b"!")  # the reply arrives while the round runs

for i, w in enumerate(wakes):
    gevent.spawn(stream, i, w)
gevent.sleep(0)  # every stream parked
a, b = socket.socketpair()

def publisher():
    batch = _wake.awaiting_reply() if sys.argv[1] == "awaiting" else None
    try:
        a.recv(1)  # the reply it waits for
        order.append("reply")
    finally:
        _wake.replied(batch)

gevent.spawn(publisher)
gevent.sleep(0)  # the publisher waits on its socket
for w in wakes:
    w.set()
gevent.sleep(0.05)
print(order.index("reply"))
"""


def test_a_round_reads_a_reply_a_publisher_awaits_within_32_streams() -> None:
    pytest.importorskip("gevent")
    out = subprocess.run(
        [sys.executable, "-c", _ROUND, "awaiting"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # It polls I/O every 32 streams (the reply is read at the second poll:
    # libev runs the round's resume timer first). Without the publisher's
    # mark the round runs all 320 streams (well within its 5 ms slice)
    # before polling I/O: the reply would come last.
    assert int(out.stdout.strip()) <= 100, out.stdout
