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
    socket_timeout: float


#: One round trip: the client's session (``''`` when none) and its entry in
#: every other live process's hash (``KEYS[1]`` the process set, ``KEYS[2]`` the session;
#: ``ARGV``: now, client id, the node-hash prefix, this process). It reads
#: hashes it computes the names of, so it needs one Redis, not a Cluster.
RECALL_SCRIPT = """
local found = {redis.call('GET', KEYS[2]) or ''}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  if node ~= ARGV[4] then
    local topics = redis.call('HGET', ARGV[3] .. node, ARGV[2])
    if topics then found[#found + 1] = topics end
  end
end
return found
"""


class _Batch:
    """Presence changes written together by the flusher, in one round trip."""

    __slots__ = ("clients", "done", "forget", "remember")

    def __init__(self) -> None:
        #: Client ids whose entry must match the hub.
        self.clients: set[str] = set()
        #: Sessions to delete (the client is live again) ...
        self.forget: set[str] = set()
        #: ... and to write (its last connection here ended), with the topics.
        self.remember: dict[str, frozenset[str]] = {}
        #: Set once the batch is written (or failed to be).
        self.done = threading.Event()


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
        self._recall_script = client.register_script(RECALL_SCRIPT)
        #: Changes waiting for the flusher, and what guards the swap.
        self._batch = _Batch()
        self._batch_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def _ttl_ms(self) -> int:
        return int(self._tunables.refresh_interval * self._tunables.presence_lifetime * 1000)

    def _session_ttl_ms(self) -> int:
        return int(self.hub.config.session_ttl * 1000)

    # -- the hub's hooks ------------------------------------------------------

    def client_opened(self, client: SSEClient) -> None:
        """Announce the client, and wait (bounded) until Redis has it, so an
        operation from another process finds it once its stream has started;
        the write is shared with every client that opened meanwhile."""
        done = self._enqueue(client.id, forget=True)
        done.wait(self._tunables.socket_timeout)

    def client_closed(self, client: SSEClient) -> None:
        if self.hub.closing:
            # Shutdown ends every stream at once: write them all in forget_process().
            self._pending_sessions.append((client.id, client.topics))
            return
        gone = not self.hub.is_connected(client.id)
        self._enqueue(client.id, remember=client.topics if gone else None)

    def changed(self, client_id: str) -> None:
        """The client's topics changed here: rewrite its entry soon."""
        self._enqueue(client_id)

    # -- batched writes -------------------------------------------------------

    def _enqueue(
        self, client_id: str, *, forget: bool = False, remember: frozenset[str] | None = None
    ) -> threading.Event:
        """Queue a presence change for the flusher; return when it is written."""
        with self._batch_lock:
            batch = self._batch
            batch.clients.add(client_id)
            if forget:
                batch.forget.add(client_id)
                batch.remember.pop(client_id, None)
            if remember is not None:
                batch.remember[client_id] = remember
                batch.forget.discard(client_id)
            if self._flusher is None:
                self._stop.clear()
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="sse-redis-presence", daemon=True
                )
                self._flusher.start()
        self._wake.set()
        return batch.done

    def stop(self) -> None:
        """Write what is queued and stop the flusher."""
        self._stop.set()
        self._wake.set()
        flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(2 * self._tunables.socket_timeout)

    def _flush_loop(self) -> None:
        """Write every batch as soon as the previous one is written: under a
        storm, each round trip carries every change made while the last was
        in flight (group commit); when quiet, a change is written at once."""
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._batch_lock:
                batch, self._batch = self._batch, _Batch()
            try:
                if batch.clients:
                    self._write_batch(batch)
            finally:
                batch.done.set()
            if self._stop.is_set():
                return

    def _write_batch(self, batch: _Batch) -> None:
        session_ttl = self._session_ttl_ms()
        try:
            with self._lock:
                present: dict[str, str] = {}
                gone: list[str] = []
                for client_id in batch.clients:
                    topics = self.hub.topics_of(client_id)
                    if topics is None:
                        gone.append(client_id)
                    else:
                        present[client_id] = dump_topics(topics)
                with self._redis.pipeline(transaction=False) as pipe:
                    if gone:
                        pipe.hdel(self._node_key, *gone)
                    if present:
                        ttl = self._ttl_ms()
                        pipe.hset(self._node_key, mapping=present)  # type: ignore[arg-type]
                        pipe.pexpire(self._node_key, ttl)
                        pipe.zadd(self._keys.nodes, {self.node: time.time() + ttl / 1000})
                    if batch.forget:
                        pipe.delete(*(self._keys.session(cid) for cid in batch.forget))
                    for client_id, topics in batch.remember.items():
                        if session_ttl and topics:
                            pipe.set(self._keys.session(client_id), dump_topics(topics), px=session_ttl)
                    pipe.execute()
        except redis.RedisError as e:
            # The periodic refresh repairs presence; sessions are lost.
            logger.warning("presence of %d client(s) not written to Redis: %s", len(batch.clients), e)

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

    def cluster_topics(self, client_id: str) -> tuple[frozenset[str], bool] | None:
        """The client's topics from its session or the other processes holding
        it, and whether one of them holds it live; ``None`` when none knows
        it. One round trip."""
        try:
            results = self._recall_script(
                keys=[self._keys.nodes, self._keys.session(client_id)],
                args=[time.time(), client_id, self._keys.node(""), self.node],
            )
        except redis.RedisError as e:
            raise _error(f"looking up client {client_id!r} failed", e) from e
        found = [json.loads(value) for value in results if value]
        if not found:
            return None
        return frozenset(topic for topics in found for topic in topics), len(results) > 1

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
