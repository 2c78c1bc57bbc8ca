"""The seam between the broker and what carries its events.

Data flows one way: ``publish -> backend -> broker -> connection queue ->
stream -> socket``. A backend assigns each event its id, keeps the replay
history, and hands every event to :meth:`SSEBroker._deliver` (or, in process,
``_deliver_locked``) in id order, in every process that may hold a recipient.
The broker owns the connections and the one lock; a backend never touches a
connection itself.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

if t.TYPE_CHECKING:
    from .._broker import SSEBroker

#: Target kinds: who an event is for.
ALL = "all"
TOPIC = "topic"
CLIENT = "client"


class Envelope:
    """One published event, shared by every connection it is queued for.

    ``frame`` is the complete encoded frame, so the event is encoded once per
    publish however many connections receive it. ``key`` orders ids and is
    ``None`` for frames outside the event sequence (heartbeats).
    """

    __slots__ = ("frame", "id", "key", "kind", "target")

    def __init__(
        self, id: str | None, key: tuple[int, int] | None, kind: str, target: str | None, frame: bytes
    ) -> None:
        self.id = id
        self.key = key
        self.kind = kind
        self.target = target
        self.frame = frame

    def __repr__(self) -> str:
        return f"<Envelope {self.id} {self.kind}:{self.target}>"

    def reaches(self, client_id: str, topics: t.Container[str]) -> bool:
        """Whether a client with this id and these topics is a recipient."""
        if self.kind == ALL:
            return True
        if self.kind == TOPIC:
            return self.target in topics
        return self.target == client_id


@dataclass
class Replay:
    """What a connection resuming from a cursor must be sent before live events.

    :param envelopes: the retained events after the cursor, in id order.
    :param reset: the cursor is unknown or older than the history, so events
        may have been missed; the client is sent ``event: reset`` first.
    :param cursor: the id the connection starts from (sent on ``connected``),
        or ``None`` to leave the client's own cursor in place.
    """

    envelopes: list[Envelope] = field(default_factory=list)
    reset: bool = False
    cursor: str | None = None


class Backend:
    """Base class of backends; the in-process defaults live here.

    Subclasses must implement :meth:`publish`, :meth:`replay` and
    :meth:`last_event_id`. The rest defaults to acting on the local broker,
    which is right for one process; a distributed backend overrides them to
    reach other processes too.
    """

    broker: SSEBroker

    def bind(self, broker: SSEBroker) -> None:
        """Attach to the broker whose connections this backend feeds."""
        self.broker = broker

    def start(self) -> None:
        """Start background work (a listener); called when a stream opens."""

    def close(self) -> None:
        """Stop background work and release connections to external services."""

    def reset_after_fork(self) -> None:
        """Drop state a forked child must not share with its parent."""

    def publish(self, kind: str, target: str | None, body: bytes) -> int:
        """Assign an id, record the event, deliver it; return local queued count."""
        raise NotImplementedError

    def replay(self, cursor: str | None) -> Replay:
        """Events after ``cursor`` (a validated id); called outside the lock."""
        raise NotImplementedError

    def last_event_id(self) -> str | None:
        raise NotImplementedError

    def is_valid_id(self, value: str) -> bool:
        """Whether ``value`` has the shape of an id this backend writes."""
        from ..event import parse_event_id

        return parse_event_id(value) is not None

    def subscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self.broker._subscribe_local(client_id, topics)

    def unsubscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        return self.broker._unsubscribe_local(client_id, topics)

    def disconnect(self, client_id: str) -> int:
        return self.broker._disconnect_local(client_id)

    def is_connected(self, client_id: str) -> bool:
        """Whether the client has a live connection anywhere this backend sees."""
        return self.broker._is_connected_local(client_id)

    def remember(self, client_id: str, topics: frozenset[str]) -> None:
        """Keep a client's topics for ``session_ttl`` after its last connection
        ends; the broker already keeps them in process."""

    def recall(self, client_id: str) -> frozenset[str] | None:
        """Topics remembered for a client unknown to the local broker."""
        return None

    def client_count(self) -> int:
        return self.broker._client_count_local()

    def clients_by_topic(self, topic: str) -> list[str]:
        return self.broker._clients_by_topic_local(topic)
