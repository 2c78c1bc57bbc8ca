"""The listener's pub/sub connection and the channels it holds.

A process subscribes only to the channels it has local recipients for (a
topic's channel while a local connection holds the topic, a client's channel
while the client is connected here, the broadcast channel), so Redis sends it
only the events it needs. The backend decides which channels it wants
(:meth:`Channels.want` / :meth:`Channels.drop`); this object sends the
``SUBSCRIBE`` / ``UNSUBSCRIBE`` commands and tracks Redis's answers.

Why a stream opening waits for its channels: an event published before Redis
ran the ``SUBSCRIBE`` never reaches this process, so a stream's starting id
must come from *after* the channel went live. Redis answers every
(un)subscribed channel with one reply, in command order, on this connection;
a channel is live once every command sent for it was answered and the last
was a ``SUBSCRIBE``. The listener then reads the stream's newest id once for
every channel that went live in the same read (``settle``): a stream starting
at or after that id misses nothing on those channels.

A channel may also be a glob (:func:`pattern_key`, for a topic pattern):
``PSUBSCRIBE``\\ d, confirmed and settled the same way. An event on a
channel that is also held by name, or matched by two globs, arrives more than
once: the listener delivers each event id once.

Only the listener touches the connection: a request queues its commands and
wakes the listener through a pipe (redis-py changes a socket's timeout while
it reads, so a second writer on the same socket could fail or tear a
command), so a stream opening never waits for the listener's poll interval.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import typing as t
import weakref

import redis

from .._wire import Seq
from ._redis_resp import ReplyReader

_SUBSCRIBED = (b"subscribe", b"ssubscribe", b"psubscribe")
_UNSUBSCRIBED = (b"unsubscribe", b"sunsubscribe", b"punsubscribe")
_MESSAGES = (b"message", b"smessage", b"pmessage")
_PATTERN_REPLIES = (b"psubscribe", b"punsubscribe")

#: Marks a glob among the channels (``PSUBSCRIBE``d, not ``SUBSCRIBE``d). No
#: channel name starts with it: topics and client ids are printable.
_PATTERN = b"\x00"


def pattern_key(glob: bytes) -> bytes:
    """How a ``PSUBSCRIBE`` glob is named among the channels of :class:`Channels`."""
    return _PATTERN + glob


def is_pattern_key(key: bytes) -> bool:
    return key[:1] == _PATTERN


class Channels:
    """One pub/sub connection (RESP2), the channels it should hold, and their state.

    :param pool: a pool for this connection alone (so it never takes a
        command connection), speaking RESP2 (pub/sub messages as replies).
    :param on_message: called by the listener with every message's data, in
        the order Redis sent them.
    :param settle: called by the listener after channels went live; returns
        the stream's newest id (see the module's docstring).
    :param sharded: use ``SSUBSCRIBE`` (Redis Cluster sharded pub/sub).
    """

    def __init__(
        self,
        pool: redis.ConnectionPool,
        on_message: t.Callable[[bytes], None],
        settle: t.Callable[[], Seq | None],
        sharded: bool = False,
    ) -> None:
        self._pool = pool
        self._on_message = on_message
        self._settle = settle
        # Sharded pub/sub has no pattern form: globs are for a plain Redis.
        # And one SSUBSCRIBE names channels of one slot: one each.
        self._sharded = sharded
        self._commands = {
            True: ("SSUBSCRIBE" if sharded else "SUBSCRIBE", "PSUBSCRIBE"),
            False: ("SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE", "PUNSUBSCRIBE"),
        }
        #: Guards everything below and every write to the connection; held
        #: for a socket write at most, never for a read.
        self._lock = threading.Lock()
        self._conn: redis.connection.Connection | None = None
        #: Reads the connection's replies, and the poll of its socket and of
        #: the wake-up pipe (set while connected).
        self._reader: ReplyReader | None = None
        self._poller: t.Any = None
        self._sock_fd = -1
        #: The channels this process wants.
        self._wanted: set[bytes] = set()
        #: Channel -> commands sent for it and not answered yet.
        self._unanswered: dict[bytes, int] = {}
        #: Channels Redis confirmed and that were not unsubscribed since.
        self._live: set[bytes] = set()
        #: Confirmed in the read under way, not settled yet.
        self._settling: list[bytes] = []
        #: Wanted channels that need no settle (see :meth:`want`).
        self._unheard: set[bytes] = set()
        #: Channel -> set once it is live and settled, for the streams waiting.
        self._waiters: dict[bytes, threading.Event] = {}
        #: The newest id read by a settle: a stream that starts at or after
        #: it misses nothing on any live channel.
        self.settled: Seq = (0, 0)
        #: Commands queued by requests for the listener to send: subscribe
        #: (``True``) or unsubscribe, and the channels.
        self._outbox: list[tuple[bool, list[bytes]]] = []
        #: A request writes a byte here to wake the listener's poll.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Closed with the object (a backend may be started again after close()).
        self._finalizer = weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        #: While not ``None``, messages are kept here instead of handled (see
        #: :meth:`hold`).
        self._held: list[bytes] | None = None
        #: Messages received, and socket reads that brought replies (counters
        #: for tests and stats).
        self.received = 0
        self.reads = 0

    # -- wanted channels (any thread) -----------------------------------------

    def want(self, channels: t.Collection[bytes], unheard: t.Collection[bytes] = ()) -> list[threading.Event]:
        """Want ``channels``; return an event for each one not live yet (wait
        on them before reading where a stream starts).

        :param unheard: those of ``channels`` nothing can have been published
            on yet (a client id minted just now): live as soon as confirmed,
            with no settle.
        """
        waits = []
        with self._lock:
            new = [c for c in channels if c not in self._wanted]
            self._wanted.update(new)
            self._unheard.update(c for c in unheard if c in new)
            if new:
                self._send(True, new)
            for channel in channels:
                if channel not in self._live or self._unanswered.get(channel):
                    waits.append(self._waiter(channel))
        return waits

    def drop(self, channels: t.Collection[bytes]) -> None:
        """Stop wanting ``channels``."""
        with self._lock:
            gone = [c for c in channels if c in self._wanted]
            if gone:
                self._wanted.difference_update(gone)
                self._live.difference_update(gone)
                self._unheard.difference_update(gone)
                self._send(False, gone)

    def wanted(self) -> set[bytes]:
        with self._lock:
            return set(self._wanted)

    def _waiter(self, channel: bytes) -> threading.Event:
        event = self._waiters.get(channel)
        if event is None:
            event = self._waiters[channel] = threading.Event()
        return event

    def _send(self, subscribe: bool, channels: list[bytes]) -> None:
        """Queue a command for the listener (under the lock) and wake it.
        Without a connection nothing is queued: the listener subscribes every
        wanted channel when it connects."""
        if self._conn is None:
            return
        self._outbox.append((subscribe, channels))
        try:
            os.write(self._wake_w, b"!")
        except OSError as e:  # a full pipe is awake already
            if e.errno != errno.EAGAIN:
                raise

    def _flush_outbox(self) -> None:
        """Send the queued commands (the listener thread only)."""
        with self._lock:
            outbox, self._outbox = self._outbox, []
            for subscribe, channels in outbox:
                self._write(subscribe, channels)

    def _write(self, subscribe: bool, channels: list[bytes]) -> None:
        """Send the (un)subscribe commands now, under the lock, from the
        listener thread: one for the channels, one for the globs."""
        if self._conn is None:
            return
        for channel in channels:
            self._unanswered[channel] = self._unanswered.get(channel, 0) + 1
        by_name, command_for_globs = self._commands[subscribe]
        names = [c for c in channels if not is_pattern_key(c)]
        globs = [c[1:] for c in channels if is_pattern_key(c)]
        try:
            batches = [[name] for name in names] if self._sharded else [names]
            for batch in (b for b in batches if b):
                self._conn.send_command(by_name, *batch)
            if globs:
                self._conn.send_command(command_for_globs, *globs)
        except (redis.RedisError, OSError):
            # The listener finds the connection broken on its next read and
            # reconnects; until then nothing is live.
            self._live.clear()
            self._unanswered.clear()

    # -- the listener (one thread) ---------------------------------------------

    def connect(self) -> None:
        """Open the connection and subscribe every wanted channel (their
        confirmations arrive through :meth:`read`)."""
        conn = self._pool.get_connection()  # type: ignore[call-arg]
        # Past the handshake only this object reads the socket (ReplyReader).
        sock = conn._sock  # type: ignore[attr-defined]
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(sock, select.POLLIN)
        with self._lock:
            self._conn = conn
            self._reader = ReplyReader(sock)
            self._poller = poller
            self._sock_fd = sock.fileno()
            self._unanswered.clear()
            self._live.clear()
            self._settling.clear()
            self._outbox.clear()  # the wanted set is the truth: subscribe it all
            if self._wanted:
                self._write(True, sorted(self._wanted))

    def pending(self) -> bool:
        """Whether some (un)subscription is not answered yet."""
        with self._lock:
            return any(self._unanswered.values())

    def read(self, timeout: float) -> bool:
        """Handle every reply that arrives within ``timeout``; ``False`` when
        none did. :raises redis.ConnectionError: the connection is lost."""
        reader = self._reader
        if reader is None:
            raise redis.ConnectionError("the pub/sub connection is closed")
        self._flush_outbox()
        # Wait for Redis or for a request's wake-up, whichever comes first.
        poller = self._poller
        ready = {fd for fd, _ in poller.poll(timeout * 1000)}
        if self._wake_r in ready:
            self._drain_wake()
            self._flush_outbox()
            if self._sock_fd not in ready:
                ready = {fd for fd, _ in poller.poll(0)}
        if self._sock_fd not in ready:
            return False
        # Everything the socket holds, in one call: a burst is one wake-up.
        reader.fill()
        self.reads += 1
        for reply in reader.replies():
            self._handle(reply)
        if self._settling:
            self._settle_live()
        return True

    def _handle(self, reply: t.Any) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind in _MESSAGES:
            self.received += 1
            if self._held is not None:
                self._held.append(reply[-1])
            else:
                self._on_message(reply[-1])
        elif kind in _SUBSCRIBED or kind in _UNSUBSCRIBED:
            channel = pattern_key(reply[1]) if kind in _PATTERN_REPLIES else reply[1]
            with self._lock:
                left = self._unanswered.get(channel, 0) - 1
                if left > 0:
                    self._unanswered[channel] = left
                    return
                self._unanswered.pop(channel, None)
                if kind in _SUBSCRIBED and channel in self._wanted:
                    self._live.add(channel)
                    if channel in self._unheard:
                        self._unheard.discard(channel)
                        event = self._waiters.pop(channel, None)
                        if event is not None:
                            event.set()
                    else:
                        self._settling.append(channel)

    def _settle_live(self) -> None:
        head = self._settle()  # may raise: the listener reconnects
        with self._lock:
            if head is not None and head > self.settled:
                self.settled = head
            settled, self._settling = self._settling, []
            for channel in settled:
                event = self._waiters.pop(channel, None)
                if event is not None:
                    event.set()

    def hold(self) -> None:
        """Keep messages instead of handling them, until :meth:`unhold` (the
        listener thread, while it catches a new channel up from the stream)."""
        self._held = []

    def unhold(self) -> list[bytes]:
        """Stop holding; return the messages held, in arrival order."""
        held, self._held = self._held or [], None
        return held

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise

    def ping(self, *argument: bytes) -> None:
        """``PING`` (with ``argument``, answered with it): answered after
        every message Redis pushed on the connection before."""
        with self._lock:
            if self._conn is not None:
                self._conn.send_command("PING", *argument)

    def close(self) -> None:
        """Release the wake-up pipe (the object is not used afterwards)."""
        self._finalizer()

    def disconnect(self) -> None:
        """Forget the connection (lost, or closing); nothing is live."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._reader = None
            self._live.clear()
            self._unanswered.clear()
            self._settling.clear()
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
