"""The broker: the public API over a :class:`~._hub.Hub` and a backend.

``publish -> backend -> hub -> connection queue -> stream -> socket``: the
broker validates what callers hand it, asks the backend to carry each event
(the backend assigns its id and hands it to the hub, in every process that may
hold a recipient), opens streams with their replay, and runs the heartbeat
thread and the lifecycle. The state and the one lock live in the hub.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import typing as t

from . import signals
from ._announce import Announcer
from ._heartbeat import run_heartbeats
from ._hub import Hub
from ._metrics import Metrics, metrics_for
from ._process import ForkWatch, install_sigterm_handler, register_shutdown
from ._socket import abort
from ._topics import Subscriptions, check_publish_topic, check_topic
from ._wake import flush as flush_wakeups
from ._wake import new_wake
from ._watchers import Watchers
from ._wire import MAX_ID_LENGTH, Audience, check_event_id, new_client_id, shared_frame, validate_client_id
from .backends import Backend, Replay, backend_for
from .config import SSEConfig
from .event import SSEEvent
from .exceptions import BackendError, EventTooLarge, InvalidEventId, TooManyTopics

if t.TYPE_CHECKING:
    from ._connection import SSEClient, SSEConnection

logger = logging.getLogger("flask_sse_broker")

_Item = tuple[Audience, str | None, SSEEvent]  # one publish: who it is for, and the event


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
        self._hub = Hub(self.config)
        self._announcer = Announcer(self)
        self._hub.overflow_watcher = self._announcer
        self._fork = ForkWatch()
        self._started = False
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self.backend: Backend = backend if backend is not None else backend_for(self.config)
        self._attach(self.backend)
        self._metrics: Metrics | None = metrics_for(self.config.metrics, None, self._hub, self._check_fork)
        register_shutdown(self._shutdown_at_exit)

    def _attach(self, backend: Backend) -> None:
        """Bind ``backend`` to the hub; its presence hears of clients first."""
        backend.bind(self._hub)
        self._hub.watchers = Watchers([backend, self._announcer])

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
            (old.redis_url, old.redis_cluster, old.redis_prefix, old.history_size)
            != (config.redis_url, config.redis_cluster, config.redis_prefix, config.history_size)
        )
        if not backend_changed:
            self.config = self._hub.config = config
            self._metrics = metrics_for(config.metrics, self._metrics, self._hub, self._check_fork)
            if self._started and config.heartbeat_seconds > 0:
                self._start_heartbeats()
            return
        if self._hub.client_count():
            raise RuntimeError(
                "redis_url, redis_prefix and history_size cannot change while streams are open"
            )
        self.config = self._hub.config = config
        self._metrics = metrics_for(config.metrics, self._metrics, self._hub, self._check_fork)
        previous, self.backend = self.backend, backend_for(config)
        self._attach(self.backend)
        if self._started:
            previous.close()
            self.backend.start()
            if config.heartbeat_seconds > 0:
                self._start_heartbeats()

    # -- lifecycle -----------------------------------------------------------

    def _ensure_started(self) -> None:
        self._check_fork()
        if self._started:
            return
        with self._hub.lock:
            if self._started:
                return
            self._started = True
            # Made now, not at import: under gevent they must be the
            # monkey-patched kind, and patching may come after the import.
            self._stop = threading.Event()
        self._hub.start()
        self.backend.start()
        self._start_heartbeats()
        if self._metrics is not None:
            self._metrics.ensure_running()
        if self.config.handle_sigterm:
            # Installed at registration already, unless the app was imported
            # before a fork (gunicorn --preload). From a request this works
            # where requests run on the main thread: greenlets under gevent.
            install_sigterm_handler()

    def _check_fork(self) -> None:
        if self._fork.forked():
            # A forked worker inherits the parent's registries and no threads.
            self._started = False
            self._heartbeat_thread = None
            self._hub.reset()
            self.backend.reset_after_fork()

    def _start_heartbeats(self) -> None:
        with self._hub.lock:
            if self._heartbeat_thread is not None or self._hub.closing:
                return
            self._heartbeat_thread = threading.Thread(
                target=run_heartbeats,
                args=(self._hub, lambda: self.config.heartbeat_seconds, lambda t: self._stop.wait(t)),
                name="sse-heartbeat",
                daemon=True,
            )
        self._heartbeat_thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting streams, end every stream, stop background work.

        Each stream is sent a ``retry:`` hint and ended, so clients reconnect
        (to another worker, or to this one once it is back). Waits up to
        ``timeout`` seconds for the servers to finish the streams; the sockets
        of streams still writing after half of it are shut down.
        """
        retry = self.config.retry + secrets.randbelow(self.config.retry + 1)
        hub = self._hub
        # A stream dropped earlier (overflow, disconnect) whose write is blocked
        # by a peer that stopped reading holds its worker until write_timeout:
        # only shutting its socket down ends that write.
        dropped = hub.unfinished(dropped=True)
        ended = hub.close_all(b"retry: %d\n\n" % retry)
        self._stop.set()
        for conn in dropped:
            abort(conn._peer)
        if timeout > 0 and not hub.drained.wait(timeout / 2):
            # Registered streams still blocked writing their final frame.
            for conn in hub.unfinished():
                abort(conn._peer)
            hub.drained.wait(timeout / 2)
        try:
            self.backend.close()
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("closing the backend failed")
        logger.info("SSE broker shut down; %d streams ended", ended)

    def _shutdown_at_exit(self, timeout: float) -> None:
        self._check_fork()  # a forked child ends only its own streams
        if self._started and not self._hub.closing:
            self.shutdown(timeout=timeout)

    @property
    def closing(self) -> bool:
        return self._hub.closing

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
        reset: bool = False,
        shared: bool = False,
        new_client: bool = False,
    ) -> SSEConnection:
        """Open a connection for ``client_id`` (a new random id when ``None``),
        subscribe it to ``topics`` and prepare its first frames: ``retry:``,
        ``event: connected``, ``event: reset`` if the cursor is too old, then
        the events missed since ``last_event_id``.

        ``reset`` sends ``event: reset`` even without a cursor (the client had
        one the server cannot honour, e.g. it came with a stale token).
        ``shared`` makes a stream for a browser's SharedWorker, which hands each
        event only to the tabs it is for: every event's data starts with a line
        naming its topic (see :func:`~flask_sse_broker._wire.shared_frame`).
        ``new_client=True``: the caller minted ``client_id`` just now, so no
        process remembers it and the backend is not asked (a storm of new
        clients costs no lookup each).

        :raises BrokerUnavailable: shutting down.
        :raises TooManyConnections: at ``max_connections``.
        :raises InvalidTopic, TooManyTopics, InvalidEventId: bad arguments.
        """
        topic_set = self.validate_topics(topics)
        if last_event_id is not None:
            self.validate_event_id(last_event_id)
        if client_id is None:
            client_id, new_client = new_client_id(), True
        else:
            validate_client_id(client_id)
        self._ensure_started()
        hub = self._hub
        remembered = hub.remembered(client_id)
        if remembered is None:
            remembered = frozenset() if new_client else self.backend.recall(client_id) or frozenset()
        conn, first = hub.open(client_id, topic_set, metadata, remembered, new_wake(self.batched_wakeups))
        conn._shared = shared
        # The connection is registered, so live events already queue for it;
        # the replay below covers everything before, and duplicates are skipped.
        try:
            self.backend.prepare(conn.client, new_client=new_client)
            replay = self.backend.replay(last_event_id)
        except Exception:
            conn.close()
            raise
        client = conn.client
        if reset:
            replay.reset = True
        conn._head = self._first_frames(client, replay, token, shared)
        conn._skip_through = replay.skip_through
        if first:
            hub.opened(client)
        return conn

    def _first_frames(
        self, client: SSEClient, replay: Replay, token: str | None, shared: bool = False
    ) -> list[bytes]:
        topics = client.topics
        hello = {
            "clientId": client.id,
            "token": token,
            "topics": sorted(topics),
            "lastEventId": replay.cursor,
            "heartbeat": int(self.config.heartbeat_seconds * 1000),
        }
        frames = [_control_frame("connected", hello, id=replay.cursor, retry=self.config.retry)]
        if replay.reset:
            frames.append(_control_frame("reset", {"lastEventId": replay.cursor}))
        if replay.envelopes:
            subscriptions = Subscriptions(topics)
            replayed = [e for e in replay.envelopes if e.reaches(client.id, subscriptions)]
            frames.extend(shared_frame(e) if shared else e.frame for e in replayed)
        return frames

    def disconnect(self, client_id: str) -> int:
        """Close every connection of ``client_id``; return how many closed here."""
        return self.backend.disconnect(client_id)

    # -- topics --------------------------------------------------------------

    def validate_topics(self, topics: t.Iterable[str]) -> frozenset[str]:
        """Check topics and patterns against the limits; return them as a set.

        :raises InvalidTopic: not a string, empty, too long, holding a
            control character, or a misplaced ``*``.
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
        """Check a topic or a pattern (see docs/patterns.rst); raise
        :exc:`InvalidTopic`."""
        return check_topic(topic, self.config.max_topic_length)

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

    def revoke(self, topic: str, client_id: str | None = None) -> int:
        """Take a topic or pattern, exactly as written, from one client, or
        from every client holding it, in every process the backend reaches
        (docs/revoke.rst). Each of their connections is sent ``event:
        revoked`` (no ``id:``), then nothing more that reached it only through
        it, queued events included; sessions lose it too, so getting it back
        takes a new request, through ``authorize()``.

        :returns: the number of clients connected here that held it.
        :raises InvalidTopic: ``topic`` is not a valid topic or pattern.
        """
        topic = self.validate_topic(topic)
        if client_id is not None:
            validate_client_id(client_id)
        return self.backend.revoke(topic, client_id)

    # -- publishing ----------------------------------------------------------

    def send(
        self, client_id: str, data: t.Any, *, idempotency_key: str | None = None, **fields: t.Any
    ) -> int:
        """Send to every connection of one client (and to its replay history).

        ``data`` is an :class:`SSEEvent`, or any JSON-serialisable value with
        the event's other fields as keywords (``event=``, ``retry=``,
        ``raw=``). Returns the number of local connections it was queued for.

        Publishes with the same ``idempotency_key`` store and deliver the
        event once: after :exc:`BackendError`, publish again with
        ``idempotency_key=error.idempotency_key`` (see docs/reliability.rst).
        """
        if not isinstance(client_id, str):
            raise TypeError(f"client_id must be a str, not {type(client_id).__name__}")
        return self._publish(Audience.CLIENT, client_id, data, fields, idempotency_key)

    def broadcast(self, data: t.Any, *, idempotency_key: str | None = None, **fields: t.Any) -> int:
        """Send to every connected client; arguments as for :meth:`send`."""
        return self._publish(Audience.ALL, None, data, fields, idempotency_key)

    def broadcast_to_topic(
        self, topic: str, data: t.Any, *, idempotency_key: str | None = None, **fields: t.Any
    ) -> int:
        """Send to every client subscribed to ``topic``, or to a pattern
        matching it; arguments as for :meth:`send`.

        :raises InvalidTopic: ``topic`` is invalid or a pattern.
        """
        topic = check_publish_topic(topic, self.config.max_topic_length)
        return self._publish(Audience.TOPIC, topic, data, fields, idempotency_key)

    def _publish(
        self, audience: Audience, target: str | None, data: t.Any, fields: dict[str, t.Any], key: str | None
    ) -> int:
        if isinstance(data, SSEEvent):
            if fields:
                raise TypeError("set the fields on the SSEEvent, not as keywords, when passing one")
            event = data
        else:
            event = SSEEvent(data, **fields)
        body = event.body
        if len(body) > self.config.max_event_bytes:
            raise EventTooLarge(len(body), self.config.max_event_bytes)
        self._check_fork()
        if key is None:
            queued = self.backend.publish(audience, target, body)
        else:  # passed only when given, so a backend written before it still works
            if not isinstance(key, str) or not 0 < len(key) <= MAX_ID_LENGTH:
                raise ValueError(f"idempotency_key must be a str of 1 to {MAX_ID_LENGTH} characters")
            queued = self.backend.publish(audience, target, body, idempotency_key=key)
        self._published(((audience, target, event),), (queued,))
        return queued

    def _publish_events(self, items: t.Sequence[_Item]) -> list[str]:
        """Publish checked items in order (``POST /publish``); their ids."""
        self._check_fork()
        bodies = [(audience, target, event.body) for audience, target, event in items]
        # In process, one at a time: streams may write between two events.
        step = 1 if self.backend.delivers_in_caller else len(bodies)
        results: list[tuple[str, int]] = []
        for i in range(0, len(bodies), step):
            results += self.backend.publish_batch(bodies[i : i + step])
            self._published(items[i : i + step], [queued for _, queued in results[i:]])
        return [event_id for event_id, _ in results]

    def _published(self, items: t.Sequence[_Item], queued: t.Sequence[int]) -> None:
        """After the backend took events: the hub's after-lock work, a yield
        if a stream falls behind, metrics, signals."""
        hub = self._hub
        hub.run_after_lock()
        if hub.pressure:
            # A recipient is falling behind: let the streams run before the
            # next publish (under gevent a publisher in a loop never yields).
            hub.pressure = False
            flush_wakeups()
            time.sleep(0)
        if self._metrics is not None:
            self._metrics.count_published(len(items))
        if signals.event_published.receivers:
            for (audience, target, event), n in zip(items, queued, strict=True):
                signals.event_published.send(self, event=event, target=audience.value, key=target, queued=n)

    # -- queries -------------------------------------------------------------

    def client_count(self, *, cluster: bool = False) -> int:
        """Connected client ids: here, or across the cluster with ``cluster=True``
        (the same with the in-process backend)."""
        return self.backend.client_count() if cluster else self._hub.client_count()

    def is_connected(self, client_id: str) -> bool:
        """Whether the client has a live connection (anywhere the backend sees)."""
        return self.backend.is_connected(client_id)

    def get_client(self, client_id: str) -> SSEClient | None:
        """The record of a connected client, or ``None``."""
        return self._hub.client(client_id)

    def clients_by_topic(self, topic: str, *, cluster: bool = False) -> list[str]:
        """Ids of the clients with a live connection that an event on ``topic``
        reaches (holders of matching patterns included); for a pattern, the
        clients holding it as written."""
        return self.backend.clients_by_topic(topic) if cluster else self._hub.clients_by_topic(topic)

    def last_event_id(self) -> str | None:
        """The newest event id, for a page to embed and connect from."""
        return self.backend.last_event_id()

    def stats(self) -> dict[str, t.Any]:
        """Counters and sizes, cheap enough to poll."""
        result = self._hub.stats()
        try:
            result["last_event_id"] = self.last_event_id()
        except BackendError as e:  # stats must answer while Redis is down
            result["last_event_id"] = None
            result["backend_error"] = str(e)
        result["backend"] = type(self.backend).__name__
        return result

    def _debug_state(self, conn: SSEConnection | None = None) -> dict[str, t.Any]:
        """For tests: the hub's registries (``Hub.debug_state``), started, the backend's."""
        state = self._hub.debug_state(conn)
        state["started"] = self._started
        state["backend"] = self.backend.debug_state()
        return state


def _control_frame(event: str, data: t.Any, *, id: str | None = None, retry: int | None = None) -> bytes:
    """Encode a broker-generated event such as ``connected`` or ``reset``."""
    return SSEEvent(data, event=event, retry=retry).encode(id)


def _topic_args(topics: tuple[t.Any, ...]) -> t.Iterable[t.Any]:
    """``subscribe("a", "b")`` or ``subscribe(["a", "b"])``: the topics."""
    if len(topics) == 1 and isinstance(topics[0], (list, tuple, set, frozenset)):
        return tuple(topics[0])
    return topics
