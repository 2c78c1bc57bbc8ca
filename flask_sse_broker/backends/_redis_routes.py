"""Which pub/sub channels a process holds: the routing half of the Redis backend.

A process holds a client's channel while the client is connected here, a
topic's channel while a local connection holds the topic, and for a topic
*pattern* the ``PSUBSCRIBE`` glob of its channels (:meth:`RedisKeys.topic_glob
<._redis_keys.RedisKeys.topic_glob>`) while a local connection holds the
pattern. :class:`Routes` makes the channels follow the hub after every change
and tells a stream what to wait for before it reads where it starts.
"""

from __future__ import annotations

import threading
import time
import typing as t

from .._topics import is_pattern
from ..exceptions import BrokerUnavailable
from ._redis_channels import pattern_key

if t.TYPE_CHECKING:
    from .._hub import Hub
    from ._redis_keys import RedisKeys
    from ._redis_listener import RedisListener


class Routes:
    """The channels held for local clients and subscriptions.

    :param pool_timeout: seconds a stream waits for its channels to go live.
    """

    def __init__(self, keys: RedisKeys, listener: RedisListener, pool_timeout: float) -> None:
        self._keys = keys
        self._listener = listener
        self._pool_timeout = pool_timeout
        #: Set by the backend's ``bind``.
        self.hub: Hub | None = None
        #: Subscriptions and client ids whose channel this process holds, and
        #: what serialises changing them (taken before the hub's lock, never inside).
        self._topics: set[str] = set()
        self._clients: set[str] = set()
        self._lock = threading.Lock()

    def wait_live(self, waits: list[threading.Event]) -> None:
        """Wait until the channels went live (if the listener runs). A busy
        process (a storm) may take seconds to read the confirmations: wait as
        long as for a pool connection, but give up at once when the listener
        has lost Redis.

        :raises BrokerUnavailable: Redis is unreachable, or did not confirm
            within ``pool_timeout``.
        """
        if not waits or not self._listener.running:
            return
        deadline = time.monotonic() + self._pool_timeout
        for event in waits:
            while not event.wait(0.25):
                if self._listener.failing:
                    raise BrokerUnavailable(
                        "Redis is unreachable (the listener is reconnecting)", retry_after=5
                    )
                if time.monotonic() > deadline:
                    raise BrokerUnavailable("Redis did not confirm a subscription in time", retry_after=5)

    def route(
        self, client_id: str | None, topics: t.Iterable[str] = (), *, new_client: bool = False
    ) -> list[threading.Event]:
        """Make the channels of ``client_id`` (if any) and ``topics`` match the
        hub now: held while the client is connected here / a local connection
        holds the topic or pattern (as written). Returns what to wait for
        before a stream may start."""
        hub = self.hub
        assert hub is not None, "the backend is not bound to a hub"
        with self._lock:
            drop: list[bytes] = []
            here = client_id is not None and hub.is_connected(client_id)
            if client_id is not None and here:
                self._clients.add(client_id)
            elif client_id is not None and client_id in self._clients:
                self._clients.discard(client_id)
                drop.append(self._keys.client(client_id).encode())
            for topic in topics:
                if hub.holds(topic):
                    self._topics.add(topic)
                elif topic in self._topics:
                    self._topics.discard(topic)
                    drop.append(self.topic_channel(topic))
            channels = self._listener.channels
            if drop:
                channels.drop(drop)
            if client_id is None or not here:
                return []
            # Also wait for channels another request asked for and that are
            # not live yet: this stream needs them as much.
            own = self._keys.client(client_id).encode()
            needed = [own] + [self.topic_channel(topic) for topic in topics if topic in self._topics]
            return channels.want(needed, unheard=(own,) if new_client else ())

    def topic_channel(self, topic: str) -> bytes:
        """What carries a subscription's events: its topic's channel, or for
        a pattern the glob of its channels (``PSUBSCRIBE``)."""
        if is_pattern(topic):
            return pattern_key(self._keys.topic_glob(topic).encode())
        return self._keys.topic(topic).encode()
