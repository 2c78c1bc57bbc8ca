"""Routing for the Redis Cluster backend: which sharded channels a process holds.

The single-Redis :class:`~._redis_routes.Routes` decides, unchanged, which
channels the hub needs (a topic's while a local connection holds it, a
client's while it is connected here, a pattern's while one holds it). Here
its names are the cluster's (:class:`ClusterKeys`: each in the slot of the
partition it hashes to) and its channels are spread over the listener's
readers, one per primary (:class:`ClusterChannels`). Sharded pub/sub has no
pattern subscribe: a process holding a pattern holds every partition's
partition-wide channel instead (each event is published there too), for as
long as it holds any pattern.
"""

from __future__ import annotations

import threading
import typing as t

from .._wire import Audience, Seq
from ._redis_channels import Channels, is_pattern_key
from ._redis_cluster_keys import Partition, partition_of, tag_of

if t.TYPE_CHECKING:
    from ._redis_cluster_listener import Reader


class ClusterKeys:
    """The names :class:`~._redis_routes.Routes` asks for, on a cluster."""

    def __init__(self, partitions: list[Partition]) -> None:
        self._partitions = partitions

    def client(self, client_id: str) -> str:
        return self._partitions[partition_of(Audience.CLIENT, client_id)].keys.client(client_id)

    def topic(self, topic: str) -> str:
        return self._partitions[partition_of(Audience.TOPIC, topic)].keys.topic(topic)

    def topic_glob(self, pattern: str) -> str:
        # Only a name among the wanted channels: any pattern means every
        # partition-wide channel (see ClusterChannels).
        return pattern


class ClusterChannels:
    """The wanted channels of every reader, as one :class:`Channels`-like
    object for :class:`~._redis_routes.Routes`: each channel goes to the
    reader of its partition's primary; a pattern to every partition-wide one."""

    def __init__(self, partitions: list[Partition]) -> None:
        self._wide = [p.channel.encode() for p in partitions]
        self._lock = threading.Lock()
        self._patterns: set[bytes] = set()
        self._by_tag: dict[bytes, Channels] = {}
        #: Wanted before the readers exist: handed to them by :meth:`attach`.
        self._early: set[bytes] = set()
        #: Channel -> (partition, topic, position): where its catch-up starts
        #: (a topic subscribed from another process, see ``Reader.sync``).
        self._floors: dict[bytes, tuple[int, str, Seq]] = {}
        self.readers: list[Reader] = []

    def attach(self, readers: list[Reader]) -> None:
        with self._lock:
            self.readers = readers
            self._by_tag = {p.tag.encode(): r.channels for r in readers for p in r.partitions}
            early, self._early = self._early, set()
        if early:
            self.want(early)

    def detach(self) -> None:
        with self._lock:
            wanted = {c for r in self.readers for c in r.channels.wanted()}
            self.readers, self._by_tag = [], {}
            self._early = {c for c in wanted if c not in self._wide} | self._patterns
            self._patterns = set()

    def _split(self, channels: t.Iterable[bytes], adding: bool) -> dict[Channels | None, list[bytes]]:
        """Group ``channels`` by reader (``None``: no readers yet), patterns
        turned into the partition-wide channels when the first one comes or
        the last one goes."""
        names = []
        had = bool(self._patterns)
        for channel in channels:
            if is_pattern_key(channel):
                (self._patterns.add if adding else self._patterns.discard)(channel)
            else:
                names.append(channel)
        if had != bool(self._patterns):
            names.extend(self._wide)
        groups: dict[Channels | None, list[bytes]] = {}
        for channel in names:
            groups.setdefault(self._by_tag.get(tag_of(channel)), []).append(channel)
        return groups

    def want(self, channels: t.Collection[bytes], unheard: t.Collection[bytes] = ()) -> list[threading.Event]:
        waits = []
        with self._lock:
            groups = self._split(channels, adding=True)
            if any(is_pattern_key(c) for c in channels):  # wait for them, live or not
                for channel in self._wide:
                    groups.setdefault(self._by_tag.get(tag_of(channel)), []).append(channel)
            for target, names in groups.items():
                if target is None:
                    self._early.update(names)
                else:
                    waits += target.want(set(names), unheard=[c for c in unheard if c in names])
        return waits

    def drop(self, channels: t.Collection[bytes]) -> None:
        with self._lock:
            for target, names in self._split(channels, adding=False).items():
                if target is None:
                    self._early.difference_update(names)
                else:
                    target.drop(names)

    def set_floors(self, floors: dict[bytes, tuple[int, str, Seq]]) -> None:
        with self._lock:
            self._floors.update(floors)

    def keep_floors(self) -> None:
        """Forget the floors of channels that are not wanted (no catch-up comes)."""
        wanted = self.wanted()
        with self._lock:
            for channel in [c for c in self._floors if c not in wanted]:
                del self._floors[channel]

    def floors(self, channels: t.Iterable[bytes]) -> dict[tuple[int, str], Seq]:
        """Take the floors of ``channels``: (partition, topic) -> position."""
        with self._lock:
            found = [self._floors.pop(c) for c in channels if c in self._floors]
        return {(index, topic): seq for index, topic, seq in found}

    def wanted(self) -> set[bytes]:
        with self._lock:
            return {c for r in self.readers for c in r.channels.wanted()} | self._early

    @property
    def received(self) -> int:
        return sum(r.channels.received for r in self.readers)


class Listening:
    """What :class:`~._redis_routes.Routes` reads of the listener."""

    def __init__(self, channels: ClusterChannels) -> None:
        self.channels = channels

    @property
    def running(self) -> bool:
        return bool(self.channels.readers)

    @property
    def failing(self) -> bool:
        return any(r.failing for r in self.channels.readers)
