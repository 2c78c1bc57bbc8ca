"""The Redis backend: one event stream shared by every worker and host.

Selected by ``SSEConfig(redis_url=...)`` (``SSE_REDIS_URL``). The keys it
writes are listed in ``_redis_keys.py``: a capped Redis Stream holds the
history, and each event is ``PUBLISH``\\ ed on the channel of its audience
(broadcast, topic or client id) by the same Lua script that ``XADD``\\ s it,
so messages reach every connection in id order. Control messages (subscribe,
unsubscribe, disconnect of a client id) travel on the client's channel.

Each process holds one pub/sub connection, read by one listener thread (a
greenlet under gevent; ``_redis_listener.py``), whatever the number of
clients it serves, subscribed only to the channels it has local recipients
for (``_redis_channels.py``), and a small blocking pool for commands. Data
flows one way: ``publish`` runs the script, and the listener of every process
that needs the event - the publisher's own included - hands it to its hub, so
all processes deliver in the same order. Presence and sessions
(``_redis_presence.py``, written in batches) let any process answer for the
cluster.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import typing as t

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import BackendError, BrokerUnavailable, ClientNotFound, TooManyTopics
from ._redis_keys import ORIGIN, PUBLISH_SCRIPT, RedisKeys, encode_control, entry_envelope
from ._redis_listener import RedisListener
from ._redis_presence import RedisPresence
from .base import Audience, Backend, Replay, logger

if t.TYPE_CHECKING:
    from .._connection import SSEClient
    from .._hub import Hub

__all__ = ["ORIGIN", "RedisBackend"]


class RedisBackend(Backend):
    """Carries every broker operation between processes through Redis.

    Why a stream *and* pub/sub: pub/sub is the low-latency fan-out but keeps
    nothing, so a listener that was disconnected for a moment, or a client that
    reconnects to another process, would miss events; the stream keeps them.

    What can go wrong: while Redis is unreachable, publishing raises
    :exc:`BackendError` within ``socket_timeout`` (at once when the connection
    is refused), opening a stream answers 503, and open streams stay open on
    heartbeats while the listener reconnects with backoff. If the listener was
    away so long that events it never delivered were trimmed from the stream,
    it ends its local streams, so their clients resume and are told ``reset``.

    :param url: a ``redis://`` (or ``rediss://``, ``unix://``) URL; query
        options such as ``socket_timeout`` override the defaults below.
    :param history_size: events kept for replay. The stream is trimmed with
        ``MAXLEN ~``, so Redis keeps *at least* that many (it trims whole
        internal nodes, up to about 100 entries more), which is cheaper than
        exact trimming and never keeps fewer.
    :param prefix: prefix of every key and of the channel.
    """

    #: Seconds to wait for a reply from Redis before the operation fails.
    socket_timeout = 2.0
    #: Seconds to wait for a new connection to Redis.
    connect_timeout = 1.0
    #: Connections in the command pool; callers beyond it wait their turn.
    pool_size = 8
    #: Seconds a command waits for a free connection of the pool. A storm of
    #: reconnects queues here rather than failing; an operation still fails
    #: fast when Redis itself is unreachable (a refused or timed-out connect).
    pool_timeout = 20.0
    #: Seconds the listener waits for a message before looking at its clock
    #: (and at whether it should stop).
    poll_interval = 0.5
    #: Seconds between the listener's pings and presence refreshes.
    refresh_interval = 5.0
    #: A process's presence expires after this many refresh intervals of silence.
    presence_lifetime = 3
    #: First and largest ceiling of the listener's delay between reconnection
    #: attempts (equal jitter: each delay is drawn from half the ceiling to it).
    min_backoff = 0.1
    max_backoff = 5.0

    def __init__(self, url: str, history_size: int = 1000, prefix: str = "flask_sse") -> None:
        self.url = url
        self.history_size = history_size
        self.prefix = prefix
        self._keys = RedisKeys(prefix)
        self._init_process()

    def _init_process(self) -> None:
        """State of one process: a forked child calls this again."""
        self.node = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._pool = self._make_pool(self.pool_size, self.pool_timeout)
        self._redis = redis.Redis(connection_pool=self._pool)
        #: The pub/sub connection's own pool, so it never takes a command slot.
        self._pubsub_pool = self._make_pool(1, self.socket_timeout + self.connect_timeout, protocol=2)
        self._publish_script = self._redis.register_script(PUBLISH_SCRIPT)
        self._presence = RedisPresence(self._redis, self._keys, self.node, self)
        # The listener's own commands (catch-up, settles) never queue behind
        # a storm of requests for the pool: one connection of its own.
        self._listener_pool = self._make_pool(1, self.socket_timeout + self.connect_timeout)
        self._listener = RedisListener(
            redis.Redis(connection_pool=self._listener_pool),
            self._pubsub_pool,
            self._keys,
            self,
            on_event=self._on_event,
            on_control=self._apply_control,
            on_tick=self._presence.refresh,
            on_gap=self._end_local_streams,
        )
        if hasattr(self, "hub"):
            self._presence.hub = self.hub
        #: Topics and client ids whose channel this process holds, and what
        #: serialises changing them (taken before the hub's lock, never inside).
        self._routed_topics: set[str] = set()
        self._routed_clients: set[str] = set()
        self._route_lock = threading.Lock()

    def _make_pool(self, size: int, wait: float, **options: t.Any) -> redis.BlockingConnectionPool:
        return redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=size,
            timeout=wait,
            **options,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            # A timed-out publish may have run: never retry it blindly.
            retry=Retry(NoBackoff(), 0),
            client_name=f"{self.prefix}:{self.node}",
        )

    # -- lifecycle -----------------------------------------------------------

    def bind(self, hub: Hub) -> None:
        super().bind(hub)
        self._presence.hub = hub

    def start(self) -> None:
        """Start the listener and wait (briefly) until it is subscribed, so the
        first stream's replay and live events leave no gap between them."""
        self._listener.start()

    def close(self) -> None:
        self._listener.stop()
        self._presence.stop()
        if self._listener.ready.is_set() or self._presence.has_pending:
            self._presence.forget_process()
        self._pool.disconnect()
        self._listener_pool.disconnect()
        self._pubsub_pool.disconnect()

    def reset_after_fork(self) -> None:
        # The parent's sockets and listener thread are not this process's.
        self._listener.channels.close()
        self._init_process()

    # -- history -------------------------------------------------------------

    def publish(self, audience: Audience, target: str | None, body: bytes) -> int:
        """Append the event to the stream and publish it; every listener,
        this process's included, delivers it.

        :returns: the local connections the event is for at publish time (it
            is queued for them by the listener a moment later).
        :raises BackendError: Redis did not take the event.
        """
        if self.history_size:
            maxlen, how = self.history_size + 1, "~"  # +1: see replay()
        else:
            maxlen, how = 0, "="
        try:
            self._publish_script(
                keys=[self._keys.stream, self._keys.last],
                args=[self._keys.channel(audience, target), maxlen, audience.value, target or "", body, how],
            )
        except redis.RedisError as e:
            raise _error("publishing the event failed", e) from e
        return self.hub.recipient_count(audience, target)

    def last_event_id(self) -> str | None:
        try:
            value = self._redis.get(self._keys.last)
        except redis.RedisError as e:
            raise _error("reading the last event id failed", e) from e
        return value.decode() if value is not None else ORIGIN

    def replay(self, cursor: str | None) -> Replay:
        """The stream after ``cursor``. The cursor's own entry must still be in
        the stream (the stream keeps one entry more than ``history_size`` for
        that), else the gap cannot be proven empty and the client gets reset.
        """
        # Events newer than where the listener started reach the connection
        # live; wait until that start is known, so replay covers the rest.
        if self._listener.running:
            self._listener.wait_ready()
            if cursor is None:
                # A new client starts where the listener is: no round trip, so
                # a storm of new clients costs Redis nothing here.
                position = self._listener.position()
                if position is not None:
                    return Replay(cursor=position)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.last)
                if cursor is not None:
                    pipe.xrange(self._keys.stream, min=cursor, max="+")
                results = pipe.execute()
        except redis.RedisError as e:
            raise BrokerUnavailable(f"Redis is unreachable: {e}", retry_after=5) from e
        head = results[0].decode() if results[0] is not None else ORIGIN
        if cursor is None or cursor == head:
            return Replay(cursor=head)  # nothing missed, even with no history
        entries = results[1]
        if cursor == ORIGIN and entries and self._nothing_trimmed(len(entries)):
            # A page rendered before the first event: the whole stream is news.
            return Replay(envelopes=[entry_envelope(i, fields) for i, fields in entries], cursor=cursor)
        if not entries or entries[0][0].decode() != cursor:
            # Trimmed, from a Redis that lost its data, from the future or
            # from another broker altogether.
            return Replay(reset=True, cursor=head)
        return Replay(envelopes=[entry_envelope(i, fields) for i, fields in entries[1:]], cursor=cursor)

    def _nothing_trimmed(self, length: int) -> bool:
        """Whether the stream still holds every event ever added (Redis 7+)."""
        try:
            info = self._redis.xinfo_stream(self._keys.stream)
        except redis.RedisError:
            return False
        return bool(info.get("entries-added") == length)

    def _on_event(self, envelope: t.Any) -> None:
        self.hub.deliver(envelope)

    def _end_local_streams(self) -> None:
        self.hub.disconnect_all()

    # -- backplane -----------------------------------------------------------

    def subscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self._change_topics("subscribe", client_id, topics)

    def unsubscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self._change_topics("unsubscribe", client_id, topics)

    def _change_topics(self, op: str, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        """Apply here at once, tell the other processes, update a remembered
        session; return the client's topics as far as this process can tell."""
        hub = self.hub
        local = hub.is_connected(client_id)
        current = hub.topics_of(client_id, sessions=True)
        live_elsewhere = False
        if current is None:
            found = self._presence.cluster_topics(client_id)
            if found is None:
                raise ClientNotFound(client_id)
            current, live_elsewhere = found
        updated = current | frozenset(topics) if op == "subscribe" else current - frozenset(topics)
        hub.check_topic_count(updated)
        # Every process holding the client live holds its channel; a client
        # live nowhere may still be remembered by some process: tell them all.
        self._publish_control(op, client_id, topics, to_all=not (local or live_elsewhere))
        try:
            change = hub.subscribe if op == "subscribe" else hub.unsubscribe
            now = change(client_id, topics)
        except ClientNotFound:
            now = updated
        # A client here gets the events published once this returns.
        self._wait_live(self._route(client_id, topics))
        self._presence.update_session(client_id, now)
        if local:
            self._presence.write(client_id)
        return now

    def disconnect(self, client_id: str) -> int:
        # Every process: the ones holding it, and the ones remembering it.
        self._publish_control("disconnect", client_id, to_all=True)
        return self.hub.disconnect(client_id)

    def _publish_control(
        self, op: str, client_id: str, topics: t.Collection[str] = (), *, to_all: bool = False
    ) -> None:
        channel = self._keys.all if to_all else self._keys.client(client_id)
        try:
            self._redis.publish(channel, encode_control(op, client_id, topics, self.node))
        except redis.RedisError as e:
            raise _error(f"{op} of client {client_id!r} failed", e) from e

    def debug_state(self) -> dict[str, t.Any]:
        """The channels held and how many messages the listener received."""
        channels = self._listener.channels
        return {
            "channels": sorted(c.decode() for c in channels.wanted()),
            "received": channels.received,
            "position": self._listener.position(),
        }

    # -- routing ---------------------------------------------------------------

    def prepare(self, client: SSEClient, *, new_client: bool = False) -> None:
        """Hold the channels of ``client`` and its topics, and wait until they
        are live, so the stream's starting id (read next, in :meth:`replay`)
        is one after which nothing for it can be missed. Usually nothing to
        wait for: a topic another local client holds is live already.

        :raises BrokerUnavailable: Redis did not confirm in time.
        """
        self._wait_live(self._route(client.id, client.topics, new_client=new_client))

    def _wait_live(self, waits: list[threading.Event]) -> None:
        """Wait until the channels went live (if the listener runs). A busy
        process (a storm) may take seconds to read the confirmations: wait as
        long as for a pool connection, but give up at once when the listener
        has lost Redis.

        :raises BrokerUnavailable: Redis is unreachable, or did not confirm
            within ``pool_timeout``.
        """
        if not waits or not self._listener.running:
            return
        deadline = time.monotonic() + self.pool_timeout
        for event in waits:
            while not event.wait(0.25):
                if self._listener.failing:
                    raise BrokerUnavailable(
                        "Redis is unreachable (the listener is reconnecting)", retry_after=5
                    )
                if time.monotonic() > deadline:
                    raise BrokerUnavailable("Redis did not confirm a subscription in time", retry_after=5)

    def _route(
        self, client_id: str, topics: t.Iterable[str] = (), *, new_client: bool = False
    ) -> list[threading.Event]:
        """Make the channels of ``client_id`` and ``topics`` match the hub now:
        held while the client is connected here / a local connection holds
        the topic. Returns what to wait for before a stream may start."""
        hub = self.hub
        keys = self._keys
        with self._route_lock:
            drop: list[bytes] = []
            here = hub.is_connected(client_id)
            if here:
                self._routed_clients.add(client_id)
            elif client_id in self._routed_clients:
                self._routed_clients.discard(client_id)
                drop.append(keys.client(client_id).encode())
            for topic in topics:
                if hub.recipient_count(Audience.TOPIC, topic) > 0:
                    self._routed_topics.add(topic)
                elif topic in self._routed_topics:
                    self._routed_topics.discard(topic)
                    drop.append(keys.topic(topic).encode())
            channels = self._listener.channels
            if drop:
                channels.drop(drop)
            if not here:
                return []
            # Also wait for channels another request asked for and that are
            # not live yet: this stream needs them as much.
            own = keys.client(client_id).encode()
            needed = [own] + [keys.topic(topic).encode() for topic in topics if topic in self._routed_topics]
            return channels.want(needed, unheard=(own,) if new_client else ())

    def _apply_control(self, message: dict[str, t.Any]) -> None:
        """A control message from another process (the listener thread)."""
        if message.get("node") == self.node:
            return  # applied locally when it was sent
        client_id = message["client"]
        op = message["op"]
        hub = self.hub
        try:
            if op == "subscribe":
                hub.subscribe(client_id, message["topics"])
                self._listener.sync(self._route(client_id, message["topics"]))
            elif op == "unsubscribe":
                hub.unsubscribe(client_id, message["topics"])
                self._route(client_id, message["topics"])
            elif op == "disconnect":
                hub.disconnect(client_id)
                return
        except ClientNotFound:
            return  # the client lives elsewhere
        except TooManyTopics as e:
            logger.warning("subscribe of client %r refused here: %s", client_id, e)
            return
        self._presence.changed(client_id)

    # -- presence ------------------------------------------------------------

    def client_opened(self, client: SSEClient) -> None:
        self._presence.client_opened(client)

    def client_closed(self, client: SSEClient) -> None:
        self._route(client.id, client.topics)
        self._presence.client_closed(client)

    def recall(self, client_id: str) -> frozenset[str] | None:
        try:
            found = self._presence.cluster_topics(client_id)
        except BackendError as e:
            raise BrokerUnavailable(str(e), retry_after=5) from e.__cause__
        return found[0] if found is not None else None

    def is_connected(self, client_id: str) -> bool:
        return self._presence.is_connected(client_id)

    def client_count(self) -> int:
        return len(self._presence.cluster_clients())

    def clients_by_topic(self, topic: str) -> list[str]:
        return sorted(cid for cid, topics in self._presence.cluster_clients().items() if topic in topics)


def _error(what: str, error: Exception) -> BackendError:
    return BackendError(f"Redis backend: {what}: {error}")
