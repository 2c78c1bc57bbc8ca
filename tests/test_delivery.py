"""Streams that write their own chunks (issue 13): several queued events in one
write, each event's chunk framed once for all its recipients, a write the
socket does not take whole finished before anything after it, and a delivery
round that hands the hub back to a publisher while it writes.

In-process tests drive :class:`SSEConnection` with a stand-in for gunicorn's
response object (``headers_sent``, ``sock``) over a recording socket; the
gevent round runs in a subprocess with gevent's monkey-patching; the
end-to-end test reads the raw chunked bytes of a real ``gunicorn -k gevent``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import typing as t

import pytest

from flask_sse_broker import SSEBroker, SSEConfig
from flask_sse_broker._connection import SSEConnection

from .support import GEVENT_SCRIPT, ROOT, Server, free_port, wait_for


class RecordingSocket:
    """A non-blocking socket that records every ``send``; ``limit`` bounds
    how much the next ``send`` takes (a full socket buffer)."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.limit: int | None = None
        self.lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self.lock:
            if self.limit is not None:
                data, self.limit = data[: self.limit], None
            self.sends.append(bytes(data))
            return len(data)


class ServerSocket:
    """The server's socket: ``sendall`` (the waiting write) and the
    non-blocking socket inside, as gevent's socket has it."""

    def __init__(self) -> None:
        self._sock = RecordingSocket()

    def sendall(self, data: bytes) -> None:
        self._sock.send(data)


class ChunkedResponse:
    """What a stream reads of gunicorn's ``Response``."""

    def __init__(self) -> None:
        self.sock = ServerSocket()
        self.headers_sent = False

    def send_headers(self) -> None:
        self.headers_sent = True


def parse_chunks(data: bytes) -> list[bytes]:
    """Split chunked transfer coding strictly (RFC 9112 7.1); every chunk whole."""
    chunks = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        assert sep, f"no chunk size line in {data[:40]!r}"
        size = int(size_line, 16)
        assert rest[size : size + 2] == b"\r\n", f"chunk of {size} bytes not closed by CRLF"
        chunks.append(rest[:size])
        data = rest[size + 2 :]
    return chunks


def data_of(frames: t.Iterable[bytes]) -> list[str]:
    out = []
    for frame in frames:
        lines = frame.decode().split("\n")
        out += [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    return out


@pytest.fixture()
def broker() -> t.Iterator[SSEBroker]:
    b = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False))
    yield b
    b.shutdown(timeout=1)


def writing_stream(broker: SSEBroker, topic: str) -> tuple[SSEConnection, RecordingSocket]:
    """A stream writing its own chunks, its head already taken by the server."""
    conn = broker.open_stream(topics=[topic])
    out = ChunkedResponse()
    conn._write_to(out)
    # What the first ``next`` does before it waits: the server sends the
    # response head, the stream its first frames, as a chunk of its own.
    conn._send_head(out)
    assert out.headers_sent
    assert b"connected" in parse_chunks(out.sock._sock.sends.pop())[0]
    return conn, out.sock._sock


def run_stream(conn: SSEConnection) -> threading.Thread:
    """Iterate the stream as a server does, until it ends."""
    thread = threading.Thread(target=lambda: [None for _ in conn], daemon=True)
    thread.start()
    return thread


def test_events_queued_together_leave_in_one_write_as_intact_chunks_in_order(broker: SSEBroker) -> None:
    conn, sock = writing_stream(broker, "t")
    for i in range(3):  # queued before the stream looks
        broker.broadcast_to_topic("t", f"event {i}")
    thread = run_stream(conn)
    wait_for(lambda: sock.sends, what="a write")
    assert len(sock.sends) == 1
    assert data_of(parse_chunks(sock.sends[0])) == ['"event 0"', '"event 1"', '"event 2"']
    conn.close()
    thread.join(5)
    assert not thread.is_alive()


def test_an_event_is_chunk_framed_once_for_all_its_recipients(broker: SSEBroker) -> None:
    streams = [writing_stream(broker, "t") for _ in range(3)]
    threads = [run_stream(conn) for conn, _ in streams]
    broker.broadcast_to_topic("t", "shared")
    for _, sock in streams:
        wait_for(lambda sock=sock: sock.sends, what="a write")
    first = streams[0][1].sends[0]
    assert data_of(parse_chunks(first)) == ['"shared"']
    # The same bytes object: framed by the first recipient, reused by the others.
    assert all(sock.sends[0] is first for _, sock in streams)
    for conn, _ in streams:
        conn.close()
    for thread in threads:
        thread.join(5)


def test_a_write_the_socket_took_in_part_is_finished_before_later_events(broker: SSEBroker) -> None:
    conn, sock = writing_stream(broker, "t")
    broker.broadcast_to_topic("t", "first")
    broker.broadcast_to_topic("t", "second")
    sock.limit = 7  # the socket takes 7 bytes of the next write
    assert conn.send_parked() is False  # the stream's greenlet must finish it
    assert len(sock.sends) == 1 and len(sock.sends[0]) == 7
    broker.broadcast_to_topic("t", "third")
    thread = run_stream(conn)
    wait_for(lambda: len(sock.sends) >= 3, what="the rest and the next event")
    written = b"".join(sock.sends)
    assert data_of(parse_chunks(written)) == ['"first"', '"second"', '"third"']
    conn.close()
    thread.join(5)


def test_send_parked_leaves_the_end_of_a_stream_to_its_greenlet(broker: SSEBroker) -> None:
    conn, sock = writing_stream(broker, "t")
    assert conn.send_parked() is False  # nothing queued
    broker.shutdown(timeout=0.01)  # queues the final frame and closes
    assert conn.send_parked() is False
    assert sock.sends == []


ROUND_PROBE = (
    GEVENT_SCRIPT
    + r"""
n = int(sys.argv[1])
broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False, event_buffer_size=10))
readers = []
for _ in range(n):
    a, b = socket.socketpair()
    conn = broker.open_stream(topics=["t"])
    out = Out(a)
    conn._write_to(out)
    conn._send_head(out)  # the head, as the stream's first ``next`` writes it
    b.recv(65536)  # read: only the round's writes count below
    gevent.spawn(lambda conn=conn: [None for _ in conn])
    readers.append(b)
gevent.sleep(0.05)  # every stream parked
probe_r, probe_w = socket.socketpair()
seen = []

def has_data(reader):
    try:  # the real socket: gevent's would wait for data
        return bool(reader._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False

def probe():
    probe_r.recv(1)  # woken by I/O while the round runs
    seen.append(sum(map(has_data, readers)))

def first_send_wakes_the_probe():
    # The round's first hub-side write also makes the probe's socket readable.
    for conn in broker._hub._connections:
        class Poker:
            def send_parked(self, send=conn.send_parked):
                if not poked:
                    poked.append(probe_w.send(b"x"))
                return send()
        conn._wake.writer = Poker()

poked = []

gevent.spawn(probe)
gevent.sleep(0.01)
first_send_wakes_the_probe()
_wake._batch_for(gevent.get_hub()).slice = 0.0  # hand the hub back at every chance
broker.broadcast_to_topic("t", "x")
gevent.sleep(1.0)
written = sum(map(has_data, readers))
print(json.dumps({"probe_saw": seen, "written": written, "poked": len(poked)}))
"""
)


def test_a_round_writing_from_the_hub_hands_it_back_to_io_within_the_round() -> None:
    """A publish (here: any greenlet woken by I/O) runs while a large round of
    hub-side writes is in progress, not after all of it."""
    n = 400
    proc = subprocess.run(
        [sys.executable, "-c", ROUND_PROBE, str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["written"] == n
    assert result["poked"] == 1 and len(result["probe_saw"]) == 1
    assert 0 < result["probe_saw"][0] < n


def read_chunked_stream(sock: socket.socket, until: bytes) -> bytes:
    """The raw body bytes of a chunked response read until ``until`` appears."""
    data = b""
    while until not in data:
        block = sock.recv(65536)
        assert block, "the stream ended"
        data += block
    return data


@pytest.mark.timeout(120)
def test_large_events_to_a_slow_reader_arrive_intact_and_in_order_over_gunicorn_gevent() -> None:
    """Writes the socket does not take whole (the reader is not reading) are
    finished before later ones: the chunked body stays well formed."""
    server = Server("gevent", config={"SSE_EVENT_BUFFER_SIZE": 200}, port=free_port())
    server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /_sse/connect?topics=big HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_chunked_stream(sock, b"event: connected")
        wait_for(lambda: server.state()["connections"] == 1, what="the stream")
        payload = "y" * 20_000
        for i in range(60):  # ~1.2 MB while nobody reads
            server.publish("big", f"{i}:{payload}")
        sock.settimeout(10)
        body = head.partition(b"\r\n\r\n")[2] + read_chunked_stream(sock, b"59:")
        while not body.endswith(b"\n\n\r\n"):
            body += sock.recv(65536)
        frames = b"".join(parse_chunks(body)).split(b"\n\n")
        values = [json.loads(d) for d in data_of(frames) if d.startswith('"')]
        assert [int(v.split(":")[0]) for v in values] == list(range(60))
        assert all(v.split(":", 1)[1] == payload for v in values)
        sock.close()
    finally:
        server.stop()
