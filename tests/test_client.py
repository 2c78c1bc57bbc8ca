"""The Python consumer, :mod:`flask_sse_broker.client`, against real servers."""

from __future__ import annotations

import queue
import signal
import threading
import time
import typing as t

import pytest

from flask_sse_broker.client import EventSource, RetriesExhausted, ServerSentEvent, SSEResponseError

from .support import Server, connect_url, free_port, wait_for

CONFIG = {"SSE_HEARTBEAT_INTERVAL": 0.5, "SSE_HISTORY_SIZE": 2000, "SSE_RETRY": 100}


class Consumer:
    """Iterates an :class:`EventSource` in a thread; events land in a queue."""

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self.events: queue.Queue[ServerSentEvent] = queue.Queue()
        self.hellos: list[dict[str, t.Any]] = []
        self.connected = threading.Event()
        self.error: BaseException | None = None
        source.on_connect = self._on_connect
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.connected.wait(15), f"not connected: {self.error!r}"

    def _on_connect(self, hello: dict[str, t.Any]) -> None:
        self.hellos.append(hello)
        self.connected.set()

    def _run(self) -> None:
        try:
            for event in self.source:
                self.events.put(event)
        except BaseException as e:
            self.error = e
            self.connected.set()

    def take(self, count: int, timeout: float = 15.0) -> list[ServerSentEvent]:
        deadline = time.monotonic() + timeout
        out = []
        for _ in range(count):
            try:
                out.append(self.events.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {count} events ({self.error!r})") from None
        return out

    def close(self) -> None:
        self.source.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def numbered(events: list[ServerSentEvent]) -> list[tuple[int, int]]:
    return [(e.json()["n"], e.json()["p"]) for e in events]


@pytest.fixture
def own_server() -> t.Iterator[Server]:
    srv = Server("werkzeug", config=CONFIG, env={"SSE_TEST_AUTHZ": "secret"}).start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.signal(signal.SIGCONT)
    srv.stop()


def test_iterates_events_in_order(server: Server) -> None:
    consumer = Consumer(EventSource(connect_url(server), topics=["py-order"]))
    try:
        server.publish("py-order", count=50)
        events = consumer.take(50)
        assert numbered(events) == [(i, 0) for i in range(50)]
        assert {e.event for e in events} == {"message"}
        assert consumer.source.last_event_id == events[-1].id
    finally:
        consumer.close()


def test_connected_and_heartbeats_are_consumed(own_server: Server) -> None:
    consumer = Consumer(EventSource(connect_url(own_server), topics=["hb"]))
    try:
        source = consumer.source
        hello = consumer.hellos[0]
        assert source.client_id == hello["clientId"] and source.token == hello["token"]
        assert source.heartbeat == 0.5
        # The read timeout follows the server's heartbeat.
        assert source._sock is not None and source._sock.gettimeout() == pytest.approx(1.25)
        time.sleep(1.2)  # heartbeats flow; none may be yielded
        own_server.publish("hb", "x", event="named")
        (event,) = consumer.take(1)
        assert (event.event, event.json()) == ("named", "x")
        assert consumer.events.empty()
    finally:
        consumer.close()


def test_server_restart_mid_stream_loses_nothing(own_server: Server) -> None:
    consumer = Consumer(EventSource(connect_url(own_server), topics=["restart"]))
    try:
        own_server.publish("restart", count=10)
        before = consumer.take(10)
        own_server.stop()
        new = Server("werkzeug", config=CONFIG, port=own_server.port).start()
        try:
            new.publish("restart", count=10, publisher=1)  # maybe before the consumer is back
            reset, *after = consumer.take(11)
            new.publish("restart", count=2, publisher=2)
            live = consumer.take(2)
        finally:
            new.stop()
        assert numbered(before) == [(i, 0) for i in range(10)]
        # The new server's ids are a new epoch: the consumer is told, then replayed all of it.
        assert reset.event == "reset"
        assert numbered(after) == [(i, 1) for i in range(10)]
        assert numbered(live) == [(0, 2), (1, 2)]
        assert consumer.source.client_id == consumer.hellos[0]["clientId"]  # the token kept the id
    finally:
        consumer.close()


def test_reconnect_resumes_with_last_event_id_and_token(own_server: Server) -> None:
    source = EventSource(connect_url(own_server), topics=["resume"])
    source.reconnect_delay = 1.0  # time to publish while the consumer is away
    consumer = Consumer(source)
    try:
        own_server.publish("resume", "first")
        consumer.take(1)
        client_id = source.client_id
        own_server.post("/test/disconnect", {"client_id": client_id})
        own_server.publish("resume", count=5)
        events = consumer.take(5)
        assert numbered(events) == [(i, 0) for i in range(5)]
        assert len(consumer.hellos) == 2
        assert consumer.hellos[1]["clientId"] == client_id
        assert consumer.hellos[1]["lastEventId"] != consumer.hellos[0]["lastEventId"]
    finally:
        consumer.close()


def test_silent_server_times_out_and_reconnects(own_server: Server) -> None:
    source = EventSource(connect_url(own_server), topics=["frozen"])
    source.reconnect_delay = 0.1
    source.connect_timeout = 1.0
    consumer = Consumer(source)
    try:
        own_server.signal(signal.SIGSTOP)  # the socket stays open, nothing is written
        try:
            time.sleep(2.0)  # longer than the 1.25 s read timeout
        finally:
            own_server.signal(signal.SIGCONT)
        wait_for(lambda: len(consumer.hellos) >= 2, 15, what="a reconnect after the silence")
        own_server.publish("frozen", "after")
        assert consumer.take(1)[0].json() == "after"
    finally:
        consumer.close()


def test_a_json_answer_is_not_an_event_stream(own_server: Server) -> None:
    with pytest.raises(SSEResponseError) as info:
        next(iter(EventSource(own_server.url("/test/state"))))
    assert info.value.status == 200
    assert info.value.content_type.startswith("application/json")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/_sse/connect?topics=secret-x", 403, "not authorised"),
        ("/_sse/connect?lastEventId=nonsense", 400, "malformed last event id"),
        ("/nowhere", 404, ""),
    ],
)
def test_client_errors_are_raised_not_retried(
    own_server: Server, path: str, status: int, message: str
) -> None:
    started = time.monotonic()
    with pytest.raises(SSEResponseError) as info:
        next(iter(EventSource(own_server.url(path))))
    assert info.value.status == status
    assert message in info.value.message
    assert time.monotonic() - started < 5


def test_retries_are_bounded(own_server: Server) -> None:
    source = EventSource(f"http://127.0.0.1:{free_port()}/_sse/connect", max_retries=2)
    source.reconnect_delay = 0.01
    with pytest.raises(RetriesExhausted) as info:
        next(iter(source))
    assert info.value.attempts == 3
    assert isinstance(info.value.last_error, ConnectionRefusedError)


def test_close_from_another_thread_ends_iteration(own_server: Server) -> None:
    consumer = Consumer(EventSource(connect_url(own_server)))
    started = time.monotonic()
    consumer.close()
    assert time.monotonic() - started < 2
    assert consumer.error is None
    assert consumer.source.closed


def test_rejects_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        EventSource("ftp://127.0.0.1/x")


def test_a_server_with_another_secret_key_makes_a_new_client(own_server: Server) -> None:
    source = EventSource(connect_url(own_server), topics=["rotate"])
    consumer = Consumer(source)
    try:
        own_server.publish("rotate", "before")
        consumer.take(1)
        old_client = source.client_id
        own_server.stop()
        config = {**CONFIG, "SECRET_KEY": "rotated"}  # the old token no longer verifies
        new = Server("werkzeug", config=config, port=own_server.port).start()
        try:
            wait_for(lambda: len(consumer.hellos) >= 2, 20, what="a reconnect as a new client")
            new.publish("rotate", "after")
            events = consumer.take(2)
        finally:
            new.stop()
        assert consumer.error is None
        assert consumer.hellos[1]["clientId"] != old_client
        assert source.client_id == consumer.hellos[1]["clientId"]
        assert [e.event for e in events] == ["reset", "message"]
        assert events[1].json() == "after"
    finally:
        consumer.close()
