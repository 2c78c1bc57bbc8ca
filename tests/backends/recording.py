"""A backend written only from ``flask_sse_broker/backends/base.py``'s docstrings.

It proves the contract is enough to write one: it keeps its own history (a
list), assigns ids ``1-<n>``, delivers through the hub as documented, and
records every call the broker and the hub make to it, with whether the hub's
lock was held at the time.
"""

from __future__ import annotations

import threading
import typing as t

from flask_sse_broker import SSEClient
from flask_sse_broker._hub import Hub
from flask_sse_broker._wire import Audience, Envelope, parse_event_id
from flask_sse_broker.backends import Backend, Replay


class Call(t.NamedTuple):
    name: str
    args: tuple[t.Any, ...]
    lock_held: bool
    thread: str


class RecordingBackend(Backend):
    """One process, ids ``1-<n>``, every event kept; records every call."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._history: list[Envelope] = []
        self._hub: Hub | None = None

    def _record(self, name: str, *args: t.Any) -> None:
        held = self._hub is not None and self._hub.lock.locked()
        self.calls.append(Call(name, args, held, threading.current_thread().name))

    def names(self) -> list[str]:
        return [call.name for call in self.calls]

    # lifecycle
    def bind(self, hub: Hub) -> None:
        self._record("bind")
        super().bind(hub)
        self._hub = hub

    def start(self) -> None:
        self._record("start")

    def close(self) -> None:
        self._record("close")

    def reset_after_fork(self) -> None:
        self._record("reset_after_fork")
        self._history.clear()

    # history
    def publish(
        self, audience: Audience, target: str | None, body: bytes, *, idempotency_key: str | None = None
    ) -> int:
        self._record("publish", audience, target)
        hub = self.hub
        with hub.lock:
            envelope = Envelope.encode((1, len(self._history) + 1), audience, target, body)
            self._history.append(envelope)
            queued = hub.deliver_locked(envelope)
        hub.run_after_lock()
        return queued

    def replay(self, cursor: str | None) -> Replay:
        self._record("replay", cursor)
        with self.hub.lock:
            head = f"1-{len(self._history)}"
            if cursor is None:
                return Replay(cursor=head)
            seq = parse_event_id(cursor)
            if seq is None or seq[0] != 1 or seq[1] > len(self._history):
                return Replay(reset=True, cursor=head)
            return Replay(envelopes=self._history[seq[1] :], cursor=cursor)

    def last_event_id(self) -> str | None:
        self._record("last_event_id")
        with self.hub.lock:
            return f"1-{len(self._history)}"

    # backplane: the one-process defaults, recorded
    def subscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        self._record("subscribe", client_id, frozenset(topics))
        return super().subscribe(client_id, topics)

    def unsubscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        self._record("unsubscribe", client_id, frozenset(topics))
        return super().unsubscribe(client_id, topics)

    def disconnect(self, client_id: str) -> int:
        self._record("disconnect", client_id)
        return super().disconnect(client_id)

    # presence
    def recall(self, client_id: str) -> frozenset[str] | None:
        self._record("recall", client_id)
        return None

    def client_opened(self, client: SSEClient) -> None:
        self._record("client_opened", client.id)

    def client_closed(self, client: SSEClient) -> None:
        self._record("client_closed", client.id, client.topics)
