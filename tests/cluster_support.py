"""A real local Redis Cluster for the cluster tests and benchmarks.

Three (or more) ``redis-server --cluster-enabled yes`` primaries on free ports
in a temporary directory, joined with ``redis-cli --cluster create``, no
replicas, no persistence. Only the processes started here are ever signalled
(by their PID), and the directory is removed on :meth:`LocalCluster.stop`.

Redis 7+ is needed for sharded pub/sub (``SSUBSCRIBE`` / ``SPUBLISH``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import typing as t
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

#: Cluster tests are skipped where redis-server or redis-cli is missing.
requires_cluster_tools = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server / redis-cli not installed",
)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterNode:
    """One primary: its port, its process, its directory."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.move(port)

    def move(self, port: int) -> None:
        """Use ``port`` (before starting): the last one was taken meanwhile."""
        self.port = port
        self.dir = self.root / str(port)
        self.dir.mkdir(parents=True, exist_ok=True)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_tail(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-600:]
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            # A cluster missing a shard still serves the others' slots.
            "--cluster-require-full-coverage", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, **kwargs: t.Any) -> redis.Redis:
        kwargs.setdefault("socket_connect_timeout", 0.5)
        kwargs.setdefault("socket_timeout", 2.0)
        return redis.Redis(port=self.port, **kwargs)

    def ping(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash: the node keeps its ``nodes.conf`` (its
        identity and slots) but no data, so a restart rejoins empty."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class LocalCluster:
    """A Redis Cluster of ``primaries`` nodes on 127.0.0.1, started and
    stopped by its owner.

    :param primaries: at least 3 (``redis-cli --cluster create`` refuses fewer);
        ``1`` starts a single cluster-enabled node that owns every slot.
    """

    def __init__(self, primaries: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sse-cluster-"))
        self.nodes = [ClusterNode(self.root, _free_cluster_port()) for _ in range(primaries)]
        self._moves = 0

    @property
    def url(self) -> str:
        """A URL naming one node; cluster clients discover the rest."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def start(self, timeout: float = 30.0) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            self._wait(self._up, timeout, "the nodes to answer PING")
            if len(self.nodes) == 1:
                with self.nodes[0].client() as c:
                    c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            else:
                subprocess.run(
                    ["redis-cli", "--cluster", "create",
                     *(f"127.0.0.1:{n.port}" for n in self.nodes),
                     "--cluster-replicas", "0", "--cluster-yes"],
                    check=True, capture_output=True, timeout=timeout,
                )  # fmt: skip
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _up(self) -> bool:
        """Every node answers; one that exited (its port, free when chosen,
        was taken before it bound: outgoing connections take ports from the
        same range) starts again on another port, a few times."""
        for node in self.nodes:
            if node.exited():
                self._moves += 1
                if self._moves > 5:
                    raise RuntimeError(f"redis-server on port {node.port} exited:\n{node.log_tail()}")
                node.move(_free_cluster_port())
                node.start()
        return all(n.ping() for n in self.nodes)

    def healthy(self) -> bool:
        """Every node up, sees the cluster ``ok`` and every slot assigned."""
        for node in self.nodes:
            try:
                with node.client() as c:
                    info = c.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
            if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != "16384":
                return False
            if int(fields.get("cluster_known_nodes", 0)) != len(self.nodes):
                return False
        return True

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self._wait(self.healthy, timeout, "the cluster to be healthy")

    def client(self, **kwargs: t.Any) -> RedisCluster:
        kwargs.setdefault("socket_timeout", 2.0)
        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **kwargs)

    def node_for_key(self, key: str) -> ClusterNode:
        """The primary holding ``key``'s slot."""
        with self.client() as c:
            node = c.get_node_from_key(key)
        return next(n for n in self.nodes if n.port == node.port)

    def restart(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Start a killed node again (same port and ``nodes.conf``) and wait
        until the cluster is whole."""
        node.start()
        self._wait(node.ping, timeout, f"node {node.port} to answer PING")
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _wait(predicate: t.Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_cluster() -> t.Iterator[LocalCluster]:
    """Three primaries for the module's tests; stopped (only them) afterwards."""
    with LocalCluster(3) as cluster:
        yield cluster
