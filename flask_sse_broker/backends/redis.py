"""The Redis backend: one event stream shared by every worker and host.

Selected by ``SSEConfig(redis_url=...)`` (``SSE_REDIS_URL``). Redis holds:

``<prefix>:stream``
    The history, a Redis Stream capped at about ``history_size`` entries. Its
    entry ids are the event ids, so every process assigns ids from one sequence.
``<prefix>:last``
    The newest event id (the stream may be trimmed to nothing).
``<prefix>:bus``
    The pub/sub channel. Every event is ``PUBLISH``\\ ed by the same Lua script
    that ``XADD``\\ s it, so channel order is id order; the control messages
    (subscribe, unsubscribe, disconnect of a client id) travel on it too.
``<prefix>:node:<node id>``
    Presence: a hash of the client ids connected to one process, each with its
    topics, expiring unless the process refreshes it. ``<prefix>:nodes`` is a
    sorted set of the processes, scored by when their presence expires.
``<prefix>:session:<client id>``
    The topics of a client id whose last connection ended, for ``session_ttl``
    seconds, so a reconnect to *any* process gets its subscriptions back.

Each process holds one pub/sub connection, read by one listener thread (a
greenlet under gevent), whatever the number of clients it serves, and a small
blocking pool for commands. Data flows one way: ``publish`` runs the script,
and the listener of every process - the publisher's own included - hands the
event to :meth:`SSEBroker._deliver`, so all processes deliver all events in
the same order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import typing as t

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import signals
from ..event import frame, parse_event_id
from ..exceptions import BackendError, BrokerUnavailable, ClientNotFound, TooManyTopics
from .base import ALL, TOPIC, Backend, Envelope, Replay

if t.TYPE_CHECKING:
    from .._broker import SSEBroker, SSEClient

logger = logging.getLogger("flask_sse_broker")

#: XADD and PUBLISH in one atomic step, so the channel carries events in id
#: order. The message is ``E <id> <kind> <target length> <target><body>``.
_PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], ARGV[2], '*',
                      'k', ARGV[3], 't', ARGV[4], 'b', ARGV[5])
redis.call('SET', KEYS[2], id)
redis.call('PUBLISH', ARGV[1],
           'E ' .. id .. ' ' .. ARGV[3] .. ' ' .. string.len(ARGV[4]) .. ' ' .. ARGV[4] .. ARGV[5])
return id
"""

_Key = tuple[int, int]

#: The cursor before the first event, returned by ``last_event_id`` while the
#: stream is empty, so a page can connect from it and miss nothing.
ORIGIN = "0-0"


class RedisBackend(Backend):
    """Carries every broker operation between processes through Redis.

    Why a stream *and* pub/sub: pub/sub is the low-latency fan-out but keeps
    nothing, so a listener that was disconnected for a moment, or a client that
    reconnects to another process, would miss events; the stream keeps them.
    The listener remembers the last id it delivered and, each time it
    (re)subscribes, first delivers what the stream holds after it, so a Redis
    blip loses nothing that Redis kept.

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
    #: Seconds the listener waits for a message before looking at its clock
    #: (and at whether it should stop).
    poll_interval = 0.5
    #: Seconds between the listener's pings and presence refreshes.
    refresh_interval = 5.0
    #: A process's presence expires after this many refresh intervals of silence.
    presence_lifetime = 3
    #: First and largest delay between the listener's reconnection attempts.
    min_backoff = 0.1
    max_backoff = 5.0

    def __init__(self, url: str, history_size: int = 1000, prefix: str = "flask_sse") -> None:
        self.url = url
        self.history_size = history_size
        self.prefix = prefix
        self._stream_key = f"{prefix}:stream"
        self._last_key = f"{prefix}:last"
        self._channel = f"{prefix}:bus"
        self._nodes_key = f"{prefix}:nodes"
        self._init_process()

    def _init_process(self) -> None:
        """State of one process: a forked child calls this again."""
        self.node = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._node_key = f"{self.prefix}:node:{self.node}"
        self._pool = self._make_pool(self.pool_size)
        self._redis = redis.Redis(connection_pool=self._pool)
        #: The pub/sub connection's own pool, so it never takes a command slot.
        self._pubsub_pool = self._make_pool(1)
        self._publish_script = self._redis.register_script(_PUBLISH_SCRIPT)
        #: Set once the listener is subscribed and knows where it starts.
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        #: The key of the newest event the listener delivered; only the
        #: listener thread writes it.
        self._delivered: _Key | None = None
        #: Serialises presence writes, so a write always reflects the broker's
        #: state at the time it is made (never held together with the broker's).
        self._presence_lock = threading.Lock()
        #: Sessions of clients ended by shutdown, written in one go by close().
        self._pending_sessions: list[tuple[str, frozenset[str]]] = []

    def _make_pool(self, size: int) -> redis.BlockingConnectionPool:
        return redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=size,
            timeout=self.socket_timeout + self.connect_timeout,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            # A timed-out publish may have run: never retry it blindly.
            retry=Retry(NoBackoff(), 0),
            client_name=f"{self.prefix}:{self.node}",
        )

    # -- lifecycle -----------------------------------------------------------

    def bind(self, broker: SSEBroker) -> None:
        super().bind(broker)
        # Presence and sessions follow the broker's client-level signals, which
        # it sends outside its lock for every client that appears or goes away.
        signals.client_connected.connect(self._on_client_connected, sender=broker, weak=False)
        signals.client_disconnected.connect(self._on_client_disconnected, sender=broker, weak=False)

    def start(self) -> None:
        """Start the listener and wait (briefly) until it is subscribed, so the
        first stream's replay and live events leave no gap between them."""
        if self._listener is not None:
            return
        self._stop.clear()
        self._listener = threading.Thread(target=self._listen, name="sse-redis-listener", daemon=True)
        self._listener.start()
        self._ready.wait(self.socket_timeout + self.connect_timeout)

    def close(self) -> None:
        self._stop.set()
        listener, self._listener = self._listener, None
        if listener is not None and listener is not threading.current_thread():
            listener.join(self.poll_interval + 2 * self.socket_timeout)
        if self._ready.is_set() or self._pending_sessions:
            self._forget_process()
        self._pool.disconnect()
        self._pubsub_pool.disconnect()

    def _forget_process(self) -> None:
        """Write the sessions ended by shutdown; remove this process's presence."""
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                ttl = self._session_ttl_ms()
                for client_id, topics in self._pending_sessions:
                    if ttl and topics:
                        pipe.set(self._session_key(client_id), _dump_topics(topics), px=ttl)
                pipe.delete(self._node_key)
                pipe.zrem(self._nodes_key, self.node)
                pipe.execute()
        except redis.RedisError as e:
            logger.warning("could not remove this process's presence from Redis: %s", e)
        self._pending_sessions.clear()

    def reset_after_fork(self) -> None:
        # The parent's sockets and listener thread are not this process's.
        self._init_process()

    # -- publishing ----------------------------------------------------------

    def publish(self, kind: str, target: str | None, body: bytes) -> int:
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
                keys=[self._stream_key, self._last_key],
                args=[self._channel, maxlen, kind, target or "", body, how],
            )
        except redis.RedisError as e:
            raise self._error("publishing the event failed", e) from e
        return self._local_recipients(kind, target)

    def _local_recipients(self, kind: str, target: str | None) -> int:
        broker = self.broker
        with broker._lock:
            if kind == ALL:
                return len(broker._connections)
            if kind == TOPIC:
                return len(broker._topics.get(target or "", ()))
            client = broker._clients.get(target or "")
            return len(client._connections) if client is not None else 0

    def _publish_control(self, op: str, client_id: str, topics: t.Collection[str] = ()) -> None:
        message = json.dumps({"op": op, "client": client_id, "topics": sorted(topics), "node": self.node})
        try:
            self._redis.publish(self._channel, b"C " + message.encode())
        except redis.RedisError as e:
            raise self._error(f"{op} of client {client_id!r} failed", e) from e

    # -- replay --------------------------------------------------------------

    def last_event_id(self) -> str | None:
        try:
            value = self._redis.get(self._last_key)
        except redis.RedisError as e:
            raise self._error("reading the last event id failed", e) from e
        return value.decode() if value is not None else ORIGIN

    def replay(self, cursor: str | None) -> Replay:
        """The stream after ``cursor``. The cursor's own entry must still be in
        the stream (the stream keeps one entry more than ``history_size`` for
        that), else the gap cannot be proven empty and the client gets reset.
        """
        # Events newer than where the listener started reach the connection
        # live; wait until that start is known, so replay covers the rest.
        if self._listener is not None:
            self._ready.wait(self.socket_timeout + self.connect_timeout)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._last_key)
                if cursor is not None:
                    pipe.xrange(self._stream_key, min=cursor, max="+")
                results = pipe.execute()
        except redis.RedisError as e:
            raise BrokerUnavailable(f"Redis is unreachable: {e}", retry_after=5) from e
        head = results[0].decode() if results[0] is not None else ORIGIN
        if cursor is None or cursor == head:
            return Replay(cursor=head)  # nothing missed, even with no history
        entries = results[1]
        if cursor == ORIGIN and entries and self._nothing_trimmed(len(entries)):
            # A page rendered before the first event: the whole stream is news.
            return Replay(envelopes=[_envelope(i, fields) for i, fields in entries], cursor=cursor)
        if not entries or entries[0][0].decode() != cursor:
            # Trimmed, from a Redis that lost its data, from the future or
            # from another broker altogether.
            return Replay(reset=True, cursor=head)
        return Replay(
            envelopes=[_envelope(entry_id, fields) for entry_id, fields in entries[1:]], cursor=cursor
        )

    def _nothing_trimmed(self, length: int) -> bool:
        """Whether the stream still holds every event ever added (Redis 7+)."""
        try:
            info = self._redis.xinfo_stream(self._stream_key)
        except redis.RedisError:
            return False
        return bool(info.get("entries-added") == length)

    # -- the listener --------------------------------------------------------

    def _listen(self) -> None:
        delay = self.min_backoff
        failing_since: float | None = None
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._subscribe()
                if failing_since is not None:
                    logger.warning(
                        "Redis listener reconnected after %.1fs; delivery resumes",
                        time.monotonic() - failing_since,
                    )
                    failing_since = None
                delay = self.min_backoff
                self._run(pubsub)
            except (redis.RedisError, OSError) as e:
                if self._stop.is_set():
                    break
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.error("Redis listener lost its connection (%s); reconnecting with backoff", e)
                else:
                    logger.info("Redis listener still cannot connect (%s); next try in %.1fs", e, delay)
                self._stop.wait(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff)
            except Exception:  # pragma: no cover - a bug must not end delivery
                logger.exception("Redis listener failed; restarting it")
                self._stop.wait(self.max_backoff)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a broken socket
                        pubsub.reset()  # type: ignore[no-untyped-call]

    def _subscribe(self) -> redis.client.PubSub:
        """Subscribe, then deliver what the stream holds that the channel did
        not carry to this process (everything after its last delivered id)."""
        if self._delivered is None:
            head = self._redis.get(self._last_key)
            self._delivered = parse_event_id(head.decode()) if head else (0, 0)
            first = True
        else:
            first = False
        pubsub = redis.client.PubSub(self._pubsub_pool, ignore_subscribe_messages=False)
        pubsub.subscribe(self._channel)
        deadline = time.monotonic() + self.socket_timeout + self.connect_timeout
        while True:
            message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message["type"] == "subscribe":
                break
            if time.monotonic() > deadline:
                raise redis.TimeoutError("no subscription confirmation from Redis")
        self._catch_up(first)
        self._ready.set()
        self._refresh_presence()
        return pubsub

    def _catch_up(self, first: bool) -> None:
        assert self._delivered is not None
        start = "{}-{}".format(*self._delivered)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._last_key)
            pipe.xrange(self._stream_key, min="(" + start, max="+")
            if not first:
                pipe.xinfo_stream(self._stream_key)
            results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, redis.ConnectionError):
                raise result
        if isinstance(results[1], Exception):
            raise results[1]
        if first or isinstance(results[2], redis.ResponseError):  # XINFO: no stream yet
            results[2:] = [None]
        head = parse_event_id(results[0].decode()) if results[0] else None
        if head is None or head < self._delivered:
            if self._delivered != (0, 0):
                # A Redis restarted without its data: ids start over from its
                # clock. Nothing newer was missed; follow the new sequence.
                logger.warning("Redis lost the event history; resuming from %s", head)
            self._delivered = head or (0, 0)
            return
        if results[2] is not None:
            deleted = parse_event_id(_text(results[2].get("max-deleted-entry-id", "0-0")))
            if deleted is not None and deleted > self._delivered:
                logger.error(
                    "events published while the Redis listener was away were already trimmed from "
                    "the history; ending local streams so their clients resume (and are reset)"
                )
                self._delivered = head
                self._end_local_streams()
                return
        for entry_id, fields in results[1]:
            self._deliver(_envelope(entry_id, fields))

    def _run(self, pubsub: redis.client.PubSub) -> None:
        last_seen = next_refresh = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=self.poll_interval)
            now = time.monotonic()
            if message is not None:
                last_seen = now
                if message["type"] == "message":
                    try:
                        self._handle(message["data"])
                    except (ValueError, KeyError, TypeError) as e:
                        logger.warning(
                            "ignored a malformed message on %s: %r (%s)", self._channel, message, e
                        )
            if now >= next_refresh:
                if now - last_seen > self.refresh_interval * 2 + self.socket_timeout:
                    raise redis.ConnectionError("Redis stopped answering the listener's pings")
                pubsub.ping()
                self._refresh_presence()
                next_refresh = now + self.refresh_interval

    def _handle(self, data: bytes) -> None:
        if data[:2] == b"E ":
            _, raw_id, kind, length, rest = data.split(b" ", 4)
            size = int(length)
            event_id = raw_id.decode()
            target = rest[:size].decode() if kind != b"all" else None
            envelope = Envelope(
                event_id, parse_event_id(event_id), kind.decode(), target, frame(rest[size:], event_id)
            )
            self._deliver(envelope)
        elif data[:2] == b"C ":
            self._apply_control(json.loads(data[2:]))

    def _deliver(self, envelope: Envelope) -> None:
        key = envelope.key
        assert key is not None and self._delivered is not None
        if key <= self._delivered:
            return  # already delivered by a catch-up
        self._delivered = key
        self.broker._deliver(envelope)

    def _apply_control(self, message: dict[str, t.Any]) -> None:
        if message.get("node") == self.node:
            return  # applied locally when it was sent
        client_id = message["client"]
        op = message["op"]
        try:
            if op == "subscribe":
                self.broker._subscribe_local(client_id, message["topics"])
            elif op == "unsubscribe":
                self.broker._unsubscribe_local(client_id, message["topics"])
            elif op == "disconnect":
                self.broker._disconnect_local(client_id)
                return
        except ClientNotFound:
            return  # the client lives elsewhere
        except TooManyTopics as e:
            logger.warning("subscribe of client %r refused here: %s", client_id, e)
            return
        self._write_presence(client_id)

    def _end_local_streams(self) -> None:
        with self.broker._lock:
            client_ids = list(self.broker._clients)
        for client_id in client_ids:
            self.broker._disconnect_local(client_id)

    # -- clients across processes ---------------------------------------------

    def subscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self._change_topics("subscribe", client_id, topics)

    def unsubscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self._change_topics("unsubscribe", client_id, topics)

    def _change_topics(self, op: str, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        """Apply here at once, tell the other processes, update a remembered
        session; return the client's topics as far as this process can tell."""
        broker = self.broker
        local = broker.get_client(client_id)
        if local is not None:
            current = local.topics
        else:
            with broker._lock:
                session = broker._sessions.get(client_id)
            known = session[0] if session is not None else self._cluster_topics(client_id)
            if known is None:
                raise ClientNotFound(client_id)
            current = known
        updated = current | frozenset(topics) if op == "subscribe" else current - frozenset(topics)
        broker._check_topic_count(updated)
        self._publish_control(op, client_id, topics)
        try:
            if op == "subscribe":
                now = broker._subscribe_local(client_id, topics)
            else:
                now = broker._unsubscribe_local(client_id, topics)
        except ClientNotFound:
            now = updated
        self._update_session(client_id, now)
        if local is not None:
            self._write_presence(client_id)
        return now

    def disconnect(self, client_id: str) -> int:
        self._publish_control("disconnect", client_id)
        return self.broker._disconnect_local(client_id)

    def _cluster_topics(self, client_id: str) -> frozenset[str] | None:
        """The client's topics from its session or the processes holding it;
        ``None`` when no process knows it."""
        try:
            nodes = self._live_nodes(exclude_self=True)
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._session_key(client_id))
                for node in nodes:
                    pipe.hget(f"{self.prefix}:node:{node}", client_id)
                results = pipe.execute()
        except redis.RedisError as e:
            raise self._error(f"looking up client {client_id!r} failed", e) from e
        found = [json.loads(value) for value in results if value is not None]
        if not found:
            return None
        return frozenset(topic for topics in found for topic in topics)

    def _update_session(self, client_id: str, topics: frozenset[str]) -> None:
        try:
            if topics:
                self._redis.set(self._session_key(client_id), _dump_topics(topics), xx=True, keepttl=True)
            else:
                self._redis.delete(self._session_key(client_id))
        except redis.RedisError as e:
            logger.warning("could not update the session of client %r in Redis: %s", client_id, e)

    def remember(self, client_id: str, topics: frozenset[str]) -> None:
        ttl = self._session_ttl_ms()
        if not ttl or not topics:
            return
        try:
            self._redis.set(self._session_key(client_id), _dump_topics(topics), px=ttl)
        except redis.RedisError as e:
            logger.warning("could not remember the topics of client %r in Redis: %s", client_id, e)

    def recall(self, client_id: str) -> frozenset[str] | None:
        try:
            return self._cluster_topics(client_id)
        except BackendError as e:
            raise BrokerUnavailable(str(e), retry_after=5) from e.__cause__

    def _session_key(self, client_id: str) -> str:
        return f"{self.prefix}:session:{client_id}"

    def _session_ttl_ms(self) -> int:
        return int(self.broker.config.session_ttl * 1000)

    # -- presence ------------------------------------------------------------

    def _on_client_connected(self, broker: SSEBroker, client: SSEClient, **_: t.Any) -> None:
        if broker.backend is not self:
            return
        self._write_presence(client.id, forget_session=True)

    def _on_client_disconnected(self, broker: SSEBroker, client: SSEClient, **_: t.Any) -> None:
        if broker.backend is not self:
            return
        if broker.closing:
            # Shutdown ends every stream at once: write them all in close().
            self._pending_sessions.append((client.id, client.topics))
            return
        self._write_presence(client.id)
        if broker.get_client(client.id) is None:
            self.remember(client.id, client.topics)

    def _write_presence(self, client_id: str, forget_session: bool = False) -> None:
        """Make this process's presence entry for ``client_id`` match the
        broker's state now. Never raises: the periodic refresh repairs it."""
        try:
            with self._presence_lock:
                client = self.broker.get_client(client_id)
                with self._redis.pipeline(transaction=False) as pipe:
                    if client is None:
                        pipe.hdel(self._node_key, client_id)
                    else:
                        pipe.hset(self._node_key, client_id, _dump_topics(client.topics))
                        pipe.pexpire(self._node_key, self._presence_ttl_ms())
                        pipe.zadd(self._nodes_key, {self.node: time.time() + self._presence_ttl_ms() / 1000})
                    if forget_session:
                        pipe.delete(self._session_key(client_id))
                    pipe.execute()
        except redis.RedisError as e:
            logger.debug("presence of client %r not written: %s", client_id, e)

    def _refresh_presence(self) -> None:
        """Rewrite this process's presence from the broker's registry (cost:
        one write of every local client id every ``refresh_interval``)."""
        broker = self.broker
        ttl = self._presence_ttl_ms()
        try:
            with self._presence_lock:
                with broker._lock:
                    snapshot = {cid: _dump_topics(c._topics) for cid, c in broker._clients.items()}
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self._node_key)
                    if snapshot:
                        pipe.hset(self._node_key, mapping=snapshot)  # type: ignore[arg-type]
                        pipe.pexpire(self._node_key, ttl)
                    now = time.time()
                    pipe.zadd(self._nodes_key, {self.node: now + ttl / 1000})
                    pipe.zremrangebyscore(self._nodes_key, "-inf", now)
                    pipe.execute()
        except redis.RedisError as e:
            logger.debug("presence not refreshed: %s", e)

    def _presence_ttl_ms(self) -> int:
        return int(self.refresh_interval * self.presence_lifetime * 1000)

    def _live_nodes(self, exclude_self: bool = False) -> list[str]:
        nodes = self._redis.zrangebyscore(self._nodes_key, time.time(), "+inf")
        names = [_text(node) for node in nodes]
        return [n for n in names if n != self.node] if exclude_self else names

    def _cluster_clients(self) -> dict[str, set[str]]:
        """Client id -> topics of every client connected anywhere; one Redis
        read of every process's presence (O(clients in the cluster))."""
        broker = self.broker
        with broker._lock:
            result = {cid: set(c._topics) for cid, c in broker._clients.items()}
        try:
            nodes = self._live_nodes(exclude_self=True)
            with self._redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hgetall(f"{self.prefix}:node:{node}")
                hashes = pipe.execute()
        except redis.RedisError as e:
            raise self._error("reading cluster presence failed", e) from e
        for mapping in hashes:
            for cid, topics in mapping.items():
                result.setdefault(_text(cid), set()).update(json.loads(topics))
        return result

    def is_connected(self, client_id: str) -> bool:
        """Local first; else one ``HEXISTS`` per other live process."""
        if self.broker._is_connected_local(client_id):
            return True
        try:
            nodes = self._live_nodes(exclude_self=True)
            with self._redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hexists(f"{self.prefix}:node:{node}", client_id)
                return any(pipe.execute())
        except redis.RedisError as e:
            raise self._error("reading cluster presence failed", e) from e

    def client_count(self) -> int:
        return len(self._cluster_clients())

    def clients_by_topic(self, topic: str) -> list[str]:
        return sorted(cid for cid, topics in self._cluster_clients().items() if topic in topics)

    # -- helpers -------------------------------------------------------------

    def _error(self, what: str, error: Exception) -> BackendError:
        return BackendError(f"Redis backend: {what}: {error}")


def _envelope(entry_id: bytes, fields: dict[bytes, bytes]) -> Envelope:
    event_id = entry_id.decode()
    kind = fields[b"k"].decode()
    target = fields[b"t"].decode() if kind != ALL else None
    return Envelope(event_id, parse_event_id(event_id), kind, target, frame(fields[b"b"], event_id))


def _dump_topics(topics: t.Iterable[str]) -> str:
    return json.dumps(sorted(topics), separators=(",", ":"))


def _text(value: t.Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
