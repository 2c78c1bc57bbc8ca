"""The heartbeat loop: one per broker, on a thread (a greenlet under gevent).

Each pass asks the hub to queue a heartbeat on every idle connection (the
write is how WSGI finds a dead peer) and to forget expired sessions.
"""

from __future__ import annotations

import logging
import time
import typing as t

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
            hub.beat(heartbeats=seconds > 0)
        except Exception:  # pragma: no cover - keep beating whatever happens
            logger.exception("heartbeat pass failed")
