"""The broker: clients, their connections, topics, fan-out and heartbeats.

One lock, ``SSEBroker._lock``, guards every registry below and each
connection's queue. Nothing under it blocks: no socket I/O, no user callback,
no signal. Streams write outside it, so a slow socket never holds up a
publisher or another client.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import socket
import threading
import time
import typing as t
import weakref
from collections import deque

from . import signals
from ._wake import flush as flush_wakeups
from ._wake import gevent_patched, new_wake
from .backends.base import ALL, CLIENT, TOPIC, Backend, Envelope, Replay
from .config import SSEConfig
from .event import HEARTBEAT, SSEEvent, check_event_id, control_frame
from .exceptions import (
    BackendError,
    BrokerUnavailable,
    ClientNotFound,
    EventTooLarge,
    InvalidEventId,
    InvalidTopic,
    TooManyConnections,
    TooManyTopics,
)

logger = logging.getLogger("flask_sse_broker")

#: Queued in place of an event when a connection is idle at a heartbeat tick.
_HEARTBEAT = Envelope(None, None, ALL, None, HEARTBEAT)

_T = t.TypeVar("_T", set[str], frozenset[str])

#: Seconds between sweeps of expired sessions when heartbeats are off.
_SESSION_SWEEP = 5.0

#: The longest ``Last-Event-ID`` or client id accepted before any parsing.
MAX_ID_LENGTH = 256

#: ``recv`` flags of the dead-peer check, as a plain int: ``MSG_PEEK |
#: MSG_DONTWAIT`` on the ``IntFlag`` members runs ``Flag.__or__`` every time.
_PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
#: ``getsockopt`` level and option reading a TCP socket's state (Linux), and
#: the state in which the peer has neither closed nor reset its end.
_IPPROTO_TCP = int(socket.IPPROTO_TCP)
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_TCP_ESTABLISHED = b"\x01"


class SSEClient:
    """The server-side record of one client id and its live connections.

    One client id may hold several connections at once (one per browser tab
    of a user, when ``identify`` returns the user id); topics belong to the
    client, so every one of its connections receives its topics' events.
    """

    __slots__ = ("_connections", "_topics", "connected_at", "id", "metadata")

    def __init__(self, client_id: str, metadata: dict[str, t.Any] | None = None) -> None:
        self.id = client_id
        self.metadata: dict[str, t.Any] = dict(metadata or {})
        self.connected_at = time.time()
        self._topics: set[str] = set()
        self._connections: list[SSEConnection] = []

    @property
    def topics(self) -> frozenset[str]:
        """A snapshot of the topics this client is subscribed to."""
        return frozenset(self._topics)

    @property
    def connections(self) -> tuple[SSEConnection, ...]:
        """A snapshot of the client's live connections."""
        return tuple(self._connections)

    def __repr__(self) -> str:
        return f"<SSEClient {self.id!r} topics={sorted(self._topics)} connections={len(self._connections)}>"


class SSEConnection:
    """One event stream: a bounded queue drained by a WSGI response iterator.

    Iterating it yields ``bytes`` for the server to write: everything queued
    since the last write leaves in one chunk. It blocks (cooperatively under
    gevent) while nothing is queued and stops when the broker closes it. The
    server's call to :meth:`close` when the response ends - finished, or a
    write failed because the peer is gone - releases it from the broker.
    """

    __slots__ = (
        "_broker",
        "_closed",
        "_finished",
        "_head",
        "_peer",
        "_queue",
        "_released",
        "_skip_through",
        "_waiting",
        "_wake",
        "client",
        "dropped",
        "opened_at",
    )

    def __init__(self, broker: SSEBroker, client: SSEClient) -> None:
        self.client = client
        self.opened_at = time.time()
        #: Overflows of this connection's queue.
        self.dropped = 0
        self._broker = broker
        # A list, not a deque: an empty deque costs a 64-slot block, and with
        # ten thousand idle streams per worker that is most of their memory.
        self._queue: list[Envelope] = []
        self._wake = new_wake(broker.batched_wakeups)
        #: Whether the next publisher must set ``_wake``; between a ``_take``
        #: and the first event queued after it. With the lock held it means
        #: "``_wake`` is clear and the queue was empty when it was cleared".
        self._waiting = True
        self._closed = False
        self._released = False
        self._finished = False
        self._head: list[bytes] | None = None
        self._skip_through: tuple[int, int] | None = None
        #: The client's socket, when the server exposes it: lets a heartbeat
        #: find a peer that closed without writing to it (see ``_peer_closed``).
        self._peer: t.Any = None

    def __repr__(self) -> str:
        return f"<SSEConnection of {self.client.id!r} queued={len(self._queue)} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self) -> SSEConnection:
        return self

    def __next__(self) -> bytes:
        head, self._head = self._head, None
        if head:
            return b"".join(head)
        while True:
            batch = self._take()
            skip = self._skip_through
            if skip is not None:
                # Live events that the replay already sent (a distributed
                # backend replays outside the lock, so the two may overlap).
                batch = [e for e in batch if e.key is None or e.key > skip]
                if any(e.key is not None for e in batch):
                    self._skip_through = None
            if len(batch) == 1:  # a heartbeat, or a stream keeping up
                if batch[0] is _HEARTBEAT and self._peer_closed():
                    self.close()
                    raise StopIteration
                return batch[0].frame
            if batch:
                # Never an empty chunk: to a chunked response that means the end.
                return b"".join([e.frame for e in batch])

    def _peer_closed(self) -> bool:
        """Whether the client has closed its end (EOF or reset on the socket).

        A write to a socket whose peer just closed usually succeeds - only the
        next one fails - so without this a dead client would be found after two
        heartbeats instead of one. The peek never blocks: it only runs on a
        socket with no timeout (``MSG_DONTWAIT``) or a non-blocking one.
        """
        sock = self._peer
        if sock is None:
            return False
        raw = getattr(sock, "_sock", sock)  # under gevent, the real socket inside
        try:
            if raw.gettimeout() not in (None, 0.0):
                return False
            if _TCP_INFO is not None:
                # The common case without the peek's EAGAIN exception: a TCP
                # socket still ESTABLISHED has had no FIN and no reset, so the
                # peek could only find data or nothing. Any other state (or a
                # socket that is not TCP) gets the peek.
                try:
                    if raw.getsockopt(_IPPROTO_TCP, _TCP_INFO, 1) == _TCP_ESTABLISHED:
                        return False
                except OSError:
                    pass
            return bool(raw.recv(1, _PEEK_FLAGS) == b"")
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # reset by the peer, or already closed here
            return True

    def _take(self) -> list[Envelope]:
        """Wait until something is queued; take all of it.

        One lock round trip per wake-up: taking the queue also re-arms the
        wake-up, so the next call waits without the lock (``_wake`` is set
        by whoever queues after the take, and stays set until the next take).
        """
        lock = self._broker._lock
        wake = self._wake
        while True:
            wake.wait()
            with lock:
                if self._closed:
                    if self._queue:  # the final frame; the wake-up stays set
                        batch, self._queue = self._queue, []
                        return batch
                    self._broker._finish_locked(self)
                    raise StopIteration
                self._waiting = True
                wake.clear()
                if self._queue:
                    batch, self._queue = self._queue, []
                    return batch

    def close(self) -> None:
        """End this stream and release it from the broker (idempotent)."""
        self._broker._release(self)

    def _close_locked(self, final: bytes | None = None) -> None:
        self._closed = True
        self._queue.clear()
        if final is not None:
            self._queue.append(Envelope(None, None, ALL, None, final))
        self._waiting = False
        self._wake.set()


class SSEBroker:
    """A thread-safe Server-Sent Events broker.

    Publish from any thread or greenlet with :meth:`send`, :meth:`broadcast`
    and :meth:`broadcast_to_topic`; each returns at once after queueing the
    event for the local connections it is for. A connection that falls
    ``event_buffer_size`` events behind is handled by the ``overflow`` policy
    instead of growing, and a client that reconnects with its last event id is
    replayed what it missed from the history.

    :param config: the configuration; ``SSEConfig()`` when omitted.
    :param backend: what carries events; chosen from ``config.redis_url`` when
        omitted.
    """

    #: Under gevent, wake the streams a publish feeds through one hub callback
    #: that switches to each in turn, instead of an ``Event`` per stream (see
    #: ``_wake.py``). Set to ``False`` to fall back to one ``Event`` each.
    batched_wakeups = True

    def __init__(self, config: SSEConfig | None = None, backend: Backend | None = None) -> None:
        self.config = config if config is not None else SSEConfig()
        self._backend_given = backend is not None
        #: Guards the client, connection and topic registries, every
        #: connection's queue, the in-process history and the counters.
        self._lock = threading.Lock()
        self._reset_state()
        self.backend: Backend = backend if backend is not None else self._make_backend()
        self.backend.bind(self)
        _live_brokers.add(self)

    def _reset_state(self) -> None:
        self._clients: dict[str, SSEClient] = {}
        self._connections: set[SSEConnection] = set()
        self._topics: dict[str, set[SSEConnection]] = {}
        #: client id -> (topics, expiry) of clients whose last connection ended.
        self._sessions: dict[str, tuple[frozenset[str], float]] = {}
        self._counters = dict.fromkeys(
            ("published", "queued", "dropped", "overflow_disconnects", "connections_opened"), 0
        )
        self._closing = False
        self._open_streams = 0
        #: Set by a delivery that left some queue more than half full.
        self._pressure = False
        #: Work a delivery found to do once the lock is released.
        self._after_lock: deque[tuple[t.Any, ...]] = deque()
        self._started = False
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._drained = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    def _make_backend(self) -> Backend:
        if self.config.redis_url:
            from .backends.redis import RedisBackend

            return RedisBackend(
                self.config.redis_url, history_size=self.config.history_size, prefix=self.config.redis_prefix
            )
        from .backends.memory import MemoryBackend

        return MemoryBackend(self.config.history_size)

    def configure(self, config: SSEConfig) -> None:
        """Replace the configuration.

        Limits, hooks, policies and the heartbeat interval apply from the next
        operation on. The backend (``redis_url``, ``redis_prefix``,
        ``history_size``) can only change while no stream is open; changing it
        starts a new history.

        :raises RuntimeError: the backend would change under open streams.
        """
        old = self.config
        backend_changed = not self._backend_given and (
            (old.redis_url, old.redis_prefix, old.history_size)
            != (config.redis_url, config.redis_prefix, config.history_size)
        )
        if not backend_changed:
            self.config = config
            if self._started and config.heartbeat_seconds > 0:
                self._start_heartbeats()
            return
        with self._lock:
            if self._connections:
                raise RuntimeError(
                    "redis_url, redis_prefix and history_size cannot change while streams are open"
                )
            self.config = config
            previous, self.backend = self.backend, self._make_backend()
            self.backend.bind(self)
        if self._started:
            previous.close()
            self.backend.start()
            if config.heartbeat_seconds > 0:
                self._start_heartbeats()

    # -- lifecycle -----------------------------------------------------------

    def _ensure_started(self) -> None:
        if os.getpid() != self._pid:
            self._after_fork()
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
            # Made now, not at import: under gevent they must be the
            # monkey-patched kind, and patching may come after the import.
            self._stop = threading.Event()
            self._drained = threading.Event()
        self.backend.start()
        self._start_heartbeats()
        if self.config.handle_sigterm:
            # Installed at registration already, unless the app was imported
            # before a fork (gunicorn --preload). From a request this works
            # where requests run on the main thread: greenlets under gevent.
            install_sigterm_handler()

    def _start_heartbeats(self) -> None:
        with self._lock:
            if self._heartbeat_thread is not None or self._closing:
                return
            self._heartbeat_thread = threading.Thread(
                target=self._run_heartbeats, name="sse-heartbeat", daemon=True
            )
        self._heartbeat_thread.start()

    def _after_fork(self) -> None:
        # A forked worker inherits the parent's registries and no threads.
        self._lock = threading.Lock()
        self._reset_state()
        self.backend.reset_after_fork()

    def _run_heartbeats(self) -> None:
        # Wakes at least once a second so a reconfigured interval applies at
        # once; with heartbeats off it still forgets expired sessions.
        last = time.monotonic()
        while True:
            interval = self.config.heartbeat_seconds
            due = last + (interval or _SESSION_SWEEP)
            if self._stop.wait(max(0.0, min(due - time.monotonic(), 1.0))):
                return
            now = time.monotonic()
            if now < due:
                continue
            last = now
            try:
                self._beat(heartbeats=interval > 0)
            except Exception:  # pragma: no cover - keep beating whatever happens
                logger.exception("heartbeat pass failed")

    def _beat(self, heartbeats: bool = True) -> None:
        """Queue a heartbeat on every idle connection; forget expired sessions."""
        now = time.monotonic()
        with self._lock:
            for conn in self._connections if heartbeats else ():
                if not conn._queue:
                    conn._queue.append(_HEARTBEAT)
                    if conn._waiting:
                        conn._waiting = False
                        conn._wake.set()
            expired = [cid for cid, (_, expiry) in self._sessions.items() if expiry <= now]
            for cid in expired:
                del self._sessions[cid]

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting streams, end every stream, stop background work.

        Each stream is sent a ``retry:`` hint and ended, so clients reconnect
        (to another worker, or to this one once it is back). Waits up to
        ``timeout`` seconds for the servers to finish the streams.
        """
        retry = self.config.retry + secrets.randbelow(self.config.retry + 1)
        final = b"retry: %d\n\n" % retry
        with self._lock:
            self._closing = True
            connections = list(self._connections)
            gone = [self._detach_locked(conn, final) for conn in connections]
            if not self._open_streams:
                self._drained.set()
        for client in gone:
            if client is not None:
                self._notify_disconnected(client)
        self._stop.set()
        if connections and timeout > 0:
            self._drained.wait(timeout)
        try:
            self.backend.close()
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("closing the backend failed")
        logger.info("SSE broker shut down; %d streams ended", len(connections))

    @property
    def closing(self) -> bool:
        return self._closing

    # -- connections ---------------------------------------------------------

    def connect(self, client_id: str | None = None, metadata: dict[str, t.Any] | None = None) -> SSEClient:
        """Register a client with a new live connection and return its record.

        The connection is ``client.connections[-1]``; iterate it to read the
        stream. The connect route uses :meth:`open_stream`, which also replays.
        """
        return self.open_stream(client_id, metadata=metadata).client

    def open_stream(
        self,
        client_id: str | None = None,
        *,
        topics: t.Iterable[str] = (),
        last_event_id: str | None = None,
        metadata: dict[str, t.Any] | None = None,
        token: str | None = None,
    ) -> SSEConnection:
        """Open a connection for ``client_id`` (a new random id when ``None``),
        subscribe it to ``topics`` and prepare its first frames: ``retry:``,
        ``event: connected``, ``event: reset`` if the cursor is too old, then
        the events missed since ``last_event_id``.

        :raises BrokerUnavailable: shutting down or at ``max_connections``.
        :raises InvalidTopic, TooManyTopics, InvalidEventId: bad arguments.
        """
        topic_set = self.validate_topics(topics)
        if last_event_id is not None:
            self.validate_event_id(last_event_id)
        if client_id is None:
            client_id = new_client_id()
        else:
            validate_client_id(client_id)
        self._ensure_started()
        limit = self.config.max_connections
        remembered = self._recall(client_id)
        with self._lock:
            if self._closing:
                raise BrokerUnavailable("the server is shutting down", retry_after=5)
            if limit is not None and len(self._connections) >= limit:
                raise TooManyConnections(limit)
            client = self._clients.get(client_id)
            first = client is None
            if client is None:
                client = SSEClient(client_id, metadata)
                client._topics.update(remembered)
            elif metadata:
                client.metadata.update(metadata)
            merged = self._check_topic_count(client._topics | topic_set)
            if first:
                self._clients[client_id] = client
                self._sessions.pop(client_id, None)
            conn = SSEConnection(self, client)
            client._connections.append(conn)
            self._connections.add(conn)
            self._open_streams += 1
            self._counters["connections_opened"] += 1
            self._index_locked((conn,), merged)
            client._topics = merged
        # The connection is registered, so live events already queue for it;
        # the replay below covers everything before, and duplicates are skipped.
        try:
            replay = self.backend.replay(last_event_id)
        except Exception:
            self._release(conn)
            raise
        conn._head = self._first_frames(conn, replay, token)
        if replay.envelopes:
            conn._skip_through = replay.envelopes[-1].key
        if first:
            self._notify(self.config.on_connect, signals.client_connected, client)
        return conn

    def _first_frames(self, conn: SSEConnection, replay: Replay, token: str | None) -> list[bytes]:
        client = conn.client
        hello = {
            "clientId": client.id,
            "token": token,
            "topics": sorted(client._topics),
            "lastEventId": replay.cursor,
            "heartbeat": int(self.config.heartbeat_seconds * 1000),
        }
        frames = [control_frame("connected", hello, id=replay.cursor, retry=self.config.retry)]
        if replay.reset:
            frames.append(control_frame("reset", {"lastEventId": replay.cursor}))
        frames.extend(e.frame for e in replay.envelopes if e.reaches(client.id, client._topics))
        return frames

    def _release(self, conn: SSEConnection) -> None:
        """The server ended the stream: forget the connection; the client's
        record goes with its last one."""
        with self._lock:
            self._finish_locked(conn)
            if conn._released:
                return
            gone = self._detach_locked(conn)
        if gone is not None:
            self._notify_disconnected(gone)

    def _finish_locked(self, conn: SSEConnection) -> None:
        if not conn._finished:
            conn._finished = True
            self._open_streams -= 1
            if self._closing and not self._open_streams:
                self._drained.set()

    def _detach_locked(self, conn: SSEConnection, final: bytes | None = None) -> SSEClient | None:
        """Close a connection and remove it from every registry, so nothing
        more is queued for it; its stream ends once ``final`` is written."""
        if conn._released:
            return None
        conn._released = True
        conn._close_locked(final)
        self._connections.discard(conn)
        client = conn.client
        self._unindex_locked((conn,), client._topics)
        client._connections.remove(conn)
        if client._connections or self._clients.get(client.id) is not client:
            return None
        del self._clients[client.id]
        if self.config.session_ttl > 0 and client._topics:
            self._sessions[client.id] = (
                frozenset(client._topics),
                time.monotonic() + self.config.session_ttl,
            )
        return client

    def _recall(self, client_id: str) -> frozenset[str]:
        with self._lock:
            session = self._sessions.get(client_id)
            if session is not None and session[1] > time.monotonic():
                return session[0]
            if client_id in self._clients:
                return frozenset()
        return self.backend.recall(client_id) or frozenset()

    def _notify(self, hook: t.Callable[[SSEClient], None] | None, signal_: t.Any, client: SSEClient) -> None:
        if hook is not None:
            try:
                hook(client)
            except Exception:
                logger.exception("SSE hook %r failed for client %r", hook, client.id)
        if signal_.receivers:
            signal_.send(self, client=client)

    def _notify_disconnected(self, client: SSEClient) -> None:
        self._notify(self.config.on_disconnect, signals.client_disconnected, client)

    def disconnect(self, client_id: str) -> int:
        """Close every connection of ``client_id``; return how many closed here."""
        return self.backend.disconnect(client_id)

    def _disconnect_local(self, client_id: str) -> int:
        gone = None
        with self._lock:
            client = self._clients.get(client_id)
            self._sessions.pop(client_id, None)
            if client is None:
                return 0
            connections = list(client._connections)
            for conn in connections:
                gone = self._detach_locked(conn) or gone
        if gone is not None:
            self._notify_disconnected(gone)
        return len(connections)

    # -- topics --------------------------------------------------------------

    def validate_topics(self, topics: t.Iterable[str]) -> frozenset[str]:
        """Check topic names against the limits; return them as a set.

        :raises InvalidTopic: not a string, empty, too long, or holding a
            control character.
        :raises TooManyTopics: more than ``max_topics_per_connection``.
        """
        if isinstance(topics, str):
            raise TypeError("pass topics as separate arguments or a list, not one str")
        result = set()
        limit = self.config.max_topics_per_connection
        for topic in topics:
            result.add(self.validate_topic(topic))
            if len(result) > limit:
                raise TooManyTopics(len(result), limit)
        return frozenset(result)

    def validate_topic(self, topic: str) -> str:
        if not isinstance(topic, str):
            raise InvalidTopic(repr(topic), "a topic must be a string")
        if not topic:
            raise InvalidTopic(topic, "a topic must not be empty")
        if len(topic) > self.config.max_topic_length:
            raise InvalidTopic(topic, f"longer than {self.config.max_topic_length} characters")
        if not topic.isprintable():
            raise InvalidTopic(topic, "control characters are not allowed")
        return topic

    def validate_event_id(self, value: str) -> str:
        """Check a client-supplied last event id; raise :exc:`InvalidEventId`."""
        if not isinstance(value, str) or len(value) > MAX_ID_LENGTH:
            raise InvalidEventId(str(value))
        try:
            check_event_id(value)
        except ValueError:
            raise InvalidEventId(value) from None
        if not self.backend.is_valid_id(value):
            raise InvalidEventId(value)
        return value

    def subscribe(self, client_id: str, *topics: str | t.Collection[str]) -> frozenset[str]:
        """Add topics to a client (all its connections); return its topics.

        Topics are separate arguments, or one list of them.

        :raises ClientNotFound: the client is neither connected nor remembered.
        """
        return self.backend.subscribe(client_id, self.validate_topics(_topic_args(topics)))

    def unsubscribe(self, client_id: str, *topics: str | t.Collection[str]) -> frozenset[str]:
        """Remove topics from a client; return its topics. Arguments as for
        :meth:`subscribe`."""
        return self.backend.unsubscribe(client_id, self.validate_topics(_topic_args(topics)))

    def _subscribe_local(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                return self._update_session_locked(client_id, topics, add=True)
            merged = self._check_topic_count(client._topics | set(topics))
            self._index_locked(client._connections, merged - client._topics)
            client._topics = merged
            return frozenset(merged)

    def _unsubscribe_local(self, client_id: str, topics: t.Collection[str]) -> frozenset[str]:
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                return self._update_session_locked(client_id, topics, add=False)
            self._unindex_locked(client._connections, client._topics & set(topics))
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
        self._sessions[client_id] = (self._check_topic_count(updated), expiry)
        return updated

    def _check_topic_count(self, topics: _T) -> _T:
        """Return ``topics`` if a client may hold that many; raise
        :exc:`TooManyTopics` otherwise."""
        limit = self.config.max_topics_per_connection
        if len(topics) > limit:
            raise TooManyTopics(len(topics), limit)
        return topics

    def _index_locked(self, connections: t.Iterable[SSEConnection], topics: t.Iterable[str]) -> None:
        """Make ``connections`` recipients of ``topics`` in the topic index."""
        for topic in topics:
            self._topics.setdefault(topic, set()).update(connections)

    def _unindex_locked(self, connections: t.Collection[SSEConnection], topics: t.Iterable[str]) -> None:
        """Remove ``connections`` from ``topics``; drop topics left empty."""
        for topic in topics:
            members = self._topics.get(topic)
            if members is not None:
                members.difference_update(connections)
                if not members:
                    del self._topics[topic]

    # -- publishing ----------------------------------------------------------

    def send(self, client_id: str, data: t.Any, **fields: t.Any) -> int:
        """Send to every connection of one client (and to its replay history).

        ``data`` is an :class:`SSEEvent`, or any JSON-serialisable value with
        the event's other fields as keywords (``event=``, ``retry=``,
        ``raw=``). Returns the number of local connections it was queued for.
        """
        if not isinstance(client_id, str):
            raise TypeError(f"client_id must be a str, not {type(client_id).__name__}")
        return self._publish(CLIENT, client_id, data, fields)

    def broadcast(self, data: t.Any, **fields: t.Any) -> int:
        """Send to every connected client; arguments as for :meth:`send`."""
        return self._publish(ALL, None, data, fields)

    def broadcast_to_topic(self, topic: str, data: t.Any, **fields: t.Any) -> int:
        """Send to every client subscribed to ``topic``; arguments as for :meth:`send`."""
        return self._publish(TOPIC, self.validate_topic(topic), data, fields)

    def _publish(self, kind: str, target: str | None, data: t.Any, fields: dict[str, t.Any]) -> int:
        if isinstance(data, SSEEvent):
            if fields:
                raise TypeError("set the fields on the SSEEvent, not as keywords, when passing one")
            event = data
        else:
            event = SSEEvent(data, **fields)
        body = event.body
        if len(body) > self.config.max_event_bytes:
            raise EventTooLarge(len(body), self.config.max_event_bytes)
        if os.getpid() != self._pid:
            self._after_fork()
        queued = self.backend.publish(kind, target, body)
        if self._after_lock:
            self._run_after_lock()
        if self._pressure:
            # A recipient is falling behind: let the streams run before the
            # next publish (under gevent a publisher in a loop never yields).
            self._pressure = False
            flush_wakeups()
            time.sleep(0)
        if signals.event_published.receivers:
            signals.event_published.send(self, event=event, target=kind, key=target, queued=queued)
        return queued

    def _deliver(self, envelope: Envelope) -> int:
        """Queue an event that a backend received from elsewhere."""
        with self._lock:
            queued = self._deliver_locked(envelope)
        if self._after_lock:
            self._run_after_lock()
        return queued

    def _deliver_locked(self, envelope: Envelope) -> int:
        """Fan an event out to its local recipients; caller holds the lock."""
        kind = envelope.kind
        if kind == TOPIC:
            recipients: t.Iterable[SSEConnection] = self._topics.get(envelope.target, ())  # type: ignore[arg-type]
        elif kind == ALL:
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
                self._pressure = True
            if conn._waiting:
                conn._waiting = False
                conn._wake.set()
        counters = self._counters
        counters["published"] += 1
        counters["queued"] += queued
        if overflowed:
            queued += self._overflow_locked(overflowed, envelope)
        return queued

    def _overflow_locked(self, connections: list[SSEConnection], envelope: Envelope) -> int:
        policy = self.config.overflow
        queued = 0
        gone = []
        for conn in connections:
            conn.dropped += 1
            self._counters["dropped"] += 1
            if policy == "drop_oldest":
                del conn._queue[0]
                conn._queue.append(envelope)
                queued += 1
            else:
                # The client reconnects with its last id and replays the rest.
                self._counters["overflow_disconnects"] += 1
                client = self._detach_locked(conn)
                if client is not None:
                    gone.append(client)
        # Logging, hooks and signals never run under the lock: the publisher
        # runs them once it has released it.
        first = [c for c in connections if c.dropped == 1]
        if first or gone or signals.event_dropped.receivers:
            self._after_lock.append((self._after_overflow, connections, first, gone))
        return queued

    def _after_overflow(
        self, connections: list[SSEConnection], first: list[SSEConnection], gone: list[SSEClient]
    ) -> None:
        policy = self.config.overflow
        for conn in first:
            logger.warning(
                "client %r reads too slowly: its buffer of %d events overflowed (%s)",
                conn.client.id,
                self.config.event_buffer_size,
                policy,
            )
        if signals.event_dropped.receivers:
            for conn in connections:
                signals.event_dropped.send(self, client=conn.client, connection=conn, policy=policy)
        for client in gone:
            self._notify_disconnected(client)

    def _run_after_lock(self) -> None:
        pending = self._after_lock
        while pending:
            try:
                task, *args = pending.popleft()
            except IndexError:
                break
            task(*args)

    # -- queries -------------------------------------------------------------

    def client_count(self, *, cluster: bool = False) -> int:
        """Connected client ids: here, or across the cluster with ``cluster=True``
        (the same with the in-process backend)."""
        return self.backend.client_count() if cluster else self._client_count_local()

    def _client_count_local(self) -> int:
        with self._lock:
            return len(self._clients)

    def _is_connected_local(self, client_id: str) -> bool:
        with self._lock:
            return client_id in self._clients

    def is_connected(self, client_id: str) -> bool:
        """Whether the client has a live connection (anywhere the backend sees)."""
        return self.backend.is_connected(client_id)

    def get_client(self, client_id: str) -> SSEClient | None:
        """The record of a connected client, or ``None``."""
        with self._lock:
            return self._clients.get(client_id)

    def clients_by_topic(self, topic: str, *, cluster: bool = False) -> list[str]:
        """Ids of the clients subscribed to ``topic`` with a live connection."""
        return self.backend.clients_by_topic(topic) if cluster else self._clients_by_topic_local(topic)

    def _clients_by_topic_local(self, topic: str) -> list[str]:
        with self._lock:
            return sorted({conn.client.id for conn in self._topics.get(topic, ())})

    def last_event_id(self) -> str | None:
        """The newest event id, for a page to embed and connect from."""
        return self.backend.last_event_id()

    def stats(self) -> dict[str, t.Any]:
        """Counters and sizes, cheap enough to poll."""
        with self._lock:
            result: dict[str, t.Any] = dict(self._counters)
            result.update(
                clients=len(self._clients),
                connections=len(self._connections),
                topics=len(self._topics),
                sessions=len(self._sessions),
                queued_now=sum(len(c._queue) for c in self._connections),
                closing=self._closing,
            )
        try:
            result["last_event_id"] = self.last_event_id()
        except BackendError as e:  # stats must answer while Redis is down
            result["last_event_id"] = None
            result["backend_error"] = str(e)
        result["backend"] = type(self.backend).__name__
        return result


def _topic_args(topics: tuple[t.Any, ...]) -> t.Iterable[t.Any]:
    """``subscribe("a", "b")`` or ``subscribe(["a", "b"])``: the topics."""
    if len(topics) == 1 and isinstance(topics[0], (list, tuple, set, frozenset)):
        return tuple(topics[0])
    return topics


def new_client_id() -> str:
    """A random, unguessable client id."""
    return secrets.token_urlsafe(16)


def validate_client_id(client_id: str) -> str:
    if not isinstance(client_id, str):
        raise TypeError(f"client_id must be a str, not {type(client_id).__name__}")
    if not client_id or len(client_id) > MAX_ID_LENGTH or not client_id.isprintable():
        raise ValueError(f"invalid client id {client_id[:80]!r}")
    return client_id


def _spawn(target: t.Callable[..., None], *args: t.Any) -> None:
    """Run ``target`` soon, in a new greenlet under gevent, else a thread."""
    if gevent_patched():
        import gevent

        gevent.spawn(target, *args)
    else:
        threading.Thread(target=target, args=args, daemon=True).start()


# -- process exit ------------------------------------------------------------

_live_brokers: weakref.WeakSet[SSEBroker] = weakref.WeakSet()
#: The process the SIGTERM handler was installed in: a forked worker (gunicorn
#: ``--preload``) inherits the flag but not the handler, which gunicorn resets.
_sigterm_pid: int | None = None


def _shutdown_all(timeout: float = 2.0) -> None:
    for broker in list(_live_brokers):
        if broker._started and not broker._closing and broker._pid == os.getpid():
            broker.shutdown(timeout=timeout)


atexit.register(_shutdown_all, 0.5)


def install_sigterm_handler() -> bool:
    """End every stream of every broker on SIGTERM, then run the handler that
    was there before (gunicorn's graceful exit, or the default).

    Gunicorn gives a worker no hook before its graceful period; without this,
    open streams hold the worker until ``graceful_timeout`` kills it. Only the
    main thread may set a signal handler: elsewhere this does nothing. Returns
    whether the handler was installed (once per process).
    """
    global _sigterm_pid
    if _sigterm_pid == os.getpid():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    pid = os.getpid()

    def on_sigterm(signum: int, frame: t.Any) -> None:
        if os.getpid() == pid:
            logger.info("SIGTERM: ending SSE streams")
            if callable(previous):
                # Runs at any point of the main thread, possibly inside the lock
                # of a broker: do the work elsewhere.
                _spawn(_shutdown_all)
                previous(signum, frame)
                return
            helper = threading.Thread(target=_shutdown_all, args=(1.0,), daemon=True)
            helper.start()
            helper.join(1.5)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (a gthread request, say)
        return False
    _sigterm_pid = pid
    return True
