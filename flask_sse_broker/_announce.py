"""Tells the app what the hub saw (hooks, signals, the log), after its lock."""

from __future__ import annotations

import logging
import typing as t

from . import signals

if t.TYPE_CHECKING:
    from ._connection import SSEClient, SSEConnection
    from .config import SSEConfig


class _Sender(t.Protocol):
    """The broker, as far as the announcer sees it: the signals' sender."""

    config: SSEConfig


logger = logging.getLogger("flask_sse_broker")


class Announcer:
    """Tells the app (hooks, signals, the log) what the hub saw, after its lock."""

    __slots__ = ("broker",)

    def __init__(self, broker: _Sender) -> None:
        self.broker = broker

    def client_opened(self, client: SSEClient) -> None:
        self._notify(self.broker.config.on_connect, signals.client_connected, client)

    def client_closed(self, client: SSEClient) -> None:
        self._notify(self.broker.config.on_disconnect, signals.client_disconnected, client)

    def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None:
        if signals.topic_revoked.receivers:
            signals.topic_revoked.send(self.broker, client=client, topics=topics)

    def _notify(self, hook: t.Callable[[SSEClient], None] | None, signal_: t.Any, client: SSEClient) -> None:
        if hook is not None:
            try:
                hook(client)
            except Exception:
                logger.exception("SSE hook %r failed for client %r", hook, client.id)
        if signal_.receivers:
            signal_.send(self.broker, client=client)

    def overflowed(self, connections: list[SSEConnection], first: list[SSEConnection]) -> None:
        config = self.broker.config
        for conn in first:
            logger.warning(
                "client %r reads too slowly: its buffer of %d events overflowed (%s)",
                conn.client.id,
                config.event_buffer_size,
                config.overflow,
            )
        signal_ = signals.event_dropped
        if signal_.receivers:
            for conn in connections:
                signal_.send(self.broker, client=conn.client, connection=conn, policy=config.overflow)
