"""One client's record and one stream: :class:`SSEClient` and :class:`SSEConnection`.

A connection knows the lock that guards its queue and whom to tell when it
ends; it never sees the hub's registries or the broker.
"""

from __future__ import annotations

import time
import typing as t
from bisect import bisect_left

from ._socket import CHECK_BEFORE_HEARTBEAT, peer_closed
from ._timing import BUCKETS
from ._topics import Subscriptions
from ._wake import GreenletWake
from ._wire import HEARTBEAT_FRAME, Envelope, Frame, Seq, as_chunk, chunk_of, shared_frame

if t.TYPE_CHECKING:
    import threading

    from ._timing import DeliveryTiming
    from ._wake import Wake

#: What a connection queues: events, and bare frames (heartbeats, the final hint).
Queued = Envelope | Frame


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

    def _revoke_locked(self, topic: str, notice: Frame) -> None:
        """Drop ``topic`` and tell every connection (the hub's lock held)."""
        self._topics = self._topics - {topic}
        remaining = Subscriptions(self._topics)
        for conn in self._connections:
            conn._revoke_locked(remaining, notice)

    def __repr__(self) -> str:
        return f"<SSEClient {self.id!r} topics={sorted(self._topics)} connections={len(self._connections)}>"


class SSEConnection:
    """One event stream: a bounded queue drained by a WSGI response iterator.

    Iterating it yields ``bytes`` for the server to write: everything queued
    since the last write leaves in one chunk. It blocks (cooperatively under
    gevent) while nothing is queued and stops once it is closed. The server's
    call to :meth:`close` when the response ends - finished, or a write failed
    because the peer is gone - releases it from the broker.

    :param client: the record of the client it belongs to.
    :param lock: the hub's lock, which guards the queue and the flags below.
    :param on_close: called (without the lock) with the connection when it
        ends, however it ends; must be idempotent.
    :param wake: set by whoever queues for a waiting stream.
    :param timing: where the stream counts the delay of each write (metrics
        on), or ``None``: then no clock is read for this stream.
    """

    __slots__ = (
        "_after_head",
        "_closed",
        "_finished",
        "_head",
        "_lock",
        "_on_close",
        "_out",
        "_peer",
        "_queue",
        "_raw",
        "_released",
        "_shared",
        "_skip_through",
        "_timing",
        "_unrecorded",
        "_unsent",
        "_waiting",
        "_wake",
        "_written",
        "client",
        "dropped",
        "opened_at",
    )

    def __init__(
        self,
        client: SSEClient,
        lock: threading.Lock,
        on_close: t.Callable[[SSEConnection], None],
        wake: Wake,
        timing: DeliveryTiming | None = None,
    ) -> None:
        self.client = client
        self.opened_at = time.time()
        #: Overflows of this connection's queue.
        self.dropped = 0
        self._lock = lock
        self._on_close = on_close
        # A list, not a deque: an empty deque costs a 64-slot block, and with
        # ten thousand idle streams per worker that is most of their memory.
        self._queue: list[Queued] = []
        self._wake = wake
        #: Whether the next publisher must set ``_wake``; between a ``_take``
        #: and the first event queued after it. With the lock held it means
        #: "``_wake`` is clear and the queue was empty when it was cleared".
        self._waiting = True
        #: Nothing more is queued; the stream ends once the queue is written.
        self._closed = False
        #: Removed from the hub's registries (by the hub, under the lock).
        self._released = False
        #: The stream has ended: counted out of the hub's open streams.
        self._finished = False
        #: The first frames (``retry``, ``connected``, the replay), written first.
        self._head: list[bytes] | None = None
        #: Events carry their topic, for a browser's SharedWorker (``shared_frame``).
        self._shared = False
        #: Live events up to this one were already sent by the replay.
        self._skip_through: Seq | None = None
        #: The client's socket, when the server exposes it: lets a heartbeat
        #: find a peer that closed without writing to it.
        self._peer: t.Any = None
        self._timing = timing
        #: The last chunk handed to the server, timed once it is written.
        self._unrecorded: list[Queued] | None = None
        #: ``(delay, events)`` of that chunk once written, counted by the next
        #: ``_take`` in the lock hold it takes anyway (or by a scrape).
        self._written: tuple[float, int] | None = None
        #: The server's response, when the stream writes its chunks itself
        #: (:meth:`write_to`); its socket, and the non-blocking one inside.
        self._out: t.Any = None
        self._raw: t.Any = None
        #: Chunked bytes a write in the hub could not finish: the stream's
        #: greenlet writes them before anything else.
        self._unsent: bytes | None = None
        #: Called once the first chunk is written by the stream itself
        #: (``StreamResponse`` trims the WSGI environ with it).
        self._after_head: t.Callable[[], None] | None = None

    def debug_state_locked(self) -> dict[str, t.Any]:
        """This stream's state, for the hub's debug snapshot (under the lock)."""
        return {
            "queued": len(self._queue),
            "head": bool(self._head),
            "closed": self._closed,
            "finished": self._finished,
        }

    def __repr__(self) -> str:
        return f"<SSEConnection of {self.client.id!r} queued={len(self._queue)} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self) -> SSEConnection:
        return self

    def _write_to(self, out: t.Any) -> None:
        """Write this stream's chunks to the socket of ``out`` directly.

        ``out`` is the server's response object, which frames every write as
        a chunk (gunicorn's ``Response`` with ``chunked`` set; the caller
        checks): once it has sent the response head (``headers_sent``),
        every further write of this stream goes straight to ``out.sock``,
        already chunk-framed, each event's chunk made once and shared by all
        its recipients (:func:`chunk_of`), several queued events in one
        ``send``. And under gevent a delivery round writes a parked stream's
        queue from the hub (:meth:`send_parked`) without switching to it.
        The server still writes the response head (``send_headers``) and the
        last chunk.
        """
        self._out = out
        sock = out.sock
        # gevent's non-blocking socket inside; never beneath TLS (gevent's
        # SSLSocket has one too: writing there would bypass the encryption).
        tls = hasattr(sock, "getpeercert")
        self._raw = None if tls else getattr(sock, "_sock", None)
        wake = self._wake
        if isinstance(wake, GreenletWake) and self._raw is not None:
            wake.writer = self

    def __next__(self) -> bytes:
        out = self._out
        if self._head:
            if out is None:
                head, self._head = self._head, None
                return b"".join(head)
            self._send_head(out)
        timing = self._timing
        if timing is not None and self._unrecorded is not None:
            self._record_written()
        if out is not None and out.headers_sent:
            self._write_chunks(out.sock)
        while True:
            batch = self._take()
            if self._skip_through is not None:
                batch = self._skip_replayed(batch, self._skip_through)
            if timing is not None and batch:
                self._unrecorded = batch
            if len(batch) == 1:  # a heartbeat, or a stream keeping up
                # A closed peer is found by the heartbeat pass's poll, else here.
                if batch[0] is HEARTBEAT_FRAME and CHECK_BEFORE_HEARTBEAT and peer_closed(self._peer):
                    self.close()
                    raise StopIteration
                return shared_frame(batch[0]) if self._shared else batch[0].frame
            if batch:
                # Never an empty chunk: to a chunked response that means the end.
                if self._shared:
                    return b"".join([shared_frame(e) for e in batch])
                return b"".join([e.frame for e in batch])

    def _send_head(self, out: t.Any) -> None:
        """Have the server send the response head, then write the first
        frames as a chunk here too. Not through the server's write loop, nor
        in a local of :meth:`__next__`: either would keep them alive as long
        as the stream lasts."""
        head, self._head = self._head, None
        out.send_headers()
        self._send_all(out.sock, as_chunk(b"".join(head or ())))
        after, self._after_head = self._after_head, None
        if after is not None:
            after()

    def _write_chunks(self, sock: t.Any) -> t.NoReturn:
        """The stream from its second write on, when it frames chunks itself:
        write each batch to ``sock`` until the stream ends. Never returns to
        the server's write loop: raises ``StopIteration`` at the end, or the
        ``OSError`` of a failed write, as the server's own write would."""
        timing = self._timing
        while True:
            unsent, self._unsent = self._unsent, None
            if unsent is not None:
                sock.sendall(unsent)
            batch = self._take()
            if self._skip_through is not None:
                batch = self._skip_replayed(batch, self._skip_through)
            if not batch:
                continue
            if (
                batch[0] is HEARTBEAT_FRAME
                and len(batch) == 1
                and CHECK_BEFORE_HEARTBEAT  # else the heartbeat pass's poll finds it
                and peer_closed(self._peer)
            ):
                self.close()
                raise StopIteration
            if self._shared:
                data = b"".join([as_chunk(shared_frame(e)) for e in batch])
            elif len(batch) == 1:
                data = chunk_of(batch[0])
            else:
                data = b"".join([chunk_of(e) for e in batch])
            self._send_all(sock, data)
            if timing is not None:
                self._unrecorded = batch
                self._record_written()

    def _send_all(self, sock: t.Any, data: bytes) -> None:
        """Write all of ``data``: one ``send`` on the non-blocking socket
        when it takes everything (it nearly always does), else the server
        socket's ``sendall``, which waits for room cooperatively."""
        raw = self._raw
        if raw is not None:
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        sock.sendall(data)

    def send_parked(self) -> bool:
        """In the hub, for a delivery round: write the queue of this parked
        stream with one non-blocking ``send`` and re-arm its wake-up, or say
        that its greenlet must run (its head not sent yet, the end of the
        stream, metrics on, a replay overlap, a shared stream, the lock busy,
        or a lone heartbeat where the heartbeat pass cannot ``poll`` for
        closed peers: the greenlet checks its peer first). A lone heartbeat
        leaves from here too: the pass that queued it has just polled every
        stream's socket (:func:`close_dead_peers`), and a write to a peer
        that vanished fails, here and then in the greenlet, as an event's
        does. A write the socket did not take whole is finished by the
        greenlet, before anything else."""
        out = self._out
        if (
            not out.headers_sent
            or self._timing is not None
            or self._skip_through is not None
            or self._shared
            or self._unsent is not None
        ):
            return False
        lock = self._lock
        if not lock.acquire(False):  # in the hub: never block
            return False
        try:
            batch = self._queue
            if (
                self._closed
                or not batch
                or (CHECK_BEFORE_HEARTBEAT and batch[0] is HEARTBEAT_FRAME and len(batch) == 1)
            ):
                return False
            self._queue = []
            self._waiting = True
            self._wake.clear()
        finally:
            lock.release()
        data = chunk_of(batch[0]) if len(batch) == 1 else b"".join([chunk_of(e) for e in batch])
        try:
            sent = self._raw.send(data)
        except OSError:  # no room (the greenlet waits for it), or a dead peer (it fails again there)
            sent = 0
        if sent == len(data):
            return True
        # The greenlet finishes it. Without the lock: this only turns the
        # wake-up on, as a publisher would (the round resumes the greenlet).
        self._unsent = data[sent:]
        self._waiting = False
        self._wake.set()
        return False

    def _record_written(self) -> None:
        """The server asks for the next chunk once the last one is written:
        time it now (inline: this runs once per write, with metrics on)."""
        chunk, self._unrecorded = self._unrecorded, None
        published = chunk[0].at or chunk[-1].at if chunk else None
        if chunk and published:
            self._written = (time.time() - published, len(chunk))

    def _skip_replayed(self, batch: list[Queued], skip: Seq) -> list[Queued]:
        """Drop live events that the replay already sent (a distributed
        backend replays outside the lock, so the two may overlap)."""
        batch = [e for e in batch if e.seq is None or e.seq > skip]
        if any(e.seq is not None for e in batch):
            self._skip_through = None
        return batch

    def _take(self) -> list[Queued]:
        """Wait until something is queued; take all of it.

        One lock round trip per wake-up: taking the queue also re-arms the
        wake-up, so the next call waits without the lock (``_wake`` is set
        by whoever queues after the take, and stays set until the next take).
        """
        lock = self._lock
        wake = self._wake
        timing = self._timing
        while True:
            wake.wait()
            with lock:
                if timing is not None and self._written is not None:
                    # The last write's delay (``DeliveryTiming.add_locked``,
                    # inline: once per write).
                    delay, events = self._written
                    self._written = None
                    timing.counts[bisect_left(BUCKETS, delay)] += events
                    timing.total += delay * events
                if self._unsent is not None:  # a write the hub began: first
                    return []
                if self._closed:
                    if self._queue:  # the final frame; the wake-up stays set
                        batch, self._queue = self._queue, []
                        return batch
                    break
                self._waiting = True
                wake.clear()
                if self._queue:
                    batch, self._queue = self._queue, []
                    return batch
        self._on_close(self)
        raise StopIteration

    def close(self) -> None:
        """End this stream and release it from the broker (idempotent)."""
        wake = self._wake
        if isinstance(wake, GreenletWake):
            wake.writer = None  # no round writes for it; and no cycle left through it
        self._on_close(self)

    def _revoke_locked(self, remaining: t.Container[str], notice: Frame) -> None:
        """Drop the queued topic events that ``remaining`` (the client's
        subscriptions after a revoke) no longer reaches, then queue
        ``notice``: nothing of a revoked topic follows it. Caller holds the lock."""
        queue = self._queue
        if queue:
            client_id = self.client.id
            queue[:] = [e for e in queue if not isinstance(e, Envelope) or e.reaches(client_id, remaining)]
        queue.append(notice)
        if self._waiting:
            self._waiting = False
            self._wake.set()

    def _close_locked(self, final: bytes | None = None) -> None:
        """Stop queueing; the stream writes ``final`` (if any) and ends.
        Caller holds the lock."""
        self._closed = True
        self._queue.clear()
        if final is not None:
            self._queue.append(Frame(final))
        self._waiting = False
        self._wake.set()


def queue_heartbeats(conns: t.Iterable[SSEConnection]) -> None:
    """Queue a heartbeat on each idle, open connection of ``conns`` and wake
    it (the caller holds the hub's lock)."""
    for conn in conns:
        if not conn._queue and not conn._closed and not conn._released:
            conn._queue.append(HEARTBEAT_FRAME)
            if conn._waiting:
                conn._waiting = False
                conn._wake.set()
