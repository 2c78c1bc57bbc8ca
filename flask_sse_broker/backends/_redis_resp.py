"""Replies of the pub/sub connection (RESP2), read many at a time.

redis-py reads one reply per call and probes the socket between replies (a
``recv`` and two timeout changes each), which costs the listener more than
the rest of an event's way to its streams. The pub/sub connection only ever
receives pushes and (un)subscribe and ``PING`` replies, so the listener reads
whatever the socket holds in one ``recv`` and parses every complete reply in
it: a burst of events costs one wake-up and one system call, not one per
event.
"""

from __future__ import annotations

import socket
import typing as t

import redis

#: Most bytes taken from the socket by one ``recv``.
CHUNK = 65536


class ReplyReader:
    """A buffer over one connection's socket and the replies in it.

    :param sock: the connection's socket, read by this object alone.
    """

    __slots__ = ("_buf", "_pending", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        # TLS: bytes decrypted but not taken yet, which poll() does not see.
        self._pending: t.Callable[[], int] | None = getattr(sock, "pending", None)

    def fill(self) -> None:
        """Take what the socket holds (it is readable: at least one byte, or
        the end of the connection).

        :raises redis.ConnectionError: Redis closed the connection.
        :raises redis.TimeoutError: nothing arrived within the socket's timeout.
        """
        try:
            data = self._sock.recv(CHUNK)
            while self._pending is not None and self._pending():
                data += self._sock.recv(CHUNK)
        except TimeoutError as e:  # socket.timeout
            raise redis.TimeoutError("timed out reading from Redis") from e
        except OSError as e:
            raise redis.ConnectionError(f"error reading from Redis: {e}") from e
        if not data:
            raise redis.ConnectionError("Redis closed the connection")
        self._buf += data

    def replies(self) -> t.Iterator[t.Any]:
        """Every complete reply in the buffer, in order (a partial one stays),
        each taken from the buffer as it is yielded: an error reply raises
        once the replies before it were handled.

        :raises redis.ResponseError: Redis answered with an error.
        :raises redis.InvalidResponse: the bytes are not RESP2.
        """
        buf = self._buf
        pos = 0
        try:
            while pos < len(buf):
                try:
                    got = _parse(buf, pos)
                except ValueError as e:  # a length or an integer that is not one
                    raise redis.InvalidResponse(f"Protocol error from Redis: {e}") from e
                if got is None:
                    break
                reply, pos = got
                if isinstance(reply, redis.ResponseError):
                    raise reply
                yield reply
        finally:
            del buf[:pos]

    def buffered(self) -> bool:
        """Whether bytes are waiting in the buffer (a complete reply or not)."""
        return bool(self._buf)


def _parse(buf: bytearray, pos: int) -> tuple[t.Any, int] | None:
    """The reply at ``pos`` and where the next one starts, or ``None`` while
    it is incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    head = bytes(buf[pos + 1 : end])
    if kind == 36:  # $ bulk string
        size = int(head)
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            return None
        return bytes(buf[end + 2 : stop]), stop + 2
    if kind == 42:  # * array
        count = int(head)
        if count < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(count):
            got = _parse(buf, at)
            if got is None:
                return None
            item, at = got
            items.append(item)
        return items, at
    if kind == 58:  # : integer
        return int(head), end + 2
    if kind == 43:  # + simple string
        return head, end + 2
    if kind == 45:  # - error
        return redis.ResponseError(head.decode("utf-8", "replace")), end + 2
    raise redis.InvalidResponse(f"Protocol error from Redis: {bytes(buf[pos : end + 2])[:100]!r}")
