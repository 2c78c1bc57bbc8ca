"""Redis for the Redis backend's tests: the shared server, private ones, readers.

Every test gets its own key prefix on the shared Redis at 127.0.0.1:6379 and
deletes only its own keys afterwards, so parallel runs never meet. Tests that
kill Redis start a private ``redis-server`` on a free port and kill only it.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import typing as t

import pytest
import redis

from flask_sse_broker import SSEBroker, SSEConfig, SSEConnection

from .support import ROOT, QueuedEvents, free_port, wait_for

SHARED_URL = "redis://127.0.0.1:6379/0"


def shared_redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(SHARED_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


requires_redis = pytest.mark.skipif(not shared_redis_available(), reason="no Redis on 127.0.0.1:6379")
requires_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


def new_prefix() -> str:
    return "sse-test-" + secrets.token_hex(6)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete this test's keys, and only them."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + ":*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    except redis.RedisError:
        pass
    finally:
        client.close()


def connections_named(url: str, name_prefix: str) -> list[dict[str, t.Any]]:
    """Entries of ``CLIENT LIST`` whose client name starts with ``name_prefix``."""
    client = redis.Redis.from_url(url)
    try:
        return [c for c in client.client_list() if c.get("name", "").startswith(name_prefix)]
    finally:
        client.close()


class RedisServer:
    """A private ``redis-server`` without persistence, to kill and restart."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ROOT / "tests" / "artifacts" / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ping, 10, 0.05, f"redis-server on {self.port}")
        return self

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.kill()


class ConnectionReader(QueuedEvents):
    """Reads an in-process :class:`SSEConnection` in a thread, decoding events."""

    def __init__(self, conn: SSEConnection) -> None:
        super().__init__()
        self.conn = conn
        self._start(conn)

    def close(self) -> None:
        self.conn.close()


class Cluster:
    """Brokers of one test, sharing one Redis prefix, shut down afterwards."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.brokers: list[SSEBroker] = []

    def broker(self, **config: t.Any) -> SSEBroker:
        config.setdefault("heartbeat_interval", 0.5)
        b = SSEBroker(SSEConfig(redis_url=self.url, redis_prefix=self.prefix, **config))
        self.brokers.append(b)
        return b

    def close(self) -> None:
        for b in self.brokers:
            b.shutdown(timeout=0.5)
