"""``GET /_sse/metrics`` over real sockets, on every server model (SPEC §9.4)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .redis_support import SHARED_URL, requires_redis
from .support import (
    ROOT,
    SERVER_KINDS,
    EventReader,
    Server,
    connect_url,
    http_request,
    only_worker,
    wait_for,
    worker_pids,
)

METRICS_CONFIG = {
    "SSE_HEARTBEAT_INTERVAL": 0.5,
    "SSE_EVENT_BUFFER_SIZE": 100,
    "SSE_METRICS": True,
}


@pytest.fixture(scope="module", params=SERVER_KINDS)
def met(request: pytest.FixtureRequest) -> t.Iterator[Server]:
    """The test app with metrics on, under each server model."""
    srv = Server(request.param, config=METRICS_CONFIG)
    srv.start()
    yield srv
    srv.stop()


def scrape(srv: Server) -> dict[str, float]:
    """Every sample of a scrape, keyed ``name`` or ``name{le}`` for buckets."""
    status, body = http_request("GET", srv.url("/_sse/metrics"))
    assert status == 200, body
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = sample.name + (f"{{{sample.labels['le']}}}" if "le" in sample.labels else "")
            samples[key] = sample.value
    return samples


def wait_metric(srv: Server, name: str, expected: float, timeout: float = 10.0) -> dict[str, float]:
    def matches() -> dict[str, float] | None:
        samples = scrape(srv)
        return samples if samples.get(name) == expected else None

    return wait_for(  # type: ignore[no-any-return]
        matches,
        timeout,
        0.1,
        f"{name} == {expected}",
    )


def test_metrics_is_404_unless_enabled(server: Server) -> None:
    status, _ = http_request("GET", server.url("/_sse/metrics"))
    assert status == 404


def test_metrics_without_admission_by_the_guard_is_404(make_server: t.Callable[..., Server]) -> None:
    srv = make_server("werkzeug", config={"SSE_METRICS": False})
    status, _ = http_request("GET", srv.url("/_sse/metrics"))
    assert status == 404


def test_metrics_answer_the_prometheus_text_format_with_every_named_metric(met: Server) -> None:
    conn = socket.create_connection(("127.0.0.1", met.port))
    with contextlib.closing(conn):
        conn.sendall(b"GET /_sse/metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
    assert b"content-type: text/plain; version=0.0.4" in head.lower()
    samples = scrape(met)
    for name in (
        "flask_sse_connections",
        "flask_sse_clients",
        "flask_sse_events_published_total",
        "flask_sse_deliveries_total",
        "flask_sse_events_dropped_total",
        "flask_sse_delivery_seconds_count",
        "flask_sse_delivery_seconds_sum",
        "flask_sse_delivery_seconds_bucket{+Inf}",
    ):
        assert name in samples, name


def test_gauges_count_open_streams_and_client_ids(met: Server) -> None:
    before = scrape(met)
    with EventReader(connect_url(met)) as first:
        token = first.connected()["token"]
        with EventReader(connect_url(met, token=token)) as second:  # the same client, a second tab
            second.connected()
            after = scrape(met)
            assert after["flask_sse_connections"] == before["flask_sse_connections"] + 2
            assert after["flask_sse_clients"] == before["flask_sse_clients"] + 1
    wait_metric(met, "flask_sse_connections", before["flask_sse_connections"])


def test_counters_follow_publishes_and_deliveries(met: Server) -> None:
    readers = [EventReader(connect_url(met, topics="count")) for _ in range(3)]
    try:
        for reader in readers:
            reader.connected()
        before = scrape(met)
        for i in range(5):
            met.publish("count", i)
        for reader in readers:
            assert [e.json() for e in reader.take(5)] == list(range(5))
        after = scrape(met)
        published = after["flask_sse_events_published_total"] - before["flask_sse_events_published_total"]
        delivered = after["flask_sse_deliveries_total"] - before["flask_sse_deliveries_total"]
        assert (published, delivered) == (5, 15)
    finally:
        for reader in readers:
            reader.close()


def test_the_delivery_histogram_counts_every_written_event(met: Server) -> None:
    readers = [EventReader(connect_url(met, topics="timed")) for _ in range(2)]
    try:
        for reader in readers:
            reader.connected()
        before = scrape(met)
        for i in range(10):
            met.publish("timed", i)
        for reader in readers:
            reader.take(10)
        count = before["flask_sse_delivery_seconds_count"] + 20
        # A write is timed when the server asks the stream for its next chunk,
        # which it does as soon as the write returns.
        after = wait_metric(met, "flask_sse_delivery_seconds_count", count)
        assert after["flask_sse_delivery_seconds_bucket{+Inf}"] == count
        assert after["flask_sse_delivery_seconds_bucket{10.0}"] == count
        took = after["flask_sse_delivery_seconds_sum"] - before["flask_sse_delivery_seconds_sum"]
        assert 0 < took < 20 * 10
    finally:
        for reader in readers:
            reader.close()


def test_the_dropped_counter_counts_a_stalled_readers_overflow(make_server: t.Callable[..., Server]) -> None:
    srv = make_server("gevent", config={**METRICS_CONFIG, "SSE_EVENT_BUFFER_SIZE": 5})
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    with contextlib.closing(stalled):
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /_sse/connect?topics=flood HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: scrape(srv)["flask_sse_connections"] == 1, what="the stalled stream")
        srv.post("/test/publish", {"topic": "flood", "count": 200, "pad": 60_000})
        wait_for(lambda: scrape(srv)["flask_sse_events_dropped_total"] >= 1, 30, what="a drop")


def test_metrics_off_never_imports_prometheus_client() -> None:
    code = (
        "import sys\n"
        "from flask import Flask\n"
        "from flask_sse_broker import SSEBroker, create_blueprint\n"
        "app = Flask(__name__)\n"
        "app.register_blueprint(create_blueprint(SSEBroker()))\n"
        "app.test_client().get('/_sse/metrics')\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- several workers ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gevent", "gthread"])
def test_two_workers_in_multiprocess_mode_sum_their_figures(kind: str, tmp_path: Path) -> None:
    srv = Server(
        kind,
        config=METRICS_CONFIG,
        workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        gunicorn_args=["-c", str(ROOT / "examples" / "metrics" / "gunicorn.conf.py")],
    )
    readers: list[EventReader] = []
    with srv:
        workers = worker_pids(srv, 2)
        try:
            # Two streams on the first worker, one on the second; each worker
            # publishes to its own subscribers (in-process backend).
            for pid, streams, events in ((workers[0], 2, 3), (workers[1], 1, 2)):
                with only_worker(pid, workers):
                    for _ in range(streams):
                        readers.append(EventReader(connect_url(srv, topics="sum")))
                        readers[-1].connected()
                    for i in range(events):
                        srv.publish("sum", i)
            for reader in readers:
                reader.drain(0.2)
            expected = {
                "flask_sse_connections": 3,
                "flask_sse_clients": 3,
                "flask_sse_events_published_total": 5,
                "flask_sse_deliveries_total": 2 * 3 + 1 * 2,
                "flask_sse_delivery_seconds_count": 8,
            }

            def figures() -> dict[str, float | None]:
                samples = scrape(srv)
                return {k: samples.get(k) for k in expected}

            # Each worker copies its figures to the shared files once a second.
            wait_for(lambda: figures() == expected, 15, 0.2, f"the summed figures {expected}")
            for pid in workers:  # whichever worker answers the scrape
                with only_worker(pid, workers):
                    assert figures() == expected
        finally:
            for reader in readers:
                reader.close()


# -- through Redis ------------------------------------------------------------------


@requires_redis
def test_through_redis_published_events_are_counted_once_and_timed(
    make_server: t.Callable[..., Server], prefix: str
) -> None:
    config = {**METRICS_CONFIG, "SSE_REDIS_URL": SHARED_URL, "SSE_REDIS_PREFIX": prefix}
    srv = make_server("gthread", config=config)
    with EventReader(connect_url(srv, topics="redis-timed")) as reader:
        reader.connected()
        for i in range(5):
            srv.publish("redis-timed", i)
        assert [e.json() for e in reader.take(5)] == list(range(5))
        after = wait_metric(srv, "flask_sse_delivery_seconds_count", 5)
        assert after["flask_sse_events_published_total"] == 5
        # Stamped from the stream id (Redis's clock, in milliseconds).
        assert 0 <= after["flask_sse_delivery_seconds_sum"] < 5 * 10
