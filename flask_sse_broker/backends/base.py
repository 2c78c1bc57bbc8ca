"""The backend contract: what carries events between publishers and streams.

Data flows one way: ``publish -> backend -> hub -> connection queue -> stream
-> socket``. A backend is handed the process's hub (``Hub`` of ``_hub.py``)
by :meth:`Backend.bind` and never sees the broker. The hub owns the
connections, the registries and the one lock; a backend never touches a
connection itself. What a backend may use of the hub:

- fan-out: ``hub.deliver(envelope)`` (takes the lock), or
  ``hub.deliver_locked(envelope)`` inside ``with hub.lock:`` followed by
  ``hub.run_after_lock()`` once the lock is released;
- client state of this process: ``hub.subscribe`` / ``hub.unsubscribe``
  (raise :exc:`ClientNotFound` for a client neither live nor remembered here),
  ``hub.revoke``, ``hub.disconnect`` / ``hub.disconnect_all``, ``hub.topics_of``,
  ``hub.snapshot()`` (client id -> topics), ``hub.client_count()``,
  ``hub.is_connected``, ``hub.clients_by_topic``, ``hub.recipient_count``;
- ``hub.check_topic_count(topics)`` (raises :exc:`TooManyTopics`),
  ``hub.closing`` (shutting down) and ``hub.config`` (the broker's
  :class:`SSEConfig`, e.g. ``session_ttl``);
- ``hub.lock``, under the one rule: take it only to make id assignment and
  delivery one step, never around I/O, a hook or logging.

A backend has four roles:

**history** - :meth:`~Backend.publish`, :meth:`~Backend.publish_batch`, :meth:`~Backend.replay`,
:meth:`~Backend.last_event_id`, :meth:`~Backend.is_valid_id`. It assigns every
event its id, keeps the replay history, and hands every event to the hub of
every process that may hold a recipient, in id order.

**backplane** - :meth:`~Backend.subscribe`, :meth:`~Backend.unsubscribe`,
:meth:`~Backend.disconnect`, :meth:`~Backend.revoke`: a change to a client id
(or, for a revoke, to every holder of a topic) applied wherever the client
lives. The defaults apply it to this process's hub. :meth:`~Backend.prepare`
lets a backend that routes events to the processes needing them make a new
connection's events reach this process before its starting id is read.

**presence** - :meth:`~Backend.client_count`, :meth:`~Backend.clients_by_topic`,
:meth:`~Backend.is_connected`, :meth:`~Backend.recall`, and the hooks
:meth:`~Backend.client_opened` / :meth:`~Backend.client_closed` /
:meth:`~Backend.client_revoked` that the hub calls after its lock. The
defaults answer for this process.

**lifecycle** - :meth:`~Backend.bind`, :meth:`~Backend.start`,
:meth:`~Backend.close`, :meth:`~Backend.reset_after_fork`; and
:meth:`~Backend.debug_state` for tests.

Unless said otherwise a method is called from any request thread (or
greenlet), without the hub's lock, and may block on I/O for a bounded time
(a network backend raises :exc:`BackendError` rather than hang).
"""

from __future__ import annotations

import logging
import typing as t
from dataclasses import dataclass, field

from .._wire import Audience, Envelope, Seq, parse_event_id

if t.TYPE_CHECKING:
    from .._connection import SSEClient
    from .._hub import Hub

__all__ = ["ALL", "CLIENT", "TOPIC", "Audience", "Backend", "Envelope", "Replay"]

#: The package's logger (named after the top-level package), for every backend.
logger = logging.getLogger(__name__.partition(".")[0])

#: Who an event is for (the members of :class:`Audience`).
ALL = Audience.ALL
TOPIC = Audience.TOPIC
CLIENT = Audience.CLIENT


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
    #: Live events up to this ``seq`` are dropped from the new stream (the
    #: replay sent them, or they precede its start); ``None``: up to the last
    #: replayed envelope's. A backend whose ``seq`` is not the replay's order
    #: (the cluster's) sets it.
    skip: Seq | None = None

    @property
    def skip_through(self) -> Seq | None:
        """Where the stream's live events start: :attr:`skip`, else the last
        replayed envelope's ``seq``."""
        if self.skip is not None:
            return self.skip
        return self.envelopes[-1].seq if self.envelopes else None


class Backend:
    """Base class of backends; the one-process defaults live here.

    Subclasses must implement :meth:`publish`, :meth:`replay` and
    :meth:`last_event_id`. The rest defaults to acting on this process's hub,
    which is right for one process; a distributed backend overrides them to
    reach other processes too.
    """

    #: The hub of this process, set by :meth:`bind`.
    hub: Hub
    #: Whether :meth:`publish` queues an event for this process's streams
    #: before it returns, in the caller's thread (an in-process backend). The
    #: broker then hands a batch over one event at a time, so streams can
    #: write between two events instead of overflowing under a long batch.
    delivers_in_caller = False

    # -- lifecycle -----------------------------------------------------------

    def bind(self, hub: Hub) -> None:
        """Attach to the hub whose connections this backend feeds. Called once
        by the broker that owns the backend, before any other method; cheap,
        no I/O."""
        self.hub = hub

    def start(self) -> None:
        """Start background work (a listener thread). Called when the first
        stream opens, from its request thread; may block briefly (until the
        listener is ready) so the first replay and live events leave no gap.
        Called again after :meth:`close` when the broker is reconfigured."""

    def close(self) -> None:
        """Stop background work and release connections to external services.
        Called at shutdown (from any thread, possibly a SIGTERM helper), after
        every stream was told to end; may block for a bounded time."""

    def reset_after_fork(self) -> None:
        """Drop state a forked child must not share with its parent (sockets,
        threads, an id sequence). Called in the child, before anything else
        is, the first time the child uses the broker; no I/O needed."""

    # -- history -------------------------------------------------------------

    def publish(
        self, audience: Audience, target: str | None, body: bytes, *, idempotency_key: str | None = None
    ) -> int:
        """Assign the event an id, record it, deliver it; return how many local
        connections it was queued for.

        ``body`` is the event's encoded fields (:attr:`SSEEvent.body`), to be
        framed once with its id: ``Envelope.encode(seq, audience, target,
        body)``. ``target`` is the topic or client id (``None`` for ``ALL``).
        Ids must increase in delivery order: a backend delivering in process
        assigns the id and calls ``hub.deliver_locked`` under one hold of
        ``hub.lock``. A distributed backend may deliver later (from a listener
        calling ``hub.deliver``) and return ``hub.recipient_count(...)``.

        ``idempotency_key`` (passed only when the publisher gave one): a
        backend that can fail *after* recording (a reply that timed out)
        records an event at most once per key, and sets the key on the
        :exc:`BackendError` it raises, so the publisher can retry safely.

        :raises BackendError: the event could not be recorded (or may have
            been: see :attr:`BackendError.idempotency_key`).
        """
        raise NotImplementedError

    def publish_batch(self, items: t.Sequence[tuple[Audience, str | None, bytes]]) -> list[tuple[str, int]]:
        """Publish ``(audience, target, body)`` items in order, each as
        :meth:`publish` would; return every event's id and local queued count.

        Used by ``POST /publish``, which has checked every item first. A
        backend that can ship the batch in one step (one Redis transaction)
        does, so that when it raises :exc:`BackendError` none of the batch
        was published. The default publishes one at a time, which suits an
        in-process backend (it cannot fail half-way) but no network one: it
        cannot report the ids.
        """
        raise NotImplementedError

    def replay(self, cursor: str | None) -> Replay:
        """What a stream resuming after ``cursor`` missed.

        Called outside the lock, after the new connection is registered (so an
        event published meanwhile may be both replayed and queued live: the
        stream skips live events up to the replay's last ``seq``). ``cursor``
        is ``None`` (a new client: return ``Replay(cursor=<newest id>)``) or an
        id that passed :meth:`is_valid_id`.

        :raises BrokerUnavailable: the history cannot be read now (a 503).
        """
        raise NotImplementedError

    def last_event_id(self) -> str | None:
        """The newest event id; before any event, an id that replays from the
        very first. A page embeds it and connects from it.

        :raises BackendError: it cannot be read now.
        """
        raise NotImplementedError

    def debug_state(self) -> dict[str, t.Any]:
        """The backend's own state as plain data, for tests (part of the
        broker's ``_debug_state()``); no I/O."""
        return {}

    def is_valid_id(self, value: str) -> bool:
        """Whether ``value`` has the shape of an id this backend writes
        (``<int>-<int>`` by default). Cheap, no I/O."""
        return parse_event_id(value) is not None

    # -- backplane -----------------------------------------------------------

    def subscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        """Add validated ``topics`` to a client wherever it lives; return its
        topics. :raises ClientNotFound: no process knows the client.
        :raises TooManyTopics: it would hold too many."""
        return self.hub.subscribe(client_id, topics)

    def unsubscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        """Remove ``topics`` from a client wherever it lives; as :meth:`subscribe`."""
        return self.hub.unsubscribe(client_id, topics)

    def disconnect(self, client_id: str) -> int:
        """Close every connection of a client wherever it lives and forget its
        session; return how many closed in this process."""
        return self.hub.disconnect(client_id)

    def revoke(self, topic: str, client_id: str | None) -> int:
        """Take the subscription ``topic`` (a validated topic or pattern, as
        written) from a client, or from every client holding it when
        ``client_id`` is ``None``, wherever they live, sessions included;
        return how many clients live in this process lost it. Everything
        published after this returns must miss them: a distributed backend
        orders the revoke with its events. ``hub.revoke`` applies it here."""
        return len(self.hub.revoke(topic, client_id)[0])

    # -- presence ------------------------------------------------------------

    def client_count(self) -> int:
        """Client ids with a live connection anywhere this backend sees."""
        return self.hub.client_count()

    def clients_by_topic(self, topic: str) -> list[str]:
        """Sorted ids of the clients anywhere that an event on ``topic`` reaches
        (through a plain topic or a pattern); for a pattern, the clients
        holding that pattern as written."""
        return self.hub.clients_by_topic(topic)

    def is_connected(self, client_id: str) -> bool:
        """Whether the client has a live connection anywhere this backend sees."""
        return self.hub.is_connected(client_id)

    def recall(self, client_id: str) -> frozenset[str] | None:
        """Topics remembered elsewhere for a client this process does not know
        (its session, or another process's live record), for a new
        connection to start with; ``None`` when nobody knows it. The hub
        remembers sessions of this process itself.

        :raises BrokerUnavailable: it cannot be looked up now (a 503).
        """
        return None

    def prepare(self, client: SSEClient, *, new_client: bool = False) -> None:
        """A connection of ``client`` is registered and its replay comes next.
        A backend that routes events to the processes that need them makes
        sure, before returning, that events for this client and its topics
        reach this process from now on. Called by ``open_stream`` for every
        connection, in its thread, without the lock; may block for a bounded
        time. ``new_client``: the id was minted for this connection, so
        nothing can have been sent to it yet.

        :raises BrokerUnavailable: it cannot be made sure now (a 503).
        """

    def client_opened(self, client: SSEClient) -> None:
        """A client id's first connection in this process is open (its replay
        prepared). Called by the hub after its lock, in the thread that opened
        it; must not raise, may do bounded I/O."""

    def client_closed(self, client: SSEClient) -> None:
        """A client id's last connection in this process ended; ``client.topics``
        are its topics at that time. Called by the hub after its lock, from
        whichever thread ended it (a request, a publisher whose event
        overflowed it, shutdown: ``hub.closing``); must not raise."""

    def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None:
        """A live client here lost ``topics`` to a revoke (``client.topics`` are
        what it keeps). Called by the hub after its lock; must not raise."""
