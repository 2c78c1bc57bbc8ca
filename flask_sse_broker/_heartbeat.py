"""The heartbeat loop: one per broker, on a thread (a greenlet under gevent).

Each pass first ends the streams whose peer has already closed its end (one
``poll`` of every stream's socket, :func:`close_dead_peers`), then asks the
hub to queue a heartbeat on every idle connection (the write is how WSGI
finds a peer that vanished without closing) and to forget expired sessions.

Under gevent, a stream that writes its own chunks gets its heartbeat from the
delivery round that the queueing wakes (``GreenletWake.writer``): one
non-blocking ``send`` in the hub, the greenlet left parked; the pass has just
polled for closed peers, so the greenlet need not check its own first.
"""

from __future__ import annotations

import logging
import time
import typing as t

from ._connection import queue_heartbeats
from ._socket import closed_peers

if t.TYPE_CHECKING:
    from ._connection import SSEConnection
    from ._hub import Hub

logger = logging.getLogger("flask_sse_broker")

#: Seconds between sweeps of expired sessions when heartbeats are off.
SESSION_SWEEP = 5.0


def run_heartbeats(hub: Hub, interval: t.Callable[[], float], stopped: t.Callable[[float], bool]) -> None:
    """Beat every ``interval()`` seconds (``0``: sessions only) until
    ``stopped(timeout)`` returns true.

    Wakes at least once a second so a reconfigured interval applies at once;
    with heartbeats off it still forgets expired sessions.
    """
    last = time.monotonic()
    while True:
        seconds = interval()
        due = last + (seconds or SESSION_SWEEP)
        if stopped(max(0.0, min(due - time.monotonic(), 1.0))):
            return
        now = time.monotonic()
        if now < due:
            continue
        last = now
        try:
            if seconds > 0 and beat_in_slices(hub, stopped):
                return
            hub.beat(heartbeats=False)  # expired sessions
        except Exception:  # pragma: no cover - keep beating whatever happens
            logger.exception("heartbeat pass failed")


#: Streams per slice of a heartbeat pass. Between slices the pass waits
#: :data:`PAUSE` (the hub polls I/O meanwhile, and the lock is free): at 9,000
#: streams the whole pass held the hub for 15-21 ms of CPU at once (the poll
#: most of it), which a publish arriving then waited out; a slice 2.3-2.5 ms.
SLICE = 1000
PAUSE = 0.0005


def beat_in_slices(hub: Hub, stopped: t.Callable[[float], bool]) -> bool:
    """The heartbeat pass, :data:`SLICE` streams at a time: end those whose
    peer has closed (:func:`close_dead_peers`), then queue a heartbeat on each
    idle one, as ``Hub.beat`` does. True if ``stopped`` said so meanwhile."""
    with hub.lock:
        conns = list(hub._connections)
    for start in range(0, len(conns), SLICE):
        if start and stopped(PAUSE):
            return True
        part = conns[start : start + SLICE]
        close_dead_peers(hub, part)
        with hub.lock:
            queue_heartbeats(part)
    return False


def close_dead_peers(hub: Hub, among: t.Iterable[SSEConnection] | None = None) -> int:
    """End every open stream (of ``among``, else all) whose client has
    closed its end of the socket; return how many. A stream whose server
    exposes no socket is left to its writes."""
    with hub.lock:
        pool = hub._connections if among is None else among
        conns = [conn for conn in pool if conn._peer is not None and not conn._closed and not conn._released]
    dead = closed_peers([conn._peer for conn in conns])
    for i in dead:
        conns[i].close()
    return len(dead)
