"""SSEHelper: the seed's notification patterns, each an event name and a payload."""

from __future__ import annotations

import typing as t

from ._broker import SSEBroker


class SSEHelper:
    """Thin, named shortcuts over a broker's three send methods.

    Each pattern comes in three reaches: one client (``notify``), every client
    (``notify_all``) and one topic (``notify_topic``). Every method returns what
    the broker's send method returns: the number of local connections queued.
    """

    def __init__(self, broker: SSEBroker) -> None:
        self.broker = broker

    def _to_client(self, client_id: str, name: str, data: t.Any) -> int:
        return self.broker.send(client_id, data, event=name)

    def _to_all(self, name: str, data: t.Any) -> int:
        return self.broker.broadcast(data, event=name)

    def _to_topic(self, topic: str, name: str, data: t.Any) -> int:
        return self.broker.broadcast_to_topic(topic, data, event=name)

    # event: notification, data: the payload
    def notify(self, client_id: str, payload: t.Any) -> int:
        return self._to_client(client_id, "notification", payload)

    def notify_all(self, payload: t.Any) -> int:
        return self._to_all("notification", payload)

    def notify_topic(self, topic: str, payload: t.Any) -> int:
        return self._to_topic(topic, "notification", payload)

    # event: update, data: {"key": key, "value": value}
    def update(self, client_id: str, key: str, value: t.Any) -> int:
        return self._to_client(client_id, "update", {"key": key, "value": value})

    def update_all(self, key: str, value: t.Any) -> int:
        return self._to_all("update", {"key": key, "value": value})

    def update_topic(self, topic: str, key: str, value: t.Any) -> int:
        return self._to_topic(topic, "update", {"key": key, "value": value})

    # event: alert, data: {"level": level, "message": message}
    def alert(self, client_id: str, level: str, message: str) -> int:
        return self._to_client(client_id, "alert", {"level": level, "message": message})

    def alert_all(self, level: str, message: str) -> int:
        return self._to_all("alert", {"level": level, "message": message})

    def alert_topic(self, topic: str, level: str, message: str) -> int:
        return self._to_topic(topic, "alert", {"level": level, "message": message})

    # event: progress, data: {"progress": percent, "message": message}
    def progress(self, client_id: str, percent: float, message: str = "") -> int:
        return self._to_client(client_id, "progress", {"progress": percent, "message": message})

    def progress_all(self, percent: float, message: str = "") -> int:
        return self._to_all("progress", {"progress": percent, "message": message})

    def progress_topic(self, topic: str, percent: float, message: str = "") -> int:
        return self._to_topic(topic, "progress", {"progress": percent, "message": message})
