"""The in-process backend: ids and replay history in this process's memory.

Right for one process (the Werkzeug server, one gunicorn worker). With several
workers each has its own history and ids, so a client that reconnects to
another worker gets ``event: reset``: use the Redis backend there.
"""

from __future__ import annotations

import secrets
import time
import typing as t
from collections import deque

from .._wire import Audience, Envelope, parse_event_id
from .base import Backend, Replay


class MemoryBackend(Backend):
    """Event ids are ``<epoch>-<sequence>``; the epoch is new each time a broker
    starts, so an id from before a restart (or from another worker) is
    recognised as foreign instead of being mistaken for a recent one.

    The history is a bounded deque guarded by the hub's lock, appended to in
    the same critical section that queues the event, so id order, history
    order and delivery order are one order.
    """

    def __init__(self, history_size: int) -> None:
        self._history_size = history_size
        self._new_epoch()

    def _new_epoch(self) -> None:
        # Milliseconds since 1970, times 1000, plus noise: unique per broker life
        # even when several workers start in the same millisecond.
        self._epoch = time.time_ns() // 1_000_000 * 1000 + secrets.randbelow(1000)
        self._seq = 0
        self._history: deque[Envelope] = deque(maxlen=self._history_size or None)

    def reset_after_fork(self) -> None:
        self._new_epoch()

    def _head(self) -> str:
        # Before the first event the head is ``<epoch>-0``, "the origin": a page
        # rendered then can still connect from it and miss nothing.
        return f"{self._epoch}-{self._seq}"

    delivers_in_caller = True

    def publish(
        self, audience: Audience, target: str | None, body: bytes, *, idempotency_key: str | None = None
    ) -> int:
        # In process a publish either fails before it stores anything or
        # succeeds: there is nothing for a key to make safe.
        return self._publish(audience, target, body)[1]

    def publish_batch(self, items: t.Sequence[tuple[Audience, str | None, bytes]]) -> list[tuple[str, int]]:
        # One lock hold per event, not per batch: a batch of 1,000 broadcasts
        # must not keep every stream from taking its queue meanwhile.
        return [self._publish(audience, target, body) for audience, target, body in items]

    def _publish(self, audience: Audience, target: str | None, body: bytes) -> tuple[str, int]:
        hub = self.hub
        with hub.lock:
            self._seq += 1
            envelope = Envelope.encode((self._epoch, self._seq), audience, target, body)
            if self._history_size:
                self._history.append(envelope)
            queued = hub.deliver_locked(envelope)
        hub.run_after_lock()
        return envelope.id, queued

    def last_event_id(self) -> str | None:
        with self.hub.lock:
            return self._head()

    def replay(self, cursor: str | None) -> Replay:
        with self.hub.lock:
            head = self._head()
            if cursor is None:
                return Replay(cursor=head)
            epoch, seq = parse_event_id(cursor) or (0, 0)
            history = self._history
            if epoch == self._epoch and seq <= self._seq:
                oldest = history[0].seq[1] if history else self._seq + 1
                if seq >= oldest - 1:
                    return Replay(envelopes=list(history)[seq - oldest + 1 :], cursor=cursor)
            elif epoch != self._epoch and len(history) == self._seq:
                # A cursor from an earlier life of this server (or another
                # worker): every event of this life is news to the client, but
                # what the other life sent after the cursor is lost.
                return Replay(envelopes=list(history), reset=True, cursor=None)
            # Older than the history, or from the future: the gap cannot be filled.
            return Replay(reset=True, cursor=head)
