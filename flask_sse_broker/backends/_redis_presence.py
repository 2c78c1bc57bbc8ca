"""Who is connected where, across processes: node hashes, sessions, and the
cluster-wide queries over them.

Each process writes the client ids it serves (with their topics) to its own
hash, refreshed every ``refresh_interval`` and expiring after
``presence_lifetime`` intervals of silence, so a crashed process drops out.
"""

from __future__ import annotations

import json
import threading
import time
import typing as t

import redis

from ..exceptions import BackendError
from ._redis_keys import REVOKE_SCRIPT, RedisKeys, dump_topics, text
from .base import logger

if t.TYPE_CHECKING:
    from .._connection import SSEClient
    from .._hub import Hub


class _Tunables(t.Protocol):
    refresh_interval: float
    presence_lifetime: int


class RedisPresence:
    """This process's presence entry and sessions, and cluster queries.

    Writes never raise (the periodic refresh repairs a missed one); queries
    raise :exc:`BackendError`.
    """

    def __init__(self, client: redis.Redis[bytes], keys: RedisKeys, node: str, tunables: _Tunables) -> None:
        self._redis = client
        self._keys = keys
        self.node = node
        self._node_key = keys.node(node)
        self._tunables = tunables
        #: Set by the backend's ``bind``.
        self.hub: Hub
        #: Serialises presence writes, so a write always reflects the hub's
        #: state at the time it is made (never held together with the hub's lock).
        self._lock = threading.Lock()
        self._revoke_script = client.register_script(REVOKE_SCRIPT)
        #: Sessions of clients ended by shutdown, written in one go by :meth:`forget_process`.
        self._pending_sessions: list[tuple[str, frozenset[str]]] = []

    def _ttl_ms(self) -> int:
        return int(self._tunables.refresh_interval * self._tunables.presence_lifetime * 1000)

    def _session_ttl_ms(self) -> int:
        return int(self.hub.config.session_ttl * 1000)

    # -- the hub's hooks ------------------------------------------------------

    def client_opened(self, client: SSEClient) -> None:
        self.write(client.id, forget_session=True)

    def client_closed(self, client: SSEClient) -> None:
        if self.hub.closing:
            # Shutdown ends every stream at once: write them all in forget_process().
            self._pending_sessions.append((client.id, client.topics))
            return
        self.write(client.id)
        if not self.hub.is_connected(client.id):
            self.remember(client.id, client.topics)

    def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None:
        self.write(client.id)

    # -- this process ---------------------------------------------------------

    def write(self, client_id: str, forget_session: bool = False) -> None:
        """Make this process's entry for ``client_id`` match the hub now."""
        try:
            with self._lock:
                topics = self.hub.topics_of(client_id)
                with self._redis.pipeline(transaction=False) as pipe:
                    if topics is None:
                        pipe.hdel(self._node_key, client_id)
                    else:
                        ttl = self._ttl_ms()
                        pipe.hset(self._node_key, client_id, dump_topics(topics))
                        pipe.pexpire(self._node_key, ttl)
                        pipe.zadd(self._keys.nodes, {self.node: time.time() + ttl / 1000})
                    if forget_session:
                        pipe.delete(self._keys.session(client_id))
                    pipe.execute()
        except redis.RedisError as e:
            logger.debug("presence of client %r not written: %s", client_id, e)

    def refresh(self) -> None:
        """Rewrite this process's entry from the hub (cost: one write of every
        local client id every ``refresh_interval``); drop expired processes."""
        ttl = self._ttl_ms()
        try:
            with self._lock:
                snapshot = {cid: dump_topics(topics) for cid, topics in self.hub.snapshot().items()}
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self._node_key)
                    if snapshot:
                        pipe.hset(self._node_key, mapping=snapshot)  # type: ignore[arg-type]
                        pipe.pexpire(self._node_key, ttl)
                    now = time.time()
                    pipe.zadd(self._keys.nodes, {self.node: now + ttl / 1000})
                    pipe.zremrangebyscore(self._keys.nodes, "-inf", now)
                    pipe.execute()
        except redis.RedisError as e:
            logger.debug("presence not refreshed: %s", e)

    def forget_process(self) -> None:
        """Write the sessions ended by shutdown; remove this process's entry."""
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                ttl = self._session_ttl_ms()
                for client_id, topics in self._pending_sessions:
                    if ttl and topics:
                        pipe.set(self._keys.session(client_id), dump_topics(topics), px=ttl)
                pipe.delete(self._node_key)
                pipe.zrem(self._keys.nodes, self.node)
                pipe.execute()
        except redis.RedisError as e:
            logger.warning("could not remove this process's presence from Redis: %s", e)
        self._pending_sessions.clear()

    @property
    def has_pending(self) -> bool:
        return bool(self._pending_sessions)

    # -- sessions -------------------------------------------------------------

    def remember(self, client_id: str, topics: frozenset[str]) -> None:
        """Keep a client's topics for ``session_ttl`` after its last connection."""
        ttl = self._session_ttl_ms()
        if not ttl or not topics:
            return
        try:
            self._redis.set(self._keys.session(client_id), dump_topics(topics), px=ttl)
        except redis.RedisError as e:
            logger.warning("could not remember the topics of client %r in Redis: %s", client_id, e)

    def update_session(self, client_id: str, topics: frozenset[str]) -> None:
        """Change a remembered session's topics, if there is one."""
        try:
            if topics:
                self._redis.set(self._keys.session(client_id), dump_topics(topics), xx=True, keepttl=True)
            else:
                self._redis.delete(self._keys.session(client_id))
        except redis.RedisError as e:
            logger.warning("could not update the session of client %r in Redis: %s", client_id, e)

    def revoke_sessions(self, topic: str, keys: list[str] | None = None) -> None:
        """Take ``topic`` out of the sessions named by ``keys``, or of every
        session (a ``SCAN``, in batches).

        :raises BackendError: Redis did not answer.
        """
        try:
            if keys is not None:
                if keys:
                    self._revoke_script(keys=keys, args=[topic])
                return
            batch: list[str] = []
            for key in self._redis.scan_iter(match=self._keys.all_sessions(), count=500):
                batch.append(text(key))
                if len(batch) >= 200:
                    self._revoke_script(keys=batch, args=[topic])
                    batch = []
            if batch:
                self._revoke_script(keys=batch, args=[topic])
        except redis.RedisError as e:
            raise _error(f"revoking {topic!r} from the sessions failed", e) from e

    # -- the cluster ----------------------------------------------------------

    def _live_nodes(self) -> list[str]:
        """The other processes whose presence has not expired."""
        nodes = self._redis.zrangebyscore(self._keys.nodes, time.time(), "+inf")
        return [name for name in (text(node) for node in nodes) if name != self.node]

    def cluster_topics(self, client_id: str) -> frozenset[str] | None:
        """The client's topics from its session or the other processes holding
        it; ``None`` when none knows it."""
        try:
            nodes = self._live_nodes()
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._keys.session(client_id))
                for node in nodes:
                    pipe.hget(self._keys.node(node), client_id)
                results = pipe.execute()
        except redis.RedisError as e:
            raise _error(f"looking up client {client_id!r} failed", e) from e
        found = [json.loads(value) for value in results if value is not None]
        if not found:
            return None
        return frozenset(topic for topics in found for topic in topics)

    def cluster_clients(self) -> dict[str, set[str]]:
        """Client id -> topics of every client connected anywhere; one Redis
        read of every process's presence (O(clients in the cluster))."""
        result = {cid: set(topics) for cid, topics in self.hub.snapshot().items()}
        try:
            nodes = self._live_nodes()
            with self._redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hgetall(self._keys.node(node))
                hashes = pipe.execute()
        except redis.RedisError as e:
            raise _error("reading cluster presence failed", e) from e
        for mapping in hashes:
            for cid, topics in mapping.items():
                result.setdefault(text(cid), set()).update(json.loads(topics))
        return result

    def is_connected(self, client_id: str) -> bool:
        """Local first; else one ``HEXISTS`` per other live process."""
        if self.hub.is_connected(client_id):
            return True
        try:
            nodes = self._live_nodes()
            with self._redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hexists(self._keys.node(node), client_id)
                return any(pipe.execute())
        except redis.RedisError as e:
            raise _error("reading cluster presence failed", e) from e


def _error(what: str, error: Exception) -> BackendError:
    return BackendError(f"Redis backend: {what}: {error}")
