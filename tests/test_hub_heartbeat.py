"""Lone heartbeats written from the hub (issue 13): a stream that writes its
own chunks gets its heartbeat from the delivery round, without its greenlet
running; a heartbeat the socket does not take whole is finished by the
greenlet; and over a real ``gunicorn -k gevent`` the heartbeats keep arriving
as intact chunks.
"""

from __future__ import annotations

import socket

import pytest

from flask_sse_broker import SSEBroker
from flask_sse_broker._socket import CHECK_BEFORE_HEARTBEAT
from flask_sse_broker._wire import HEARTBEAT, HEARTBEAT_FRAME, chunk_of

from .support import Server, free_port, wait_for
from .test_delivery import broker, parse_chunks, read_chunked_stream, run_stream, writing_stream

__all__ = ["broker"]

needs_poll = pytest.mark.skipif(CHECK_BEFORE_HEARTBEAT, reason="no poll: the greenlet checks its peer")


@needs_poll
def test_a_lone_heartbeat_leaves_from_the_hub_in_one_send(broker: SSEBroker) -> None:
    conn, sock = writing_stream(broker, "t")
    broker._hub.beat()
    assert conn._queue == [HEARTBEAT_FRAME]
    assert conn.send_parked() is True  # written here: the greenlet stays parked
    assert sock.sends == [chunk_of(HEARTBEAT_FRAME)]
    assert parse_chunks(sock.sends[0]) == [HEARTBEAT]
    assert conn._queue == [] and conn._waiting
    broker._hub.beat()  # re-armed: the next pass queues the next one
    assert conn._queue == [HEARTBEAT_FRAME]
    conn.close()


@needs_poll
def test_a_heartbeat_the_socket_took_in_part_is_finished_by_the_greenlet(broker: SSEBroker) -> None:
    conn, sock = writing_stream(broker, "t")
    broker._hub.beat()
    sock.limit = 7
    assert conn.send_parked() is False  # the greenlet must run
    thread = run_stream(conn)
    wait_for(lambda: len(b"".join(sock.sends)) == len(chunk_of(HEARTBEAT_FRAME)), what="the rest written")
    broker.broadcast_to_topic("t", "after")
    wait_for(lambda: b"after" in b"".join(sock.sends), what="the event")
    body = b"".join(sock.sends)
    chunks = parse_chunks(body)
    assert chunks[0] == HEARTBEAT and b"after" in chunks[1]
    conn.close()
    thread.join(5)


@pytest.mark.timeout(60)
def test_heartbeats_keep_reaching_a_stream_writing_its_own_chunks_over_gunicorn_gevent() -> None:
    """Several heartbeat passes, each a well-formed chunk on the wire, and an
    event after them still intact."""
    server = Server("gevent", config={"SSE_HEARTBEAT_INTERVAL": 0.2}, port=free_port())
    server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.settimeout(10)
        sock.sendall(b"GET /_sse/connect?topics=hb HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_chunked_stream(sock, b"event: connected")
        wait_for(lambda: server.state()["connections"] == 1, what="the stream")
        body = head.partition(b"\r\n\r\n")[2]
        while body.count(b"event: heartbeat") < 4:
            block = sock.recv(65536)
            assert block, "the stream ended"
            body += block
        server.publish("hb", "last")
        body += read_chunked_stream(sock, b'"last"')
        while not body.endswith(b"\n\n\r\n"):
            body += sock.recv(65536)
        chunks = parse_chunks(body)
        assert chunks.count(HEARTBEAT) >= 4
        assert b'"last"' in chunks[-1]
        sock.close()
    finally:
        server.stop()
