"""The broker in process: fan-out, order, replay, limits, hooks and signals.

These drive SSEBroker directly and read each connection through its WSGI
iterator, decoded with the spec-correct decoder. The same behaviours are
checked over real sockets, under every server model, in test_http.py.
"""

from __future__ import annotations

import json
import threading
import typing as t

import pytest

from flask_sse_broker import (
    BrokerUnavailable,
    ClientNotFound,
    EventTooLarge,
    InvalidEventId,
    InvalidTopic,
    SSEBroker,
    SSEConfig,
    SSEConnection,
    SSEEvent,
    SSEHelper,
    TooManyConnections,
    TooManyTopics,
    client_connected,
    client_disconnected,
    event_dropped,
    event_published,
)
from flask_sse_broker._decoder import ServerSentEvent, iter_events

from .support import wait_for


def read(broker: SSEBroker, conn: SSEConnection) -> list[ServerSentEvent]:
    """Everything the connection would write now, without blocking."""
    chunks = []
    while _has_more(broker, conn):
        try:
            chunks.append(next(conn))
        except StopIteration:
            break
    return [e for e in iter_events(chunks) if e.event]


def _has_more(broker: SSEBroker, conn: SSEConnection) -> bool:
    """Whether ``next(conn)`` would return (or end the stream) without waiting."""
    stream = broker._debug_state(conn)["stream"]
    return bool(stream["head"] or stream["queued"] or (stream["closed"] and not stream["finished"]))


def payloads(events: list[ServerSentEvent], name: str = "message") -> list[t.Any]:
    return [json.loads(e.data) for e in events if e.event == name]


@pytest.fixture
def broker() -> t.Iterator[SSEBroker]:
    b = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False))
    yield b
    b.shutdown(timeout=0)


def test_first_frames_are_retry_then_connected(broker: SSEBroker) -> None:
    conn = broker.open_stream("c1", topics=["a"], token="tok")
    first = read(broker, conn)[0]
    assert first.event == "connected"
    assert first.retry == broker.config.retry
    assert json.loads(first.data) == {
        "clientId": "c1",
        "token": "tok",
        "topics": ["a"],
        "lastEventId": broker.last_event_id(),
        "heartbeat": 0,
    }


def test_topic_events_reach_only_subscribers(broker: SSEBroker) -> None:
    a = broker.open_stream(topics=["a"])
    b = broker.open_stream(topics=["b"])
    read(broker, a), read(broker, b)
    assert broker.broadcast_to_topic("a", 1) == 1
    assert broker.broadcast(2) == 2
    assert payloads(read(broker, a)) == [1, 2]
    assert payloads(read(broker, b)) == [2]


def test_send_reaches_every_connection_of_one_client(broker: SSEBroker) -> None:
    tab1 = broker.open_stream("user-1")
    tab2 = broker.open_stream("user-1")
    other = broker.open_stream("user-2")
    for c in (tab1, tab2, other):
        read(broker, c)
    assert broker.send("user-1", {"hi": 1}, event="dm") == 2
    assert payloads(read(broker, tab1), "dm") == [{"hi": 1}]
    assert payloads(read(broker, tab2), "dm") == [{"hi": 1}]
    assert read(broker, other) == []
    assert broker.client_count() == 2
    assert len(broker.get_client("user-1").connections) == 2  # type: ignore[union-attr]


def test_events_keep_publish_order_per_publisher_across_threads(broker: SSEBroker) -> None:
    broker.config.event_buffer_size = 5000
    conn = broker.open_stream(topics=["t"])
    read(broker, conn)

    def publisher(p: int) -> None:
        for n in range(250):
            broker.broadcast_to_topic("t", {"p": p, "n": n})

    threads = [threading.Thread(target=publisher, args=(p,)) for p in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    events = read(broker, conn)
    got = payloads(events)
    assert len(got) == 1000
    for p in range(4):
        assert [e["n"] for e in got if e["p"] == p] == list(range(250))
    ids = [e.id for e in events if e.event == "message"]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_reconnect_with_last_id_replays_exactly_what_was_missed(broker: SSEBroker) -> None:
    conn = broker.open_stream("c", topics=["t"])
    broker.broadcast_to_topic("t", "before")
    last = read(broker, conn)[-1].id
    conn.close()
    for i in range(50):
        broker.broadcast_to_topic("t", i)
    broker.broadcast_to_topic("other", "not mine")
    broker.send("c", "direct")
    broker.send("someone-else", "not mine")
    broker.broadcast("everyone")
    again = broker.open_stream("c", topics=["t"], last_event_id=last)
    events = read(broker, again)
    assert events[0].event == "connected"
    assert payloads(events) == [*range(50), "direct", "everyone"]


def test_replay_and_live_events_neither_overlap_nor_gap(broker: SSEBroker) -> None:
    conn = broker.open_stream(topics=["t"])
    broker.broadcast_to_topic("t", 0)
    cursor = read(broker, conn)[-1].id
    conn.close()
    broker.broadcast_to_topic("t", 1)
    again = broker.open_stream(topics=["t"], last_event_id=cursor)
    broker.broadcast_to_topic("t", 2)
    assert payloads(read(broker, again)) == [1, 2]


def test_cursor_older_than_history_gets_reset_first() -> None:
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, history_size=10, handle_sigterm=False))
    conn = broker.open_stream(topics=["t"])
    broker.broadcast_to_topic("t", 0)
    cursor = read(broker, conn)[-1].id
    conn.close()
    for i in range(20):
        broker.broadcast_to_topic("t", i)
    events = read(broker, broker.open_stream(topics=["t"], last_event_id=cursor))
    assert [e.event for e in events] == ["connected", "reset"]
    assert json.loads(events[0].data)["lastEventId"] == broker.last_event_id()


def test_cursor_from_a_previous_server_life_gets_reset_and_this_life(broker: SSEBroker) -> None:
    broker.broadcast_to_topic("t", "after restart")
    events = read(broker, broker.open_stream(topics=["t"], last_event_id="123-45"))
    assert [e.event for e in events] == ["connected", "reset", "message"]
    assert payloads(events) == ["after restart"]


def test_connected_carries_the_cursor_so_a_quiet_client_misses_nothing(broker: SSEBroker) -> None:
    broker.broadcast(0)
    conn = broker.open_stream(topics=["t"])
    (hello,) = read(broker, conn)
    assert hello.id == broker.last_event_id()
    conn.close()
    broker.broadcast_to_topic("t", "while away")
    assert payloads(read(broker, broker.open_stream(topics=["t"], last_event_id=hello.id))) == ["while away"]


@pytest.mark.parametrize("bad", ["abc", "1-2-3", "x" * 300, "1\n2", "-1-1"])
def test_malformed_last_event_id_is_refused_and_leaves_no_state(broker: SSEBroker, bad: str) -> None:
    with pytest.raises(InvalidEventId):
        broker.open_stream("c", topics=["t"], last_event_id=bad)
    assert broker.client_count() == 0
    assert broker.stats()["connections"] == 0


def test_slow_connection_is_disconnected_at_its_bound_and_counted() -> None:
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, event_buffer_size=10, handle_sigterm=False))
    dropped: list[str] = []

    def on_dropped(sender: SSEBroker, client: t.Any, policy: str, **kw: t.Any) -> None:
        dropped.append(policy)

    event_dropped.connect(on_dropped)
    try:
        slow = broker.open_stream("slow", topics=["t"])
        fast = broker.open_stream("fast", topics=["t"])
        read(broker, fast)
        for i in range(25):
            broker.broadcast_to_topic("t", i)
            assert broker._debug_state(slow)["stream"]["queued"] <= 10
            assert payloads(read(broker, fast)) == [i]
    finally:
        event_dropped.disconnect(on_dropped)
    assert slow.closed
    assert broker.get_client("slow") is None
    assert broker.stats()["overflow_disconnects"] == 1
    assert dropped == ["disconnect"]


def test_drop_oldest_keeps_the_newest_events() -> None:
    broker = SSEBroker(
        SSEConfig(heartbeat_interval=0, event_buffer_size=5, overflow="drop_oldest", handle_sigterm=False)
    )
    conn = broker.open_stream(topics=["t"])
    read(broker, conn)
    for i in range(12):
        broker.broadcast_to_topic("t", i)
    assert payloads(read(broker, conn)) == [7, 8, 9, 10, 11]
    assert conn.dropped == 7
    assert broker.stats()["dropped"] == 7


def test_subscriptions_outlive_a_reconnect(broker: SSEBroker) -> None:
    conn = broker.open_stream("c")
    broker.subscribe("c", "server-side")
    conn.close()
    assert broker.clients_by_topic("server-side") == []
    again = broker.open_stream("c")
    assert json.loads(read(broker, again)[0].data)["topics"] == ["server-side"]


def test_a_remembered_session_expires_after_the_session_ttl() -> None:
    broker = SSEBroker(SSEConfig(heartbeat_interval=0.05, session_ttl=0.2, handle_sigterm=False))
    try:
        conn = broker.open_stream("c")
        broker.subscribe("c", "server-side")
        conn.close()
        assert broker._debug_state()["sessions"] == {"c": ["server-side"]}
        wait_for(lambda: broker._debug_state()["sessions"] == {}, what="the session to expire")
        with pytest.raises(ClientNotFound):
            broker.subscribe("c", "x")
    finally:
        broker.shutdown(timeout=0)


def test_subscribe_and_unsubscribe_change_delivery(broker: SSEBroker) -> None:
    conn = broker.open_stream("c")
    read(broker, conn)
    assert broker.subscribe("c", "a", "b") == {"a", "b"}
    broker.broadcast_to_topic("a", 1)
    assert broker.unsubscribe("c", "a") == {"b"}
    broker.broadcast_to_topic("a", 2)
    broker.broadcast_to_topic("b", 3)
    assert payloads(read(broker, conn)) == [1, 3]
    assert broker.clients_by_topic("b") == ["c"]
    assert broker.clients_by_topic("a") == []


def test_topics_may_be_given_as_one_list(broker: SSEBroker) -> None:
    broker.open_stream("c")
    assert broker.subscribe("c", ["a", "b"]) == {"a", "b"}
    assert broker.unsubscribe("c", ("a",)) == {"b"}
    with pytest.raises(InvalidTopic):
        broker.subscribe("c", ["ok", 42])


def test_subscribe_unknown_client_raises(broker: SSEBroker) -> None:
    with pytest.raises(ClientNotFound):
        broker.subscribe("nobody", "a")


@pytest.mark.parametrize("topic", ["", "x" * 201, "a\nb", "a\rb", "a\x00b", "\x7f"])
def test_bad_topics_are_refused(broker: SSEBroker, topic: str) -> None:
    with pytest.raises(InvalidTopic):
        broker.open_stream(topics=[topic])
    with pytest.raises(InvalidTopic):
        broker.broadcast_to_topic(topic, 1)
    assert broker.stats()["connections"] == 0


def test_too_many_topics_are_refused(broker: SSEBroker) -> None:
    broker.config.max_topics_per_connection = 3
    with pytest.raises(TooManyTopics):
        broker.open_stream(topics=["a", "b", "c", "d"])
    conn = broker.open_stream("c", topics=["a", "b", "c"])
    with pytest.raises(TooManyTopics):
        broker.subscribe("c", "d")
    assert conn.client.topics == {"a", "b", "c"}


def test_oversized_event_is_refused(broker: SSEBroker) -> None:
    broker.config.max_event_bytes = 100
    before = broker.last_event_id()
    with pytest.raises(EventTooLarge):
        broker.broadcast("x" * 200)
    assert broker.last_event_id() == before


def test_max_connections_gives_unavailable(broker: SSEBroker) -> None:
    broker.config.max_connections = 2
    broker.open_stream()
    broker.open_stream()
    with pytest.raises(BrokerUnavailable):
        broker.open_stream()
    with pytest.raises(TooManyConnections, match="too many connections"):
        broker.connect()
    assert broker.stats()["connections"] == 2


def test_hooks_and_signals_fire_once_per_client_in_order(broker: SSEBroker) -> None:
    calls: list[tuple[str, str]] = []
    broker.config.on_connect = lambda c: calls.append(("hook-connect", c.id))
    broker.config.on_disconnect = lambda c: calls.append(("hook-disconnect", c.id))

    def connected(sender: SSEBroker, client: t.Any) -> None:
        calls.append(("signal-connect", client.id))

    def disconnected(sender: SSEBroker, client: t.Any) -> None:
        calls.append(("signal-disconnect", client.id))

    client_connected.connect(connected, sender=broker)
    client_disconnected.connect(disconnected, sender=broker)
    try:
        one = broker.open_stream("u")
        two = broker.open_stream("u")
        one.close()
        two.close()
        two.close()
    finally:
        client_connected.disconnect(connected)
        client_disconnected.disconnect(disconnected)
    assert calls == [
        ("hook-connect", "u"),
        ("signal-connect", "u"),
        ("hook-disconnect", "u"),
        ("signal-disconnect", "u"),
    ]


def test_event_published_signal_carries_the_event(broker: SSEBroker) -> None:
    seen: list[tuple[t.Any, ...]] = []

    def on_published(sender: SSEBroker, event: SSEEvent, target: str, key: str, queued: int) -> None:
        seen.append((event.data, target, key, queued))

    event_published.connect(on_published, sender=broker)
    try:
        broker.open_stream(topics=["t"])
        broker.broadcast_to_topic("t", {"x": 1})
    finally:
        event_published.disconnect(on_published)
    assert seen == [({"x": 1}, "topic", "t", 1)]


def test_disconnect_closes_every_connection_of_a_client(broker: SSEBroker) -> None:
    one = broker.open_stream("u")
    two = broker.open_stream("u")
    assert broker.disconnect("u") == 2
    assert one.closed and two.closed
    assert broker.client_count() == 0
    read(broker, one)
    with pytest.raises(StopIteration):
        next(one)


def test_shutdown_ends_every_stream_with_a_retry_hint(broker: SSEBroker) -> None:
    conn = broker.open_stream(topics=["t"])
    read(broker, conn)
    broker.shutdown(timeout=0)
    chunks = list(conn)
    assert chunks and chunks[-1].startswith(b"retry: ")
    with pytest.raises(BrokerUnavailable):
        broker.open_stream()


def test_sent_event_fields_are_honoured(broker: SSEBroker) -> None:
    conn = broker.open_stream()
    read(broker, conn)
    broker.broadcast(SSEEvent("hi", event="greeting", retry=1234))
    (event,) = read(broker, conn)
    assert (event.event, event.data, event.retry) == ("greeting", '"hi"', 1234)
    with pytest.raises(TypeError):
        broker.broadcast(SSEEvent(1), event="x")


@pytest.mark.parametrize(
    ("method", "args", "name", "data"),
    [
        ("notify", ({"m": 1},), "notification", {"m": 1}),
        ("update", ("count", 42), "update", {"key": "count", "value": 42}),
        ("alert", ("warning", "disk"), "alert", {"level": "warning", "message": "disk"}),
        ("progress", (75, "up"), "progress", {"progress": 75, "message": "up"}),
    ],
)
def test_helper_patterns_for_client_all_and_topic(
    broker: SSEBroker, method: str, args: tuple[t.Any, ...], name: str, data: t.Any
) -> None:
    helper = SSEHelper(broker)
    conn = broker.open_stream("c", topics=["t"])
    read(broker, conn)
    getattr(helper, method)("c", *args)
    getattr(helper, method + "_all")(*args)
    getattr(helper, method + "_topic")("t", *args)
    assert payloads(read(broker, conn), name) == [data, data, data]


def test_an_event_both_replayed_and_delivered_live_arrives_once() -> None:
    from flask_sse_broker.backends.base import ALL, Replay
    from flask_sse_broker.backends.memory import MemoryBackend

    class OverlappingBackend(MemoryBackend):
        """Replays outside the lock, as a distributed backend does: an event
        published between registration and the history read is both queued
        live and part of the replay."""

        def replay(self, cursor: str | None) -> Replay:
            self.publish(ALL, None, SSEEvent("overlap").body)
            return super().replay(cursor)

    broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False), backend=OverlappingBackend(100))
    broker.broadcast("before")
    cursor = broker.last_event_id()
    broker.broadcast("missed")
    conn = broker.open_stream(last_event_id=cursor)
    broker.broadcast("after")
    assert payloads(read(broker, conn)) == ["missed", "overlap", "after"]


def test_a_page_rendered_before_the_first_event_misses_nothing(broker: SSEBroker) -> None:
    rendered = broker.last_event_id()
    assert rendered is not None
    broker.broadcast("between render and connect")
    assert payloads(read(broker, broker.open_stream(last_event_id=rendered))) == [
        "between render and connect"
    ]
