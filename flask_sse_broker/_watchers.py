"""Who the hub tells about clients and overflows, after its lock.

The hub never calls a backend, a hook or a signal while it holds its lock: it
queues the call, and runs it once the lock is released (``_hub.py``'s lock
rule). What it calls is defined here, so the hub knows only these protocols,
never the broker or a backend.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from ._connection import SSEClient, SSEConnection


class ClientWatcher(t.Protocol):
    """Told, after the lock, when a client id's first connection opens, when
    its last one ends, and when topics are revoked from it. A backend's
    presence is one; the broker's hooks and signals another."""

    def client_opened(self, client: SSEClient) -> None: ...

    def client_closed(self, client: SSEClient) -> None: ...

    def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None: ...


class OverflowWatcher(t.Protocol):
    def overflowed(self, connections: list[SSEConnection], first: list[SSEConnection]) -> None:
        """``connections`` overflowed on one event; ``first`` is those that
        overflowed for the first time."""


class Watchers(list["ClientWatcher"]):
    """The client watchers, told in order: a :class:`ClientWatcher` itself."""

    def client_opened(self, client: SSEClient) -> None:
        for watcher in self:
            watcher.client_opened(client)

    def client_closed(self, client: SSEClient) -> None:
        for watcher in self:
            watcher.client_closed(client)

    def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None:
        for watcher in self:
            watcher.client_revoked(client, topics)
