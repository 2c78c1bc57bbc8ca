"""A scripted raw HTTP server, to hold a consumer to the letter of the SSE spec.

Each request is answered with the exact bytes of the next script, then the
connection is closed (a stream that ends). When the scripts run out, the
connection is answered with an empty event stream and held open until the
server stops, so a consumer that reconnects once too often waits instead of
looping. Every request is recorded: its target, its raw header bytes and when
it arrived, and when the server closed the previous connection, so a test can
read what a reconnect sent and how long it waited.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import typing as t
from dataclasses import dataclass, field

#: The start of a scripted event-stream answer.
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def stream(body: str | bytes, content_type: str = "text/event-stream") -> bytes:
    """A 200 event-stream answer carrying ``body`` (text is UTF-8 encoded)."""
    raw = body.encode() if isinstance(body, str) else body
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
    return head.encode("latin-1") + raw


def status(code: int, reason: str = "X", headers: t.Mapping[str, str] | None = None, body: str = "") -> bytes:
    """A non-stream answer (redirect, error) with the given headers and JSON-ish body."""
    lines = [f"HTTP/1.1 {code} {reason}", "Connection: close", f"Content-Length: {len(body.encode())}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body.encode()


@dataclass
class RawRequest:
    """One request as the server received it."""

    target: str
    headers: dict[str, bytes]
    arrived: float
    #: When the server closed the connection before this one (``None`` for the first).
    previous_closed: float | None = None

    def header(self, name: str) -> bytes | None:
        return self.headers.get(name.lower())


@dataclass
class RawServer:
    """Serve ``scripts`` in order on 127.0.0.1, one per connection."""

    scripts: list[bytes]
    requests: list[RawRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._held: list[socket.socket] = []
        self._last_closed: float | None = None
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str = "/events") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_requests(self, count: int, timeout: float = 15.0) -> list[RawRequest]:
        """Wait until ``count`` requests have arrived; return them all."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} of {count} requests arrived")
            return list(self.requests)

    def stop(self) -> None:
        self._stopped.set()
        # shutdown() wakes the accept() blocked in the thread; close() would not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._held:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(5)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            request = self._read_request(sock)
            if request is None:
                sock.close()
                continue
            with self._arrived:
                index = len(self.requests)
                self.requests.append(request)
                self._arrived.notify_all()
            if index < len(self.scripts):
                with contextlib.suppress(OSError):
                    sock.sendall(self.scripts[index])
                # Half-close first, so the bytes are delivered before the end.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                self._last_closed = time.monotonic()
                sock.close()
            else:
                with contextlib.suppress(OSError):
                    sock.sendall(STREAM_HEAD)
                self._held.append(sock)

    def _read_request(self, sock: socket.socket) -> RawRequest | None:
        sock.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
        except OSError:
            return None
        arrived = time.monotonic()
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        target = head[0].split(b" ")[1].decode("latin-1")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode("latin-1").strip().lower()] = value.strip()
        return RawRequest(target, headers, arrived, self._last_closed)
