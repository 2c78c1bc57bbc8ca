"""The Redis Cluster backend: the history split over the shards of a cluster.

Selected by ``SSEConfig(redis_url=..., redis_cluster=True)``
(``SSE_REDIS_CLUSTER``); ``redis_url`` names any node. Needs Redis 7+
(sharded pub/sub). The design, and why:

**Partitions.** The history is :data:`PARTITIONS` (16) partitions, each a
capped stream, a ``last`` key and sharded pub/sub channels under one hash
tag, so they live on one shard and one Lua script ``XADD``\\ s an event and
``SPUBLISH``\\ es it atomically there (Redis 7.0 allows ``SPUBLISH`` of a
declared key's slot in a script). The tags are chosen so the partitions'
slots are spread evenly over the 16384 slots, hence over the primaries of a
cluster made with ``redis-cli --cluster create``. A topic's events go to the
partition its name hashes to (CRC-32), a client's direct sends to the
partition of its client id, broadcasts and control messages to partition 0.
So publishes on different topics run on different primaries, and the publish
rate grows with the primaries; one topic's events stay in one stream, so they
keep the §4/§6 guarantees (order, no loss across reconnects, ``reset``).

**Cursor ids.** An event's id is its position in its partition's stream, but
a browser sends back only the last id it received. So the id written on each
event is the *cursor* of the process's listener after delivering it: the
position of every partition (``_cluster_cursor.py``). Each partition is read
in order by one listener thread, and events are delivered to the hub in one
sequence under :attr:`RedisClusterBackend._order`, so a connection that
received an event has received every earlier event for it in every partition
(up to the positions its id names) - or its replay did. Resuming with that id
replays each partition after its position. The frame is still encoded once
per event, whatever the number of connections.

**Handover.** The envelopes' ``seq`` is the process's delivery counter, not a
stream id: a replay reads every partition up to the listener's positions at
one instant (taken under the order lock, with the counter) and tells the
stream to drop live events up to that counter (``Replay.skip``).

**What is not promised.** Order between events on different partitions (a
connection may see topic B's event before topic A's one published just
before it); a ``publish_batch`` is not atomic across partitions; a
subscribe, disconnect or revoke from another process is applied when its
control message arrives, not ordered with events on other partitions.
Presence and sessions (``_redis_cluster_presence.py``) are the single-Redis
ones, kept on one primary. **Routing** is the single-Redis one
(``_redis_cluster_routes.py``): a process holds only the channels it needs.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import threading
import time
import typing as t

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import MovedError, RedisClusterException
from redis.retry import Retry

from .._wire import Audience, Envelope, Seq, format_event_id, frame, parse_event_id
from ..exceptions import BackendError, BrokerUnavailable
from ._cluster_cursor import ORIGIN, PARTITIONS, encode_cursor, parse_cursor, replay_envelopes
from ._redis_channels import is_pattern_key
from ._redis_cluster_keys import PUBLISH_SCRIPT, Partition, partition_of
from ._redis_cluster_listener import ERRORS as _Errors
from ._redis_cluster_listener import Reader as _Reader
from ._redis_cluster_listener import deliver_entry
from ._redis_cluster_listener import never_trimmed as _untrimmed
from ._redis_cluster_presence import ClusterBackplane
from ._redis_cluster_publish import publish_pipelined, script_call
from ._redis_cluster_routes import ClusterChannels, ClusterKeys, Listening
from ._redis_keys import text
from ._redis_routes import Routes
from .base import Replay, logger

if t.TYPE_CHECKING:
    from .._hub import Hub

__all__ = ["PARTITIONS", "RedisClusterBackend", "partition_of"]


class RedisClusterBackend(ClusterBackplane):
    """Carries events between processes through a Redis Cluster (see the module).

    :param url: any node of the cluster (``redis://host:port``).
    :param history_size: events kept for replay *per partition*.
    :param prefix: prefix of every key (no ``{`` or ``}``: they make hash tags).
    """

    socket_timeout = 2.0
    connect_timeout = 1.0
    idempotency_ttl = 300.0
    poll_interval = 0.5
    refresh_interval = 5.0
    #: How often each listener brings its quiet partitions' positions up to
    #: their heads (``Reader.advance``): a cursor lags that much at most.
    advance_interval = 1.0
    min_backoff = 0.1
    max_backoff = 5.0
    #: Connections per primary for publishing; callers beyond wait their turn.
    pool_size = 8
    pool_timeout = 20.0

    def __init__(self, url: str, history_size: int = 1000, prefix: str = "flask_sse") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"redis_prefix must not contain {{ or }} with redis_cluster: {prefix!r}")
        self.url = url
        self.history_size = history_size
        self.prefix = prefix
        self.partitions = [Partition(prefix, i) for i in range(PARTITIONS)]
        self._init_process()

    def _init_process(self) -> None:
        self.node = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        #: The ``RedisCluster`` client (typed ``Any``: the redis stubs lag behind).
        self._client: t.Any = None
        self._client_lock = threading.Lock()
        #: Orders delivery: positions, counter and the hub's queues move together.
        self._order = threading.Lock()
        self._positions: list[Seq | None] = [None] * PARTITIONS
        self._counter = 0
        self._stop = threading.Event()
        self._readers: list[_Reader] = []
        #: Per partition, the publish script bound to its primary's client.
        self._routes: list[t.Any] = [None] * PARTITIONS
        self._nodes: dict[tuple[str, int], redis.Redis[bytes]] = {}
        self._presence = None
        #: The channels held for local recipients (``_redis_cluster_routes.py``).
        self._channels = ClusterChannels(self.partitions)
        # The single-Redis routing, with the cluster's names and readers (duck-typed).
        keys: t.Any = ClusterKeys(self.partitions)
        listening: t.Any = Listening(self._channels)
        self._routing = Routes(keys, listening, self.pool_timeout)
        if hasattr(self, "hub"):
            self._routing.hub = self.hub

    def bind(self, hub: Hub) -> None:
        super().bind(hub)
        self._routing.hub = hub

    # -- connection ------------------------------------------------------------

    def cluster(self) -> t.Any:
        """The cluster client, made (and the server checked) on first use.

        :raises BackendError: unreachable, not a cluster, or older than Redis 7.
        """
        if self._client is not None:
            return self._client
        with self._client_lock:
            if self._client is None:
                self._client = self._connect()
        return self._client

    def _connect(self) -> t.Any:
        try:
            client: t.Any = RedisCluster.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
                retry=Retry(NoBackoff(), 1),
                client_name=f"{self.prefix}:{self.node}",
            )
        except RedisClusterException as e:
            if "cluster mode is not enabled" in str(e).lower() or "cluster_enabled" in str(e).lower():
                raise BackendError(
                    f"redis_cluster is set but {self.url} is not a Redis Cluster node "
                    "(unset SSE_REDIS_CLUSTER to use a single Redis)"
                ) from e
            raise _error("connecting to the cluster failed", e) from e
        except _Errors as e:
            raise _error("connecting to the cluster failed", e) from e
        try:
            version = text(client.info("server", target_nodes=RedisCluster.RANDOM)["redis_version"])
        except (*_Errors, KeyError) as e:
            client.close()
            raise _error("reading the server version failed", e) from e
        if int(version.split(".")[0]) < 7:
            client.close()
            raise BackendError(
                f"redis_cluster needs Redis 7 or later (sharded pub/sub); {self.url} runs {version}"
            )
        return client

    def owner(self, key: str) -> tuple[str, int]:
        """The primary holding ``key``'s slot (as the cluster client last saw)."""
        node = self.cluster().get_node_from_key(key)
        if node is None:
            raise BackendError(f"Redis Cluster backend: no node holds {key!r}")
        return str(node.host), int(node.port)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """One listener thread per primary, each reading its partitions; wait
        (briefly) until every one is subscribed and knows its positions."""
        if self._readers:
            return
        self._stop.clear()
        groups: dict[tuple[str, int], list[Partition]] = {}
        try:
            for p in self.partitions:
                groups.setdefault(self.owner(p.channel), []).append(p)
        except BackendError as e:
            logger.error("Redis Cluster unreachable at start (%s); listening per partition", e)
            groups = {("?", p.index): [p] for p in self.partitions}
        self._readers = [_Reader(self, group) for group in groups.values()]
        self._channels.attach(self._readers)
        for reader in self._readers:
            reader.thread.start()
        deadline = time.monotonic() + self.socket_timeout + self.connect_timeout
        for reader in self._readers:
            reader.ready.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self.close_presence()
        readers, self._readers = self._readers, []
        self._channels.detach()
        for reader in readers:
            if reader.thread is not threading.current_thread():
                reader.thread.join(self.poll_interval + 2 * self.socket_timeout)
            reader.close()
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._forget_routes(refresh=False)

    def reset_after_fork(self) -> None:
        self._init_process()

    # -- history ---------------------------------------------------------------

    def publish(
        self, audience: Audience, target: str | None, body: bytes, *, idempotency_key: str | None = None
    ) -> int:
        """Append to the event's partition and publish it on its shard; every
        listener, this process's included, delivers it.

        :raises BackendError: the shard did not answer or refused.
        """
        key = idempotency_key or secrets.token_urlsafe(16)
        try:
            self._publish(audience, target, body, key)
        except BackendError as e:
            e.idempotency_key = key
            raise
        return self.hub.recipient_count(audience, target)

    def _publish(self, audience: Audience, target: str | None, body: bytes, key: str) -> str:
        partition, keys, args = script_call(self, audience, target, body, key)
        try:
            try:
                event_id = self.route(partition)(keys=keys, args=args)
            except (redis.ConnectionError, redis.ResponseError) as e:
                # A pooled connection that died with a restarted primary, or a
                # slot that moved (MOVED): once more on a fresh route, safe
                # under the same idempotency key. Not after a timeout.
                if isinstance(e, redis.ResponseError) and not isinstance(e, MovedError):
                    raise
                self._forget_routes(refresh=isinstance(e, redis.ResponseError))
                event_id = self.route(partition)(keys=keys, args=args)
        except _Errors as e:
            raise _error(f"publishing to partition {partition.index} failed", e) from e
        return f"{partition.index}:{text(event_id)}"

    def route(self, partition: Partition) -> t.Any:
        """The publish script bound to a plain client of the primary holding
        ``partition``: the cluster client's per-command routing would cost
        more CPU than the publish itself."""
        route = self._routes[partition.index]
        if route is None:
            address = self.owner(partition.channel)
            node = self._nodes.get(address)
            if node is None:
                node = self._nodes[address] = self._node_client(*address)
            route = self._routes[partition.index] = node.register_script(PUBLISH_SCRIPT)
        return route

    def _node_client(self, host: str, port: int) -> redis.Redis[bytes]:
        pool = redis.BlockingConnectionPool(
            host=host,
            port=port,
            max_connections=self.pool_size,
            timeout=self.pool_timeout,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=f"{self.prefix}:{self.node}",
        )
        return redis.Redis(connection_pool=pool)

    def _forget_routes(self, *, refresh: bool) -> None:
        self._routes = [None] * PARTITIONS
        nodes, self._nodes = self._nodes, {}
        for node in nodes.values():
            node.connection_pool.disconnect()
        if refresh:
            self.cluster().nodes_manager.initialize()

    def publish_batch(self, items: t.Sequence[tuple[Audience, str | None, bytes]]) -> list[tuple[str, int]]:
        """Publish the items, one pipeline per primary, all sent before any
        reply is read, each partition's items in order
        (``_redis_cluster_publish.py``). Not atomic: on :exc:`BackendError`
        every other primary published all its items, the failing one any
        (each once or not at all). The ids are ``<partition>:<stream id>``."""
        calls = [script_call(self, a, tg, body, secrets.token_urlsafe(16)) for a, tg, body in items]
        try:
            ids = publish_pipelined(self, calls)
        except _Errors as e:
            raise _error("publishing a batch failed", e) from e
        return [(i, self.hub.recipient_count(a, tg)) for i, (a, tg, _) in zip(ids, items, strict=True)]

    def is_valid_id(self, value: str) -> bool:
        return parse_cursor(value) is not None

    def last_event_id(self) -> str | None:
        """The listener's cursor, or every partition's newest id from Redis."""
        with self._order:
            known = list(self._positions)
        if self._readers and all(r.connected for r in self._readers) and None not in known:
            return encode_cursor(t.cast(list[Seq], known))
        try:
            return encode_cursor(self._heads())
        except _Errors as e:
            raise _error("reading the last event ids failed", e) from e

    def _heads(self) -> list[Seq]:
        pipe = self.cluster().pipeline()
        for p in self.partitions:
            pipe.get(p.last)
        return [parse_event_id(text(v)) or ORIGIN if v is not None else ORIGIN for v in pipe.execute()]

    def _snapshot(self) -> tuple[list[Seq], int] | None:
        with self._order:
            if None in self._positions:
                return None
            return t.cast(list[Seq], list(self._positions)), self._counter

    def replay(self, cursor: str | None) -> Replay:
        """Every partition after the cursor's position, up to where this
        process's listener is (later events reach the stream live).

        A partition whose position is no longer in its stream (trimmed, lost
        with a restarted primary, from another cluster) resets the client.
        """
        if not self._readers or not all(r.ready.is_set() for r in self._readers):
            raise BrokerUnavailable("the Redis Cluster listener is not subscribed", retry_after=5)
        want = parse_cursor(cursor) if cursor is not None else None
        snapshot = self._snapshot()
        if want is not None and snapshot is not None and not _covers(snapshot[0], want):
            snapshot = self._wait_positions(want)
        if snapshot is None:
            raise BrokerUnavailable("the Redis Cluster listener has no positions yet", retry_after=5)
        positions, counter = snapshot
        skip = (counter, 0)
        if want is None:
            return Replay(cursor=encode_cursor(positions), skip=skip)
        if not _covers(positions, want):
            return Replay(reset=True, cursor=encode_cursor(positions), skip=skip)
        try:
            missed = self._read_missed(want, positions)
        except _Errors as e:
            raise BrokerUnavailable(f"the Redis Cluster is unreachable: {e}", retry_after=5) from e
        if missed is None:
            return Replay(reset=True, cursor=encode_cursor(positions), skip=skip)
        return Replay(envelopes=replay_envelopes(want, missed), cursor=encode_cursor(want), skip=skip)

    def _wait_positions(self, want: list[Seq]) -> tuple[list[Seq], int] | None:
        """Bring the positions up to ``want``, a cursor from a process that
        receives partitions this one does not (or is ahead): deliver them from
        the streams here (``deliver`` drops what the listener delivers too)."""
        try:
            if not _covers(self._heads(), want):
                return self._snapshot()  # from the future or another cluster: reset at once
            behind = [(i, p) for i, p in enumerate(list(self._positions)) if p is not None and p < want[i]]
            pipe = self.cluster().pipeline()
            for i, have in behind:
                pipe.xrange(self.partitions[i].stream, min="(" + format_event_id(have), max="+")
            for (i, _), entries in zip(behind, pipe.execute(), strict=True):
                for entry_id, fields in entries:
                    deliver_entry(self, i, entry_id, fields)
        except _Errors as e:
            raise BrokerUnavailable(f"the Redis Cluster is unreachable: {e}", retry_after=5) from e
        return self._snapshot()

    def _read_missed(self, want: list[Seq], positions: list[Seq]) -> list[tuple[int, list[t.Any]]] | None:
        """The entries of each partition after ``want`` up to ``positions``;
        ``None`` when one partition cannot prove it lost nothing."""
        pipe = self.cluster().pipeline()
        asked = []
        for p, start, end in zip(self.partitions, want, positions, strict=True):
            if start == end:
                continue
            if start == ORIGIN:
                pipe.xrange(p.stream, min="-", max=format_event_id(end))
                pipe.xinfo_stream(p.stream)
            else:
                pipe.xrange(p.stream, min=format_event_id(start), max=format_event_id(end))
            asked.append((p.index, start))
        results = iter(pipe.execute(raise_on_error=False))
        missed = []
        for index, start in asked:
            entries = next(results)
            if isinstance(entries, Exception):
                raise entries
            if start == ORIGIN:
                info = next(results)
                if isinstance(info, Exception) or not _untrimmed(info):
                    return None
            elif not entries or text(entries[0][0]) != format_event_id(start):
                return None
            else:
                entries = entries[1:]
            missed.append((index, entries))
        return missed

    # -- delivery (listener threads) -------------------------------------------

    def deliver(
        self, index: int, seq: Seq, audience: Audience, target: str | None, body: bytes, late: bool = False
    ) -> None:
        """Hand one event of partition ``index`` to the hub, with the cursor
        after it; an event at or before the partition's position is a
        duplicate (a catch-up and a message), dropped - unless ``late``: one
        of a channel that was not held (see ``Reader.sync``)."""
        with self._order:
            positions = self._positions
            current = positions[index]
            if not late and current is not None and seq <= current:
                return
            positions[index] = seq if current is None or seq > current else current
            self._counter += 1
            known = [p or ORIGIN for p in positions]
            envelope = Envelope((self._counter, 0), audience, target, frame(body, encode_cursor(known)))
            envelope.at = seq[0] / 1000
            self.hub.deliver(envelope)

    def position(self, index: int) -> Seq | None:
        return self._positions[index]

    def set_position(self, index: int, seq: Seq) -> None:
        with self._order:
            self._positions[index] = seq

    def advance(self, heads: dict[int, Seq]) -> None:
        """Move positions up to ``heads``: every event up to them that this
        process needs was delivered (see ``Reader.advance``)."""
        with self._order:
            for index, head in heads.items():
                current = self._positions[index]
                if current is not None and head > current:
                    self._positions[index] = head

    def on_gap(self, index: int) -> None:
        logger.error(
            "events of partition %d published while its Redis Cluster listener was away were already "
            "trimmed; ending local streams so their clients resume (and are reset)",
            index,
        )
        self.hub.disconnect_all()

    # -- routing and backplane -------------------------------------------------

    def debug_state(self) -> dict[str, t.Any]:
        wanted = self._channels.wanted()
        return {
            "positions": [format_event_id(p) if p else None for p in self._positions],
            "delivered": self._counter,
            "received": self._channels.received,
            "channels": sorted(c.decode() for c in wanted if not is_pattern_key(c)),
            "readers": [[p.index for p in r.partitions] for r in self._readers],
        }


def _covers(positions: list[Seq], want: list[Seq]) -> bool:
    return all(have >= need for have, need in zip(positions, want, strict=True))


def _error(what: str, error: BaseException) -> BackendError:
    return BackendError(f"Redis Cluster backend: {what}: {error}")
