"""The publish script's round trip, without redis-py's per-command layers.

A publish is the Redis backend's hot path: one ``EVALSHA`` per event, from
every request that publishes. Through ``Redis.execute_command`` a command
costs about five times the CPU of its socket calls (connection pool checkout
with a readiness probe, retry wrapper, argument encoders, observability
hooks); here
it is one ``send`` of a command packed once and one reply read, on a
connection of this object's own. The connections are made from the command
pool's settings (URL, timeouts, TLS, credentials, ``CLIENT SETNAME``), so they
behave as the pool's do: they connect lazily, and a timed-out or broken one is
closed and connects again on its next use.
"""

from __future__ import annotations

import hashlib
import threading
import typing as t

import redis
from redis.exceptions import NoScriptError


class ScriptCaller:
    """Runs one Lua script (``EVALSHA``, loading it on ``NOSCRIPT``) on at most
    ``size`` connections of its own; a caller that finds them all busy goes
    through ``fallback`` (the command pool, where callers wait their turn).

    :param pool: the command pool whose connection settings to copy.
    :param script: the Lua source.
    :param fallback: called with ``(keys, args)`` when no connection is free.
    """

    def __init__(
        self,
        pool: redis.ConnectionPool,
        script: str,
        size: int,
        fallback: t.Callable[[list[t.Any], list[t.Any]], t.Any],
    ) -> None:
        self._pool = pool
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        self._size = size
        self._fallback = fallback
        #: Idle connections, the most recently used last (it is warm).
        self._free: list[redis.Connection] = []
        self._made = 0
        #: Guards ``_made`` (the free list needs no lock: ``pop`` and
        #: ``append`` are atomic).
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, keys: list[t.Any], args: list[t.Any]) -> t.Any:
        """The script's reply.

        :raises redis.RedisError: as the command would through redis-py.
        """
        try:
            conn = self._free.pop()
        except IndexError:
            made = self._make()
            if made is None:
                return self._fallback(keys, args)
            conn = made
        try:
            return self._call(conn, keys, args)
        except redis.ResponseError:
            raise  # an error reply: the connection is in step
        except BaseException:
            # A timeout or a broken socket: a late reply must never be read
            # as the next command's, so the connection starts over.
            conn.disconnect()
            raise
        finally:
            if self._closed:
                conn.disconnect()
            else:
                self._free.append(conn)

    def _call(self, conn: redis.Connection, keys: list[t.Any], args: list[t.Any]) -> t.Any:
        tail = [str(len(keys)).encode(), *map(_bytes, keys), *map(_bytes, args)]
        send: t.Callable[..., None] = conn.send_packed_command  # stubs say str; bytes are sent as is
        send([_pack(b"EVALSHA", self._sha, *tail)], check_health=False)
        try:
            return conn.read_response()
        except NoScriptError:
            # A Redis that restarted, or was flushed: load it, once.
            send([_pack(b"SCRIPT", b"LOAD", self._script)], check_health=False)
            conn.read_response()
            send([_pack(b"EVALSHA", self._sha, *tail)], check_health=False)
            return conn.read_response()

    def _make(self) -> redis.Connection | None:
        with self._lock:
            if self._made >= self._size or self._closed:
                return None
            self._made += 1
        pool = self._pool
        conn: redis.Connection = pool.connection_class(**pool.connection_kwargs)
        return conn

    def close(self) -> None:
        """Close the idle connections; busy ones close when they are done."""
        self._closed = True
        free, self._free = self._free, []
        for conn in free:
            conn.disconnect()


def _bytes(value: t.Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def _pack(*parts: bytes) -> bytes:
    """A command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%s\r\n" % (len(part), part) for part in parts])
