"""Remembered sessions: the topics of clients whose last connection ended.

A client that reconnects with its token within ``session_ttl`` gets its
subscriptions back. What one process remembers is bounded by count and by
bytes, oldest forgotten first, so a client looping through connects with many
long topics cannot make a worker hold unbounded memory.
"""

from __future__ import annotations

import typing as t


class Sessions:
    """Client id -> (topics, expiry), oldest first, within two bounds.

    Not locked itself: the hub's lock guards it, like everything the hub owns.
    """

    __slots__ = ("_items", "bytes", "evicted")

    def __init__(self) -> None:
        # A dict keeps insertion order: the first key is the oldest session.
        self._items: dict[str, tuple[frozenset[str], float]] = {}
        #: UTF-8 bytes of the client ids and topic names held, as counted
        #: against ``max_session_bytes``.
        self.bytes = 0
        #: Sessions forgotten to stay within the bounds (expiry not counted).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, client_id: str) -> tuple[frozenset[str], float] | None:
        return self._items.get(client_id)

    def items(self) -> t.ItemsView[str, tuple[frozenset[str], float]]:
        return self._items.items()

    def remember(
        self,
        client_id: str,
        topics: frozenset[str],
        expiry: float,
        max_count: int | None,
        max_bytes: int | None,
    ) -> None:
        """Keep a session as the newest, then forget the oldest ones while
        over ``max_count`` sessions or ``max_bytes``."""
        self.forget(client_id)
        size = _size(client_id, topics)
        if (max_bytes is not None and size > max_bytes) or max_count == 0:
            # Larger than the whole budget: keeping it would evict every other.
            self.evicted += 1
            return
        items = self._items
        items[client_id] = (topics, expiry)
        self.bytes += size
        while (max_count is not None and len(items) > max_count) or (
            max_bytes is not None and self.bytes > max_bytes
        ):
            self.forget(next(iter(items)))
            self.evicted += 1

    def unexpired(self, client_id: str, now: float) -> frozenset[str] | None:
        """The topics remembered for ``client_id`` unless expired by ``now``."""
        session = self._items.get(client_id)
        return session[0] if session is not None and session[1] > now else None

    def drop(self, topic: str, client_id: str | None = None) -> list[str]:
        """Take ``topic`` from one remembered client, or from every one
        holding it; return their ids. (Shrinking evicts nobody.)"""
        items = self._items
        ids = list(items) if client_id is None else [client_id]
        taken = [cid for cid in ids if cid in items and topic in items[cid][0]]
        for cid in taken:
            held, expiry = items[cid]
            self.bytes -= _size(cid, held) - _size(cid, held - {topic})
            items[cid] = (held - {topic}, expiry)
        return taken

    def forget(self, client_id: str) -> None:
        session = self._items.pop(client_id, None)
        if session is not None:
            self.bytes -= _size(client_id, session[0])

    def expire(self, now: float) -> None:
        """Forget the sessions whose expiry is at or before ``now``."""
        for client_id in [cid for cid, (_, expiry) in self._items.items() if expiry <= now]:
            self.forget(client_id)


def _size(client_id: str, topics: frozenset[str]) -> int:
    return len(client_id.encode()) + sum(len(topic.encode()) for topic in topics)
