"""The Redis backend: one event stream shared by every worker and host.

Selected by ``SSEConfig(redis_url=...)`` (``SSE_REDIS_URL``). The keys it
writes are listed in ``_redis_keys.py``: a capped Redis Stream holds the
history, and each event is ``PUBLISH``\\ ed on the channel of its audience
(broadcast, topic or client id) by the same Lua script that ``XADD``\\ s it,
so messages reach every connection in id order. Control messages (subscribe,
unsubscribe, disconnect of a client id, revoke) travel on the client's channel,
or on the broadcast channel when every process must hear them.

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
import secrets
import socket
import typing as t

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._topics import Subscriptions, is_pattern
from .._wake import awaiting_reply, replied
from ..exceptions import BackendError, BrokerUnavailable, ClientNotFound, InvalidEventId, TooManyTopics
from ._redis_channels import is_pattern_key
from ._redis_keys import ORIGIN, PUBLISH_SCRIPT, RedisKeys, encode_control, entry_envelope, text
from ._redis_listener import RedisListener
from ._redis_presence import RedisPresence
from ._redis_publish import ScriptCaller
from ._redis_routes import Routes
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
    #: Seconds a publish's idempotency key is remembered: a publish retried
    #: with the same key within this time is stored and delivered once. Costs
    #: one small key per publish for that long (about 100 bytes).
    idempotency_ttl = 300.0
    #: Seconds to wait for a new connection to Redis.
    connect_timeout = 1.0
    #: Connections in the command pool; callers beyond it wait their turn.
    pool_size = 8
    #: Connections the publish script runs on besides the pool (no checkout
    #: per publish); publishers beyond them go through the pool.
    publish_connections = 4
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
        # The hot path: the same script on connections of its own, without
        # redis-py's per-command layers (the pool when they are all busy).
        self._publish_call = ScriptCaller(
            self._pool, PUBLISH_SCRIPT, self.publish_connections, self._publish_script
        )
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
        self._routes = Routes(self._keys, self._listener, self.pool_timeout)
        self._route = self._routes.route
        self._wait_live = self._routes.wait_live
        if hasattr(self, "hub"):
            self._presence.hub = self._routes.hub = self.hub

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
        self._presence.hub = self._routes.hub = hub

    def start(self) -> None:
        """Start the listener and wait (briefly) until it is subscribed, so the
        first stream's replay and live events leave no gap between them."""
        self._listener.start()

    def close(self) -> None:
        self._listener.stop()
        self._presence.stop()
        self._publish_call.close()
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

    def publish(
        self, audience: Audience, target: str | None, body: bytes, *, idempotency_key: str | None = None
    ) -> int:
        """Append the event to the stream and publish it; every listener,
        this process's included, delivers it.

        Every publish carries an idempotency key (``idempotency_key``, or a
        random one), checked inside the script: a publish whose key already
        names a stored event stores and publishes nothing.

        :returns: the local connections the event is for at publish time (it
            is queued for them by the listener a moment later).
        :raises BackendError: Redis did not answer or refused; the event may
            have been stored. Its ``idempotency_key`` makes a retry safe.
        """
        key = idempotency_key or secrets.token_urlsafe(16)
        script_args = self._script_args(audience, target, body, key)
        batch = awaiting_reply()
        try:
            try:
                self._publish_call(**script_args)
            except redis.ConnectionError:
                # Most often a pooled connection that died with a Redis restart:
                # once more on a fresh one, safe under the same key. Not after
                # a timeout: a hung Redis would only make the publisher wait
                # twice as long.
                self._publish_call(**script_args)
        except redis.RedisError as e:
            error = _error("publishing the event failed", e)
            error.idempotency_key = key
            raise error from e
        finally:
            replied(batch)
        return self.hub.recipient_count(audience, target)

    def publish_batch(self, items: t.Sequence[tuple[Audience, str | None, bytes]]) -> list[tuple[str, int]]:
        """Publish every item in one round trip, as one ``MULTI``/``EXEC``
        transaction: the batch is in the stream, contiguous and in order, or
        (Redis refused or unreachable) none of it is.

        :raises BackendError: Redis did not take the batch.
        """
        try:
            pipe = self._redis.pipeline(transaction=True)
            for audience, target, body in items:
                script_args = self._script_args(audience, target, body, secrets.token_urlsafe(16))
                self._publish_script(**script_args, client=pipe)
            ids = pipe.execute()
        except redis.RedisError as e:
            raise _error("publishing the events failed", e) from e
        return [
            (text(event_id), self.hub.recipient_count(audience, target))
            for event_id, (audience, target, _) in zip(ids, items, strict=True)
        ]

    def _script_args(
        self, audience: Audience, target: str | None, body: bytes, idempotency_key: str
    ) -> dict[str, list[t.Any]]:
        if self.history_size:
            maxlen, how = self.history_size + 1, "~"  # +1: see replay()
        else:
            maxlen, how = 0, "="
        return {
            "keys": [self._keys.stream, self._keys.last, self._keys.published(idempotency_key)],
            "args": [
                self._keys.channel(audience, target),
                maxlen,
                audience.value,
                target or "",
                body,
                how,
                int(self.idempotency_ttl * 1000),
            ],
        }

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
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise BrokerUnavailable(f"Redis is unreachable: {e}", retry_after=5) from e
        except redis.ResponseError as e:
            # The broker checks ids to Redis's range first; should Redis still
            # refuse the cursor, that is the client's error, not an outage.
            if cursor is not None and "stream id" in str(e).lower():
                raise InvalidEventId(cursor) from e
            raise _error("reading the history failed", e) from e
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
        if current is None:
            found = self._presence.cluster_topics(client_id)
            if found is None:
                raise ClientNotFound(client_id)
            current = found[0]
        updated = current | frozenset(topics) if op == "subscribe" else current - frozenset(topics)
        hub.check_topic_count(updated)
        # Every process: the ones holding the client live, and the ones that
        # still remember an earlier session of it in memory (a reconnect there
        # within session_ttl would otherwise get its old topics back).
        # Subscriptions change far less often than events are published.
        self._publish_control(op, client_id, topics, to_all=True)
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

    def revoke(self, topic: str, client_id: str | None) -> int:
        """Take ``topic`` out of the sessions kept in Redis, then tell every
        process (a control message, in order with the events: an event
        published after this returns reaches no connection that lost the
        topic, anywhere) and apply it here.

        Sessions first, so that a reconnect elsewhere reading its session
        after the clean-up cannot get the topic back; one reading it just
        before is normally registered by the time the control message
        reaches its process, which then revokes it there.

        The message goes on the broadcast channel even for one client, as a
        disconnect does: a process that only *remembers* the client (its
        session, not its channel) must forget the topic too.
        """
        keys = None if client_id is None else [self._keys.session(client_id)]
        self._presence.revoke_sessions(topic, keys)
        self._publish_control("revoke", client_id, (topic,), to_all=True)
        return self._revoke_here(topic, client_id)

    def _revoke_here(self, topic: str, client_id: str | None) -> int:
        """Apply a revoke to this process's hub (and its channels), and to the
        Redis copies of the sessions it changed (written by a client that
        left meanwhile)."""
        clients, sessions = self.hub.revoke(topic, client_id)
        self._route(None, (topic,))
        if sessions:
            try:
                self._presence.revoke_sessions(topic, [self._keys.session(cid) for cid in sessions])
            except BackendError as e:
                logger.warning("revoke of %r: sessions in Redis not updated: %s", topic, e)
        return len(clients)

    def _publish_control(
        self, op: str, client_id: str | None, topics: t.Collection[str] = (), *, to_all: bool = False
    ) -> None:
        channel = self._keys.all if to_all or client_id is None else self._keys.client(client_id)
        try:
            self._redis.publish(channel, encode_control(op, client_id, topics, self.node))
        except redis.RedisError as e:
            raise _error(f"{op} of client {client_id!r} failed", e) from e

    def debug_state(self) -> dict[str, t.Any]:
        """The channels held and how many messages the listener received."""
        channels = self._listener.channels
        wanted = channels.wanted()
        return {
            "channels": sorted(c.decode() for c in wanted if not is_pattern_key(c)),
            "patterns": sorted(c[1:].decode() for c in wanted if is_pattern_key(c)),
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

    def _apply_control(self, message: dict[str, t.Any]) -> None:
        """A control message from another process (the listener thread)."""
        if message.get("node") == self.node:
            return  # applied locally when it was sent
        client_id = message["client"]
        op = message["op"]
        hub = self.hub
        if op == "revoke":
            for topic in message["topics"]:
                self._revoke_here(topic, client_id)
            return
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

    def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None:
        self._presence.client_revoked(client, topics)

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
        clients = self._presence.cluster_clients().items()
        if is_pattern(topic):  # its holders as written, as in process
            return sorted(cid for cid, topics in clients if topic in topics)
        return sorted(cid for cid, topics in clients if topic in Subscriptions(topics))


def _error(what: str, error: Exception) -> BackendError:
    return BackendError(f"Redis backend: {what}: {error}")
