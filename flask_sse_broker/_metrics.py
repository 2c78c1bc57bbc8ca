"""Prometheus metrics: ``GET /_sse/metrics`` through ``prometheus_client``.

Nothing here runs per delivery. The broker already counts what it does (events
published, queued, dropped) under its lock; these figures are *read* from
those counters when Prometheus scrapes, and copied into ``prometheus_client``
metric objects then. The one figure the broker does not keep otherwise, the
delay from publish to socket write, costs one clock read per publish (the
envelope's stamp) and one per stream write (see :class:`DeliveryTiming`), and
only while metrics are on.

Several gunicorn workers: ``prometheus_client``'s multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the workers start). Each worker's
values must then be in its files *before* another worker answers the scrape,
so every worker copies its counters into them once a second
(:attr:`Metrics.sync_interval`) from a background thread, and the scraped
worker once more just before it answers. A custom collector would not do:
the multiprocess collector only reads those files.

``prometheus_client`` is imported only when metrics are configured, so it
stays an optional dependency (the ``[metrics]`` extra).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t

from ._timing import BUCKETS, DeliveryTiming

if t.TYPE_CHECKING:
    from ._hub import Hub

logger = logging.getLogger("flask_sse_broker")

_HINT = "metrics need prometheus_client: pip install 'flask-sse-broker[metrics]'"


class Metrics:
    """The ``prometheus_client`` side of one broker: reads its hub's
    counters, keeps the delivery timing the hub's streams count into.

    :param hub: the broker's hub.
    :param check_fork: the broker's fork check, run before reading the hub
        (in a forked child the hub must be reset first).
    :raises ImportError: ``prometheus_client`` is not installed.
    """

    #: Seconds between two copies of a worker's figures into its
    #: multiprocess files (multiprocess mode only): how stale another
    #: worker's figures may be in a scrape.
    sync_interval = 1.0

    def __init__(self, hub: Hub, check_fork: t.Callable[[], None]) -> None:
        try:
            import prometheus_client as prom
            from prometheus_client import values
        except ImportError as e:  # pragma: no cover - the extra is installed in tests
            raise ImportError(_HINT) from e
        self._prom = prom
        self._hub = hub
        self._check_fork = check_fork
        self.timing = DeliveryTiming()
        #: Counted here, not from the broker's ``published``: with Redis every
        #: worker delivers every event, so the sum over workers of what they
        #: delivered would count each event once per worker.
        self._published = 0
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        # prometheus_client picks its value class when first imported: the
        # environment variable alone does not say which one is in use.
        self.multiprocess = values.ValueClass is not values.MutexValue
        self.registry = None if self.multiprocess else prom.CollectorRegistry()
        reg = self.registry
        self._gauges = {
            "connections": prom.Gauge(
                "flask_sse_connections", "Open event streams.", registry=reg, multiprocess_mode="livesum"
            ),
            "clients": prom.Gauge(
                "flask_sse_clients",
                "Connected client ids (a client may hold several streams).",
                registry=reg,
                multiprocess_mode="livesum",
            ),
            "topics": prom.Gauge(
                "flask_sse_topics",
                "Topics with at least one subscribed stream (summed over workers).",
                registry=reg,
                multiprocess_mode="livesum",
            ),
        }
        self._counters = {
            "published": prom.Counter(
                "flask_sse_events_published", "Events published by this process.", registry=reg
            ),
            "queued": prom.Counter(
                "flask_sse_deliveries",
                "Events queued for a stream (one publish to N streams counts N).",
                registry=reg,
            ),
            "dropped": prom.Counter(
                "flask_sse_events_dropped",
                "Events a full stream queue could not take (the overflow policy applied).",
                registry=reg,
            ),
            "overflow_disconnects": prom.Counter(
                "flask_sse_overflow_disconnects",
                "Streams ended because their queue overflowed (overflow='disconnect').",
                registry=reg,
            ),
            "connections_opened": prom.Counter(
                "flask_sse_connections_opened", "Event streams opened.", registry=reg
            ),
        }
        self._histogram = prom.Histogram(
            "flask_sse_delivery_seconds",
            "Delay from publish to the socket write carrying the event.",
            buckets=BUCKETS,
            registry=reg,
        )
        #: What was last copied into the prometheus_client objects.
        self._copied: dict[str, float] = {}
        self._copied_buckets = [0] * (len(BUCKETS) + 1)
        self._copied_total = 0.0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None

    def count_published(self, n: int = 1) -> None:
        if self._pid != os.getpid():
            self._fork_seen()
        with self._lock:
            self._published += n
        if self.multiprocess and self._thread is None:
            self.ensure_running()

    def ensure_running(self) -> None:
        """Start the copying thread in this process (multiprocess mode)."""
        if not self.multiprocess:
            return
        if self._pid != os.getpid():
            self._fork_seen()
        if self._thread is not None:
            return
        with self._sync_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sse-metrics", daemon=True)
                self._thread.start()

    def _fork_seen(self) -> None:
        """Start from zero in a forked child, as the broker's hub does (the
        hub is reset first, its timing with it); ``prometheus_client`` points
        the objects at the child's own files by itself."""
        self._check_fork()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._published = 0
        self._copied = {}
        self._copied_buckets = [0] * (len(BUCKETS) + 1)
        self._copied_total = 0.0
        self._thread = None

    def _run(self) -> None:
        while True:
            time.sleep(self.sync_interval)
            try:
                self.sync()
            except Exception:  # pragma: no cover - keep copying whatever happens
                logger.exception("copying metrics failed")

    def sync(self) -> None:
        """Copy the broker's figures into the ``prometheus_client`` objects."""
        if self._pid != os.getpid():
            self._fork_seen()
        values, timing = self._hub.metric_values()
        if timing is None:  # metrics were turned off
            return
        counts, total = timing.counts, timing.total
        with self._lock:
            values["published"] = self._published
        with self._sync_lock:
            for name, gauge in self._gauges.items():
                gauge.set(values[name])
            for name, counter in self._counters.items():
                delta = values[name] - self._copied.get(name, 0)
                if delta > 0:
                    counter.inc(delta)
                    self._copied[name] = values[name]
            # Bucket counts go straight to the histogram's per-bucket values
            # (what ``observe`` increments), one increment per bucket.
            hist = self._histogram
            for i, count in enumerate(counts):
                delta = count - self._copied_buckets[i]
                if delta:
                    hist._buckets[i].inc(delta)
            if total > self._copied_total:
                hist._sum.inc(total - self._copied_total)
            self._copied_buckets = counts
            self._copied_total = total

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition of this process, or of every worker in multiprocess
        mode, in the format ``accept`` asks for (the Prometheus text format
        0.0.4 by default, OpenMetrics on request); and its content type."""
        prom = self._prom
        self.sync()
        self.ensure_running()
        if self.registry is not None:
            registry = self.registry
        else:
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        encoder, content_type = prom.exposition.choose_encoder(accept)
        return encoder(registry), content_type


def metrics_for(
    guard: t.Any, current: Metrics | None, hub: Hub, check_fork: t.Callable[[], None]
) -> Metrics | None:
    """The metrics a broker needs for its ``metrics`` setting: ``None`` (and
    no timing in the hub) while it is ``None``/``False``, else ``current`` or
    a new :class:`Metrics` whose timing the hub's new streams count into."""
    if guard is None or guard is False:
        hub.timing = None
        return None
    if current is None:
        current = Metrics(hub, check_fork)
        hub.timing = current.timing
    return current
