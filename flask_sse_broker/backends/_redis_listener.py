"""The Redis listener: one pub/sub connection per process, read by one thread
(a greenlet under gevent), with catch-up from the stream and reconnection.

It holds only the channels the backend asks for (:attr:`RedisListener.channels`),
plus the broadcast channel. Events reach it in id order across all of them:
one script appends an event to the stream and publishes it, and Redis writes
a connection's messages in the order the publishes ran.

Each time it (re)subscribes, it first delivers what the stream holds after the
last event it delivered, so a Redis blip loses nothing that Redis kept. If it
was away so long that events it never delivered were trimmed, it asks for the
local streams to end, so their clients resume (and are told ``reset``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing as t

import redis

from .._backoff import EqualJitterBackoff
from .._wire import Envelope, Seq, format_event_id, parse_event_id
from ._redis_channels import Channels
from ._redis_keys import RedisKeys, decode_message, entry_envelope, text
from .base import logger


class _Tunables(t.Protocol):
    socket_timeout: float
    connect_timeout: float
    poll_interval: float
    refresh_interval: float
    min_backoff: float
    max_backoff: float


class RedisListener:
    """Subscribes to the bus and hands every event, in id order and once, to
    ``on_event``; control messages to ``on_control``.

    :param on_event: called with each event, from the listener thread.
    :param on_control: called with each control message (a dict).
    :param on_tick: called once subscribed and every ``refresh_interval``
        (presence refresh).
    :param on_gap: called when events it never delivered were trimmed.
    """

    def __init__(
        self,
        client: redis.Redis[bytes],
        pubsub_pool: redis.ConnectionPool,
        keys: RedisKeys,
        tunables: _Tunables,
        *,
        on_event: t.Callable[[Envelope], object],
        on_control: t.Callable[[dict[str, t.Any]], None],
        on_tick: t.Callable[[], None],
        on_gap: t.Callable[[], object],
    ) -> None:
        self._redis = client
        self._pubsub_pool = pubsub_pool
        self._keys = keys
        self._tunables = tunables
        self._on_event = on_event
        self._on_control = on_control
        self._on_tick = on_tick
        self._on_gap = on_gap
        #: Set once the listener is subscribed and knows where it starts.
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The newest event delivered; only the listener thread writes it.
        self._delivered: Seq | None = None
        #: Subscribed and caught up now (cleared while reconnecting).
        self.connected = False
        #: The last attempt to reach Redis failed (set until one succeeds).
        self.failing = False
        #: The pub/sub connection and its channels; the broadcast channel always.
        self.channels = Channels(pubsub_pool, self._handle, self._head)
        self.channels.want([keys.all.encode()])

    @property
    def running(self) -> bool:
        return self._thread is not None

    def position(self) -> str | None:
        """Where a new stream may start without asking Redis: the newest id
        delivered here, while subscribed (``None`` otherwise).

        Read after the stream's connection is registered, every event after
        it reaches the connection live: events are delivered in id order, and
        the listener is subscribed. An event delivered between the read and
        the registration may reach the stream too; it is older than the
        stream's first id, never a gap.
        """
        delivered = self._delivered
        if not self.connected or delivered is None:
            return None
        # A channel that went live lately is complete only after its settle.
        return format_event_id(max(delivered, self.channels.settled))

    def start(self) -> None:
        """Start the thread and wait (briefly) until it is subscribed."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, name="sse-redis-listener", daemon=True)
        self._thread.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until subscribed, or at most one connect and one reply timeout."""
        tunables = self._tunables
        self.ready.wait(tunables.socket_timeout + tunables.connect_timeout)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._tunables.poll_interval + 2 * self._tunables.socket_timeout)

    def _listen(self) -> None:
        tunables = self._tunables
        backoff = EqualJitterBackoff(tunables.min_backoff, tunables.max_backoff)
        failures = 0
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                self._subscribe()
                if failing_since is not None:
                    logger.warning(
                        "Redis listener reconnected after %.1fs; delivery resumes",
                        time.monotonic() - failing_since,
                    )
                    failing_since = None
                failures = 0
                self._run()
            except (redis.RedisError, OSError) as e:
                self.connected = False
                self.failing = True
                if self._stop.is_set():
                    break
                failures += 1
                delay = backoff.compute(failures)
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.error("Redis listener lost its connection (%s); reconnecting with backoff", e)
                else:
                    logger.info("Redis listener still cannot connect (%s); next try in %.1fs", e, delay)
                self._stop.wait(delay)
            except Exception:  # pragma: no cover - a bug must not end delivery
                logger.exception("Redis listener failed; restarting it")
                self._stop.wait(tunables.max_backoff)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):  # closing a broken socket
                    self.channels.disconnect()

    def _head(self) -> Seq | None:
        """The stream's newest id (``None`` before any event)."""
        value = self._redis.get(self._keys.last)
        return parse_event_id(value.decode()) if value else None

    def _subscribe(self) -> None:
        """Subscribe, then deliver what the stream holds that the channels did
        not carry to this process (everything after its last delivered id)."""
        first = self._delivered is None
        if first:
            self._delivered = self._head() or (0, 0)
        self.channels.connect()
        tunables = self._tunables
        deadline = time.monotonic() + tunables.socket_timeout + tunables.connect_timeout
        while self.channels.pending():
            left = deadline - time.monotonic()
            if left <= 0:
                raise redis.TimeoutError("no subscription confirmation from Redis")
            self.channels.read(left)
        self._catch_up(first)
        self.connected = True
        self.failing = False
        self.ready.set()
        self._on_tick()

    def _read_stream(self, first: bool) -> tuple[Seq | None, list[t.Any], t.Any]:
        """The stream's head, its entries after the last delivered one, and
        (after a reconnect) its ``XINFO`` (``None`` when there is no stream)."""
        assert self._delivered is not None
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._keys.last)
            # From the last delivered entry itself: finding it still there
            # proves that nothing after it was trimmed.
            pipe.xrange(self._keys.stream, min=format_event_id(self._delivered), max="+")
            if not first:
                pipe.xinfo_stream(self._keys.stream)
            results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, redis.ConnectionError):
                raise result
        if isinstance(results[1], Exception):
            raise results[1]
        info = None if first or isinstance(results[2], redis.ResponseError) else results[2]
        head = parse_event_id(results[0].decode()) if results[0] else None
        return head, results[1], info

    def _catch_up(self, first: bool) -> None:
        assert self._delivered is not None
        head, entries, info = self._read_stream(first)
        if head is None or head < self._delivered:
            if self._delivered != (0, 0):
                # A Redis restarted without its data: ids start over from its
                # clock. Nothing newer was missed; follow the new sequence.
                logger.warning("Redis lost the event history; resuming from %s", head)
            self._delivered = head or (0, 0)
            return
        if entries and parse_event_id(text(entries[0][0])) == self._delivered:
            entries = entries[1:]
        elif not first and head > self._delivered and self._trimmed(info):
            logger.error(
                "events published while the Redis listener was away were already trimmed from "
                "the history; ending local streams so their clients resume (and are reset)"
            )
            self._delivered = head
            self._on_gap()
            return
        for entry_id, fields in entries:
            self._deliver(entry_envelope(entry_id, fields))

    @staticmethod
    def _trimmed(info: t.Any) -> bool:
        """Whether the stream lost entries to trimming, its last delivered
        entry being gone. A stream that never lost one is complete: a Redis
        restarted without its data and written since. (``XINFO``'s
        ``max-deleted-entry-id`` cannot tell: Redis 7.0 leaves it at ``0-0``
        when ``MAXLEN ~`` trims.)"""
        return info is None or info.get("entries-added") != info.get("length")

    def _run(self) -> None:
        tunables = self._tunables
        last_seen = next_refresh = time.monotonic()
        while not self._stop.is_set():
            got = self.channels.read(tunables.poll_interval)
            now = time.monotonic()
            if got:
                last_seen = now
            if now >= next_refresh:
                if now - last_seen > tunables.refresh_interval * 2 + tunables.socket_timeout:
                    raise redis.ConnectionError("Redis stopped answering the listener's pings")
                self.channels.ping()
                self._on_tick()
                next_refresh = now + tunables.refresh_interval

    def _handle(self, data: bytes) -> None:
        try:
            decoded = decode_message(data)
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("ignored a malformed message from Redis: %r (%s)", data[:200], e)
            return
        if isinstance(decoded, Envelope):
            self._deliver(decoded)
        elif decoded is not None:
            try:
                self._on_control(decoded)
            except (ValueError, KeyError, TypeError) as e:
                logger.warning("ignored a malformed message from Redis: %r (%s)", data[:200], e)

    def sync(self, waits: list[threading.Event]) -> None:
        """Make channels that a control message asked for complete (the
        listener thread only): wait until they are live, holding back the
        messages that arrive meanwhile, deliver from the stream everything
        after the last delivered id (the new channels' events included, in id
        order), then the held messages (what the stream delivered is skipped).

        So a topic subscribed for a client from another process gets every
        event published after that ``subscribe`` returned, in order.

        :raises redis.TimeoutError: Redis did not confirm in time.
        """
        if all(event.is_set() for event in waits):
            return
        tunables = self._tunables
        deadline = time.monotonic() + tunables.socket_timeout + tunables.connect_timeout
        self.channels.hold()
        try:
            while not all(event.is_set() for event in waits):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise redis.TimeoutError("no subscription confirmation from Redis")
                self.channels.read(left)
            assert self._delivered is not None
            entries = self._redis.xrange(
                self._keys.stream, min="(" + format_event_id(self._delivered), max="+"
            )
        finally:
            held = self.channels.unhold()
        for entry_id, fields in entries:
            self._deliver(entry_envelope(entry_id, fields))
        for data in held:
            self._handle(data)

    def _deliver(self, envelope: Envelope) -> None:
        seq = envelope.seq
        assert self._delivered is not None
        if seq <= self._delivered:
            return  # already delivered by a catch-up
        self._delivered = seq
        self._on_event(envelope)
