"""The backplane and presence of the Redis Cluster backend.

Control messages (subscribe, unsubscribe, disconnect, revoke) are
``SPUBLISH``\\ ed on partition 0's broadcast channel, which every process
holds; a revoke of a plain topic also goes on the topic's own channel, in
order with its events.

Presence and sessions are the single-Redis backend's
(:class:`~._redis_presence.RedisPresence`, unchanged) with every key under
one hash tag, ``{<prefix>:presence}``, so they live on one primary and its
scripts and transactions work as on one Redis; they are written through a
plain client of that primary. Their load is per connect and disconnect, not
per event, so one primary carries it. While that primary is down, presence
queries raise :exc:`BackendError`, presence writes are retried by the next
refresh, and a reconnecting client is served without its remembered topics
(it names them again, as the browser client does) rather than refused.
"""

from __future__ import annotations

import json
import typing as t

from .._topics import Subscriptions, is_pattern
from .._wire import Audience, Seq, parse_event_id
from ..exceptions import BackendError, ClientNotFound
from ._cluster_cursor import ORIGIN
from ._redis_cluster_keys import Partition, channel_of, partition_of
from ._redis_cluster_listener import ERRORS
from ._redis_keys import RedisKeys, encode_control
from ._redis_presence import RedisPresence
from .base import Backend, logger

if t.TYPE_CHECKING:
    import redis

    from .._connection import SSEClient
    from ._redis_cluster_routes import ClusterChannels
    from ._redis_routes import Routes


class ClusterBackplane(Backend):
    """Control messages and cluster-wide presence; the base of
    :class:`~._redis_cluster.RedisClusterBackend`, which provides the
    connections (:meth:`_control`, :meth:`owner`, :meth:`_node_client`)."""

    prefix: str
    node: str
    socket_timeout: float
    refresh_interval: float
    #: A process's presence expires after this many refresh intervals of silence.
    presence_lifetime = 3
    _presence: RedisPresence | None
    partitions: list[Partition]
    _routing: Routes
    _channels: ClusterChannels

    def position(self, index: int) -> Seq | None:
        raise NotImplementedError

    def cluster(self) -> t.Any:
        raise NotImplementedError

    def prepare(self, client: SSEClient, *, new_client: bool = False) -> None:
        """Hold the channels of ``client`` and its topics and wait until they
        are live and caught up (see ``_redis_cluster_listener.py``), so the
        positions :meth:`replay` reads next cover everything before them.

        :raises BrokerUnavailable: Redis did not confirm in time.
        """
        self._routing.wait_live(self._routing.route(client.id, client.topics, new_client=new_client))

    def hold_from(self, topics: t.Iterable[str], heads: dict[str, str]) -> None:
        """Before a subscribe from another process is applied here: the topics
        whose channels are not held yet will be caught up (``Reader.sync``)
        from their partitions' heads when the subscribe was sent (``heads``,
        read there; else the positions here), so their events published
        after it reach the client even if other events of the partition move
        the position first."""
        wanted = self._channels.wanted()
        floors = {}
        for topic in topics:
            channel = self.topic_channel(topic).encode()
            if not is_pattern(topic) and channel not in wanted:
                index = partition_of(Audience.TOPIC, topic)
                head = parse_event_id(heads[topic]) if isinstance(heads.get(topic), str) else None
                floors[channel] = (index, topic, head or self.position(index) or ORIGIN)
        self._channels.set_floors(floors)

    def _topic_heads(self, topics: t.Collection[str]) -> dict[str, str]:
        """The newest id of each plain topic's partition (see :meth:`hold_from`)."""
        plain = sorted(topic for topic in topics if not is_pattern(topic))
        pipe = self.cluster().pipeline()
        for topic in plain:
            pipe.get(self.partitions[partition_of(Audience.TOPIC, topic)].last)
        try:
            found = pipe.execute()
        except ERRORS as e:
            raise BackendError(f"Redis Cluster backend: reading the partitions' heads failed: {e}") from e
        # An empty partition's head is its origin: its events all come later.
        return {topic: value.decode() if value else "0-0" for topic, value in zip(plain, found, strict=True)}

    def floors(self, channels: t.Iterable[bytes]) -> dict[tuple[int, str], Seq]:
        return self._channels.floors(channels)

    def reroute(self, client_id: str | None, topics: t.Iterable[str] = (), *, wait: bool = True) -> None:
        """Make the channels follow the hub after a change of ``client_id``'s
        topics, a disconnect or a revoke; ``wait``: until they are live."""
        waits = self._routing.route(client_id, topics)
        self._channels.keep_floors()
        if wait:
            self._routing.wait_live(waits)

    def topic_channel(self, topic: str) -> str:
        return channel_of(self.partitions, Audience.TOPIC, topic)

    def _control(
        self,
        op: str,
        client_id: str | None,
        topics: t.Collection[str] = (),
        channel: str = "",
        heads: dict[str, str] | None = None,
    ) -> None:
        """Publish a control message on ``channel`` (default: partition 0's
        broadcast channel, which every process holds)."""
        message = encode_control(op, client_id, topics, self.node)
        if heads:
            message = b"C " + json.dumps({**json.loads(message[2:]), "heads": heads}).encode()
        try:
            self.cluster().spublish(channel or self.partitions[0].keys.all, message)
        except ERRORS as e:
            raise BackendError(f"Redis Cluster backend: {op} of client {client_id!r} failed: {e}") from e

    def owner(self, key: str) -> tuple[str, int]:
        raise NotImplementedError

    def _node_client(self, host: str, port: int) -> redis.Redis[bytes]:
        raise NotImplementedError

    # -- presence ----------------------------------------------------------------

    def presence(self) -> RedisPresence:
        """The presence writer, made on first use (it needs the cluster's map).

        :raises BackendError: the cluster is unreachable.
        """
        presence = self._presence
        if presence is None:
            keys = RedisKeys("{" + self.prefix + ":presence}")
            host, port = self.owner(keys.nodes)
            presence = RedisPresence(self._node_client(host, port), keys, self.node, self)
            presence.hub = self.hub
            self._presence = presence
        return presence

    def refresh_presence(self) -> None:
        """Every ``refresh_interval``, from the listener holding partition 0."""
        try:
            self.presence().refresh()
        except BackendError as e:
            logger.debug("presence not refreshed: %s", e)

    def close_presence(self) -> None:
        presence, self._presence = self._presence, None
        if presence is not None:
            presence.stop()
            presence.forget_process()

    def client_opened(self, client: SSEClient) -> None:
        try:
            self.presence().client_opened(client)
        except BackendError as e:
            logger.warning("presence of client %r not written: %s", client.id, e)

    def client_closed(self, client: SSEClient) -> None:
        self.reroute(client.id, client.topics, wait=False)
        try:
            self.presence().client_closed(client)
        except BackendError as e:
            logger.warning("session of client %r not written: %s", client.id, e)

    def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None:
        try:
            self.presence().client_revoked(client, topics)
        except BackendError as e:
            logger.warning("presence of client %r not written: %s", client.id, e)

    def recall(self, client_id: str) -> frozenset[str] | None:
        try:
            found = self.presence().cluster_topics(client_id)
        except BackendError as e:
            logger.warning("topics of client %r not recalled (the presence primary): %s", client_id, e)
            return None
        return found[0] if found is not None else None

    def is_connected(self, client_id: str) -> bool:
        return self.presence().is_connected(client_id)

    def client_count(self) -> int:
        return len(self.presence().cluster_clients())

    def clients_by_topic(self, topic: str) -> list[str]:
        clients = self.presence().cluster_clients().items()
        if is_pattern(topic):
            return sorted(cid for cid, topics in clients if topic in topics)
        return sorted(cid for cid, topics in clients if topic in Subscriptions(topics))

    # -- backplane ---------------------------------------------------------------

    def subscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self._change_topics("subscribe", client_id, topics)

    def unsubscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self._change_topics("unsubscribe", client_id, topics)

    def _change_topics(self, op: str, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        """Apply here, tell every process, update a remembered session."""
        hub = self.hub
        local = hub.is_connected(client_id)
        current = hub.topics_of(client_id, sessions=True)
        presence = self.presence()
        if current is None:
            found = presence.cluster_topics(client_id)
            if found is None:
                raise ClientNotFound(client_id)
            current = found[0]
        updated = current | frozenset(topics) if op == "subscribe" else current - frozenset(topics)
        hub.check_topic_count(updated)
        heads = self._topic_heads(topics) if op == "subscribe" else None
        self._control(op, client_id, topics, heads=heads)
        try:
            change = hub.subscribe if op == "subscribe" else hub.unsubscribe
            now = change(client_id, topics)
        except ClientNotFound:
            now = updated
        self.reroute(client_id, topics)  # a client here gets what is published once this returns
        presence.update_session(client_id, now)
        if local:
            presence.write(client_id)
        return now

    def disconnect(self, client_id: str) -> int:
        self._control("disconnect", client_id)
        return self.hub.disconnect(client_id)  # its channel goes with its last connection

    def revoke(self, topic: str, client_id: str | None) -> int:
        """Sessions first (as the single-Redis backend), then the processes
        holding a plain topic on its own channel (in order with its events),
        and every process on partition 0 (a pattern; and the processes that
        only remember a session holding the topic)."""
        presence = self.presence()
        presence.revoke_sessions(topic, None if client_id is None else [presence._keys.session(client_id)])
        if not is_pattern(topic):
            self._control("revoke", client_id, (topic,), self.topic_channel(topic))
        self._control("revoke", client_id, (topic,))
        revoked = len(self.hub.revoke(topic, client_id)[0])
        self.reroute(None, (topic,), wait=False)
        return revoked
