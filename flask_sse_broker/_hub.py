"""The hub: the one lock and everything it guards.

Who holds what: the hub owns the registries (clients, connections, the topic
index, remembered sessions), the counters and every connection's queue, all
guarded by :attr:`Hub.lock`. The broker above it validates, starts threads and
talks to the backend; the connections below it only drain their own queue.

**The lock rule.** Take :attr:`Hub.lock` only to read or change the state it
guards, and to make a backend's id assignment and the delivery of that event
one step (``with hub.lock: ... hub.deliver_locked(envelope)``). Nothing under
it blocks: no socket or Redis I/O, no user hook, no signal, no logging. What a
locked section finds to do afterwards (tell a backend's presence that a client
went away, run the ``on_disconnect`` hook, log an overflow) is queued and run
by :meth:`Hub.run_after_lock` once the lock is released; every hub method that
takes the lock itself runs it before returning, and whoever calls
:meth:`Hub.deliver_locked` must call it after releasing the lock. There are no
threads, sockets, backend or Flask in this module.
"""

from __future__ import annotations

import threading
import time
import typing as t
from collections import deque

from ._connection import SSEClient, SSEConnection, queue_heartbeats
from ._sessions import Sessions
from ._timing import DeliveryTiming
from ._topics import TopicIndex, is_pattern
from ._wake import new_lock
from ._watchers import OverflowWatcher, Watchers
from ._wire import Audience, Envelope, Frame, encode_body, frame, json_dumps
from .exceptions import BrokerUnavailable, ClientNotFound, TooManyConnections, TooManyTopics

if t.TYPE_CHECKING:
    from ._wake import Wake
    from .config import SSEConfig

_T = t.TypeVar("_T", set[str], frozenset[str])
_ALL = Audience.ALL
_TOPIC = Audience.TOPIC


class Hub:
    """Clients, connections, topics and sessions of one process, and fan-out.

    :param config: read for the limits and policies at each operation.
    """

    def __init__(self, config: SSEConfig) -> None:
        self.config = config
        #: Told after the lock about clients (in this order): the backend's
        #: presence, then the broker's hooks and signals.
        self.watchers = Watchers()
        #: Told after the lock about overflows (the broker logs and signals).
        self.overflow_watcher: OverflowWatcher | None = None
        #: Every connection's ``on_close``: one bound method shared by all,
        #: not one per connection (ten thousand idle streams per worker).
        self._release = self.release
        #: Publish-to-write timing (metrics on; under the lock); None: no clock.
        self.timing: DeliveryTiming | None = None
        self.reset()

    def reset(self) -> None:
        """Start empty with a new lock (a forked child inherits the parent's
        registries and a lock some thread of the parent may have held)."""
        #: Guards the client, connection and topic registries, the sessions,
        #: every connection's queue, the counters, and a backend's in-process
        #: history.
        self.lock = new_lock()
        self._clients: dict[str, SSEClient] = {}
        self._connections: set[SSEConnection] = set()
        #: Subscription (a topic or a pattern, as written) -> its connections.
        self._topics: TopicIndex[SSEConnection] = TopicIndex()
        #: The topics of clients whose last connection ended, bounded.
        self._sessions = Sessions()
        self.counters = dict.fromkeys(
            ("published", "queued", "dropped", "overflow_disconnects", "connections_opened"), 0
        )
        #: Shutting down: no stream opens any more.
        self.closing = False
        self._open_streams = 0
        #: Connections dropped (overflow, disconnect, shutdown) whose stream
        #: has not finished: the server may be blocked writing to a peer that
        #: stopped reading, and only shutting the socket down ends that.
        self._dropped: set[SSEConnection] = set()
        #: Set by a delivery that left some queue more than half full; the
        #: publisher reads and clears it.
        self.pressure = False
        #: Work a locked section found to do once the lock is released.
        self._after_lock: deque[tuple[t.Any, ...]] = deque()
        #: Set once shutdown has seen every stream end.
        self.drained = threading.Event()
        if self.timing is not None:
            self.timing.clear()

    def start(self) -> None:
        """Make the primitives a running broker waits on, when the first stream
        opens (under gevent, monkey-patching may come after the hub was made)."""
        with self.lock:
            self.drained = threading.Event()

    # -- after the lock -------------------------------------------------------

    def run_after_lock(self) -> None:
        """Run the work locked sections queued; call without the lock."""
        pending = self._after_lock
        while pending:
            try:
                task, *args = pending.popleft()
            except IndexError:
                break
            task(*args)

    # -- connections ----------------------------------------------------------

    def open(
        self,
        client_id: str,
        topics: frozenset[str],
        metadata: dict[str, t.Any] | None,
        remembered: frozenset[str],
        wake: Wake,
    ) -> tuple[SSEConnection, bool]:
        """Register a new connection of ``client_id`` subscribed to ``topics``
        (and to the ``remembered`` ones, if the client is new here); return it
        and whether the client is new. Live events queue for it from now on.
        Call :meth:`opened` with its client afterwards when it is new.

        :raises BrokerUnavailable: shutting down.
        :raises TooManyConnections: at ``max_connections``.
        :raises TooManyTopics: the client would hold too many topics.
        """
        limit = self.config.max_connections
        with self.lock:
            if self.closing:
                raise BrokerUnavailable("the server is shutting down", retry_after=5)
            if limit is not None and len(self._connections) >= limit:
                raise TooManyConnections(limit)
            client = self._clients.get(client_id)
            first = client is None
            if client is None:
                client = SSEClient(client_id, metadata)
                fresh = self._sessions.unexpired(client_id, time.monotonic())
                remembered = remembered if fresh is None else fresh  # again: a revoke may have changed it
                client._topics.update(remembered)
            elif metadata:
                client.metadata.update(metadata)
            merged = self.check_topic_count(client._topics | topics)
            if first:
                self._clients[client_id] = client
                self._sessions.forget(client_id)
            conn = SSEConnection(client, self.lock, self._release, wake, self.timing)
            client._connections.append(conn)
            self._connections.add(conn)
            self._open_streams += 1
            self.counters["connections_opened"] += 1
            self._topics.add_all(merged, (conn,))
            client._topics = merged
        return conn, first

    def opened(self, client: SSEClient) -> None:
        """Tell the watchers a new client's first connection is ready (after
        its replay, so presence never announces a half-open client)."""
        self.watchers.client_opened(client)

    def release(self, conn: SSEConnection) -> None:
        """The stream ended: forget the connection; the client's record goes
        with its last one. Idempotent; the connection's ``on_close``."""
        with self.lock:
            self._finish_locked(conn)
            self._detach_locked(conn)
        self.run_after_lock()

    def _finish_locked(self, conn: SSEConnection) -> None:
        if not conn._finished:
            conn._finished = True
            self._open_streams -= 1
            self._dropped.discard(conn)
            if self.closing and not self._open_streams:
                self.drained.set()

    def _detach_locked(self, conn: SSEConnection, final: bytes | None = None) -> None:
        """Close a connection and remove it from every registry, so nothing
        more is queued for it; its stream ends once ``final`` is written."""
        if conn._released:
            return
        conn._released = True
        if not conn._finished:
            self._dropped.add(conn)
        conn._close_locked(final)
        self._connections.discard(conn)
        client = conn.client
        self._topics.discard_all(client._topics, (conn,))
        client._connections.remove(conn)
        if client._connections or self._clients.get(client.id) is not client:
            return
        del self._clients[client.id]
        if self.config.session_ttl > 0 and client._topics:
            self._remember_locked(
                client.id, frozenset(client._topics), time.monotonic() + self.config.session_ttl
            )
        self._after_lock.append((self.watchers.client_closed, client))

    def disconnect(self, client_id: str) -> int:
        """Close every connection of ``client_id`` here and forget its
        session; return how many closed."""
        with self.lock:
            client = self._clients.get(client_id)
            self._sessions.forget(client_id)
            connections = list(client._connections) if client is not None else []
            for conn in connections:
                self._detach_locked(conn)
        self.run_after_lock()
        return len(connections)

    def disconnect_all(self) -> int:
        """Close every connection here (their clients resume and replay)."""
        with self.lock:
            client_ids = list(self._clients)
        return sum(self.disconnect(client_id) for client_id in client_ids)

    def close_all(self, final: bytes) -> int:
        """Shut down: refuse new streams, end every stream after ``final``;
        return how many were open. :attr:`drained` is set once all ended."""
        with self.lock:
            self.closing = True
            connections = list(self._connections)
            for conn in connections:
                self._detach_locked(conn, final)
            if not self._open_streams:
                self.drained.set()
        self.run_after_lock()
        return len(connections)

    def unfinished(self, *, dropped: bool = False) -> list[SSEConnection]:
        """The connections whose stream has not ended yet: registered or
        already dropped while their server is still writing to them; with
        ``dropped``, only the latter."""
        with self.lock:
            if dropped:
                return list(self._dropped)
            return [*self._connections, *self._dropped]

    # -- topics and sessions --------------------------------------------------

    def check_topic_count(self, topics: _T) -> _T:
        """Return ``topics`` if a client may hold that many; raise
        :exc:`TooManyTopics` otherwise."""
        limit = self.config.max_topics_per_connection
        if len(topics) > limit:
            raise TooManyTopics(len(topics), limit)
        return topics

    def subscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        """Add topics to a client here (live, else its remembered session);
        return its topics.

        :raises ClientNotFound: neither live nor remembered here.
        :raises TooManyTopics: it would hold too many.
        """
        with self.lock:
            client = self._clients.get(client_id)
            if client is None:
                return self._update_session_locked(client_id, topics, add=True)
            merged = self.check_topic_count(client._topics | set(topics))
            self._topics.add_all(merged - client._topics, client._connections)
            client._topics = merged
            return frozenset(merged)

    def unsubscribe(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        """Remove topics from a client here; as :meth:`subscribe`."""
        with self.lock:
            client = self._clients.get(client_id)
            if client is None:
                return self._update_session_locked(client_id, topics, add=False)
            self._topics.discard_all(client._topics & set(topics), client._connections)
            client._topics = client._topics - set(topics)
            return frozenset(client._topics)

    def _update_session_locked(
        self, client_id: str, topics: t.Collection[str], *, add: bool
    ) -> frozenset[str]:
        session = self._sessions.get(client_id)
        if session is None:
            raise ClientNotFound(client_id)
        current, expiry = session
        updated = current | frozenset(topics) if add else current - frozenset(topics)
        self._remember_locked(client_id, self.check_topic_count(updated), expiry)
        return updated

    def revoke(self, topic: str, client_id: str | None) -> tuple[list[SSEClient], list[str]]:
        """Take ``topic`` (as written) from a client, or every holder, live or
        remembered here; return the clients and session ids it was taken from."""
        notice = Frame(frame(encode_body(json_dumps({"topics": [topic]}), "revoked"), None))
        with self.lock:
            if client_id is None:
                clients = list({conn.client for conn in self._topics.holders(topic)})
            else:
                clients = [c for c in (self._clients.get(client_id),) if c is not None and topic in c._topics]
            sessions = self._sessions.drop(topic, client_id)
            for client in clients:
                self._topics.discard(topic, client._connections)
                client._revoke_locked(topic, notice)
                self._after_lock.append((self.watchers.client_revoked, client, frozenset((topic,))))
        self.run_after_lock()
        return clients, sessions

    def _remember_locked(self, client_id: str, topics: frozenset[str], expiry: float) -> None:
        config = self.config
        self._sessions.remember(client_id, topics, expiry, config.max_sessions, config.max_session_bytes)

    def topics_of(self, client_id: str, *, sessions: bool = False) -> frozenset[str] | None:
        """The topics of a live client here; with ``sessions``, else those
        remembered for it here. ``None`` when this process does not know it."""
        with self.lock:
            client = self._clients.get(client_id)
            if client is not None:
                return frozenset(client._topics)
            session = self._sessions.get(client_id) if sessions else None
            return session[0] if session is not None else None

    def remembered(self, client_id: str) -> frozenset[str] | None:
        """Topics a new connection of ``client_id`` starts with: its unexpired
        session here, nothing for a client live here (it already has them),
        ``None`` when this process does not know it (ask the backend)."""
        with self.lock:
            topics = self._sessions.unexpired(client_id, time.monotonic())
            if topics is not None:
                return topics
            if client_id in self._clients:
                return frozenset()
        return None

    # -- fan-out --------------------------------------------------------------

    def deliver(self, envelope: Envelope) -> int:
        """Queue an event for its local recipients; return how many. For a
        backend that receives events from elsewhere (a listener thread)."""
        with self.lock:
            queued = self.deliver_locked(envelope)
        if self._after_lock:
            self.run_after_lock()
        return queued

    def deliver_locked(self, envelope: Envelope) -> int:
        """Queue an event for its local recipients; caller holds :attr:`lock`
        and calls :meth:`run_after_lock` after releasing it."""
        if self.timing is not None and not envelope.at:
            envelope.at = time.time()  # once per publish, for the delay metric
        audience = envelope.audience
        if audience is _TOPIC:
            recipients: t.Iterable[SSEConnection] = self._topics.match(envelope.target)  # type: ignore[arg-type]
        elif audience is _ALL:
            recipients = self._connections
        else:
            client = self._clients.get(envelope.target)  # type: ignore[arg-type]
            recipients = client._connections if client is not None else ()
        limit = self.config.event_buffer_size
        half = limit // 2
        queued = 0
        overflowed = None
        # The hot loop of every publish: kept inline, allocation-free.
        for conn in recipients:
            queue = conn._queue
            waiting = len(queue)
            if waiting >= limit:
                if overflowed is None:
                    overflowed = []
                overflowed.append(conn)
                continue
            queue.append(envelope)
            queued += 1
            if waiting >= half:
                self.pressure = True
            if conn._waiting:
                conn._waiting = False
                conn._wake.set()
        counters = self.counters
        counters["published"] += 1
        counters["queued"] += queued
        if overflowed:
            queued += self._overflow_locked(overflowed, envelope)
        return queued

    def _overflow_locked(self, connections: list[SSEConnection], envelope: Envelope) -> int:
        """Apply the ``overflow`` policy to full queues; return how many
        queued the event anyway (``drop_oldest``)."""
        drop_oldest = self.config.overflow == "drop_oldest"
        counters = self.counters
        queued = 0
        for conn in connections:
            conn.dropped += 1
            counters["dropped"] += 1
            if drop_oldest:
                del conn._queue[0]
                conn._queue.append(envelope)
                queued += 1
            else:
                # The client reconnects with its last id and replays the rest.
                counters["overflow_disconnects"] += 1
                self._detach_locked(conn)
        if self.overflow_watcher is not None:
            first = [c for c in connections if c.dropped == 1]
            self._after_lock.append((self.overflow_watcher.overflowed, connections, first))
        return queued

    def recipient_count(self, audience: Audience, target: str | None) -> int:
        """How many local connections an event for this audience reaches now."""
        with self.lock:
            if audience is _ALL:
                return len(self._connections)
            if audience is _TOPIC:
                return len(self._topics.match(target or ""))
            client = self._clients.get(target or "")
            return len(client._connections) if client is not None else 0

    def holds(self, subscription: str) -> bool:
        """Whether a local connection holds ``subscription`` (topic or pattern) as written."""
        with self.lock:
            return bool(self._topics.holders(subscription))

    def beat(self, heartbeats: bool = True, now: float | None = None) -> None:
        """The heartbeat pass: queue a heartbeat on every idle connection
        (when ``heartbeats``); forget sessions expired by ``now`` (monotonic)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            if heartbeats:
                queue_heartbeats(self._connections)
            self._sessions.expire(now)

    # -- queries --------------------------------------------------------------

    def client(self, client_id: str) -> SSEClient | None:
        with self.lock:
            return self._clients.get(client_id)

    def client_count(self) -> int:
        with self.lock:
            return len(self._clients)

    def is_connected(self, client_id: str) -> bool:
        with self.lock:
            return client_id in self._clients

    def clients_by_topic(self, topic: str) -> list[str]:
        """The clients an event on ``topic`` reaches (holders of matching
        patterns included); for a pattern, its holders as written."""
        index = self._topics
        with self.lock:
            found = index.holders(topic) if is_pattern(topic) else index.match(topic)
            return sorted({conn.client.id for conn in found})

    def snapshot(self) -> dict[str, frozenset[str]]:
        """Client id -> topics of every live client here."""
        with self.lock:
            return {cid: frozenset(c._topics) for cid, c in self._clients.items()}

    def stats(self) -> dict[str, t.Any]:
        """Counters and sizes."""
        with self.lock:
            result: dict[str, t.Any] = dict(self.counters)
            result.update(
                clients=len(self._clients),
                connections=len(self._connections),
                topics=len(self._topics),
                sessions=len(self._sessions),
                session_bytes=self._sessions.bytes,
                sessions_evicted=self._sessions.evicted,
                queued_now=sum(len(c._queue) for c in self._connections),
                closing=self.closing,
            )
        return result

    def metric_values(self) -> tuple[dict[str, t.Any], DeliveryTiming | None]:
        """:meth:`stats` and a copy of the timing (idle streams' last writes in)."""
        with self.lock:
            timing = self.timing.collect_locked(self._connections) if self.timing is not None else None
        return self.stats(), timing

    def debug_state(self, conn: SSEConnection | None = None) -> dict[str, t.Any]:
        """Everything the lock guards, as plain data, for tests: proof that
        state is released, not just counted. With ``conn``, its stream too."""
        with self.lock:
            state: dict[str, t.Any] = {
                "clients": sorted(self._clients),
                "connections": len(self._connections),
                "open_streams": self._open_streams,
                "topics": {topic: len(members) for topic, members in self._topics.items()},
                "queued": [len(c._queue) for c in self._connections],
                "sessions": {cid: sorted(topics) for cid, (topics, _) in self._sessions.items()},
                "counters": dict(self.counters),
            }
            if conn is not None:
                state["stream"] = conn.debug_state_locked()
        return state
