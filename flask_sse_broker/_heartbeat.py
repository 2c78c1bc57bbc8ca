"""The heartbeat loop: one per broker, on a thread (a greenlet under gevent).

Each pass first ends the streams whose peer has already closed its end (one
``poll`` of every stream's socket, :func:`close_dead_peers`), then asks the
hub to queue a heartbeat on every idle connection (the write is how WSGI
finds a peer that vanished without closing) and to forget expired sessions.

Under gevent, a stream that writes its own chunks gets its heartbeat from the
delivery round that the queueing wakes (``GreenletWake.send``): one
non-blocking ``send`` in the hub, the greenlet left parked; the pass has just
polled for closed peers, so the greenlet need not check its own first.
"""

from __future__ import annotations

import logging
import time
import typing as t

from ._socket import closed_peers

if t.TYPE_CHECKING:
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
            if seconds > 0:
                close_dead_peers(hub)
            hub.beat(heartbeats=seconds > 0)
        except Exception:  # pragma: no cover - keep beating whatever happens
            logger.exception("heartbeat pass failed")


def close_dead_peers(hub: Hub) -> int:
    """End every open stream whose client has closed its end of the socket;
    return how many. A stream whose server exposes no socket is left to its
    writes."""
    with hub.lock:
        conns = [conn for conn in hub._connections if conn._peer is not None and not conn._closed]
    dead = closed_peers([conn._peer for conn in conns])
    for i in dead:
        conns[i].close()
    return len(dead)
