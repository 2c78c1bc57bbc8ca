"""The delay from publish to socket write, counted per bucket: what the
``flask_sse_delivery_seconds`` histogram of ``/metrics`` is made of.

It sits at the bottom of the package (no imports from it) because the
stream itself does the counting: the hub stamps each event's publish time on
its envelope (once per publish), and a stream times each write it hands the
server (once per write, not per event; see :meth:`DeliveryTiming.add_locked`).
Nothing here runs while metrics are off: the hub then has no timing at all.
"""

from __future__ import annotations

import typing as t
from bisect import bisect_left

#: Upper bounds (seconds) of the buckets; a wake-up round alone waits 2 ms
#: under gevent, and more than 10 s means a stalled reader.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DeliveryTiming:
    """Counts of publish-to-write delays per bucket, kept by the streams.

    A stream observes each write when the server asks it for the next chunk
    (the server has written the previous one by then): one clock read per
    write. Every event of a chunk reached the socket in that one write; each
    is counted at the delay of the chunk's *oldest* event, so the figures are
    exact for a stream that keeps up (one event per write) and an upper bound
    under bursts: they never hide a slow stream.

    The counts are guarded by the hub's lock: a stream adds its last write in
    the lock hold that takes its next chunk (no lock round trip of its own),
    and a scrape adds the last writes of idle streams.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        #: Events per bucket of :data:`BUCKETS`, the last one for ``+Inf``.
        self.counts = [0] * (len(BUCKETS) + 1)
        #: Sum of the observed delays, in seconds.
        self.total = 0.0

    def add_locked(self, delay: float, events: int) -> None:
        """Count ``events`` written ``delay`` seconds after their publish;
        the caller holds the hub's lock."""
        self.counts[bisect_left(BUCKETS, delay)] += events
        self.total += delay * events

    def collect_locked(self, streams: t.Iterable[t.Any]) -> DeliveryTiming:
        """Count the last writes of ``streams`` that wait for their next chunk
        to be counted (idle ones); return a copy. The caller holds the lock."""
        for stream in streams:
            if stream._written is not None:
                self.add_locked(*stream._written)
                stream._written = None
        other = DeliveryTiming()
        other.counts[:] = self.counts
        other.total = self.total
        return other

    def clear(self) -> None:
        self.counts[:] = [0] * len(self.counts)
        self.total = 0.0
