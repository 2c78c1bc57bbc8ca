"""The backplane and presence of the Redis Cluster backend.

Control messages (subscribe, unsubscribe, disconnect, revoke) are
``SPUBLISH``\\ ed on partition 0's channel, which every process reads; a
revoke of a plain topic goes on the topic's own partition instead, in order
with its events.

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

import typing as t

from .._topics import Subscriptions, is_pattern
from .._wire import Audience
from ..exceptions import BackendError, ClientNotFound
from ._redis_cluster_keys import partition_of
from ._redis_keys import RedisKeys
from ._redis_presence import RedisPresence
from .base import Backend, logger

if t.TYPE_CHECKING:
    import redis

    from .._connection import SSEClient


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

    def _control(
        self, op: str, client_id: str | None, topics: t.Collection[str] = (), index: int = 0
    ) -> None:
        raise NotImplementedError

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
        self._control(op, client_id, topics)
        try:
            change = hub.subscribe if op == "subscribe" else hub.unsubscribe
            now = change(client_id, topics)
        except ClientNotFound:
            now = updated
        presence.update_session(client_id, now)
        if local:
            presence.write(client_id)
        return now

    def disconnect(self, client_id: str) -> int:
        self._control("disconnect", client_id)
        return self.hub.disconnect(client_id)

    def revoke(self, topic: str, client_id: str | None) -> int:
        """Sessions first (as the single-Redis backend), then every process:
        on the topic's own partition for a plain topic (in order with its
        events), on partition 0 for a pattern."""
        presence = self.presence()
        presence.revoke_sessions(topic, None if client_id is None else [presence._keys.session(client_id)])
        index = 0 if is_pattern(topic) else partition_of(Audience.TOPIC, topic)
        self._control("revoke", client_id, (topic,), index)
        return len(self.hub.revoke(topic, client_id)[0])
