"""The hub alone: registries, fan-out, overflow, the heartbeat pass, sessions.

No broker, backend, thread or socket: a hub, its connections, and events
framed by hand, read back through each connection's WSGI iterator.
"""

from __future__ import annotations

import threading
import time
import typing as t

import pytest

from flask_sse_broker import SSEClient, SSEConfig, SSEConnection, TooManyConnections, TooManyTopics
from flask_sse_broker._decoder import iter_events
from flask_sse_broker._hub import Hub
from flask_sse_broker._wire import Audience, Envelope
from flask_sse_broker.exceptions import BrokerUnavailable, ClientNotFound

_seq = iter(range(1, 1_000_000))


def event(audience: Audience = Audience.ALL, target: str | None = None, data: str = "x") -> Envelope:
    return Envelope.encode((1, next(_seq)), audience, target, b"data: %s\n" % data.encode())


class Watcher:
    """Records what the hub tells its watchers, and whether the lock was held."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.calls: list[tuple[str, str]] = []
        self.lock_held: list[bool] = []

    def _record(self, what: str, name: str) -> None:
        self.calls.append((what, name))
        self.lock_held.append(self.hub.lock.locked())

    def client_opened(self, client: SSEClient) -> None:
        self._record("opened", client.id)

    def client_closed(self, client: SSEClient) -> None:
        self._record("closed", client.id)

    def overflowed(self, connections: list[SSEConnection], first: list[SSEConnection]) -> None:
        self._record("overflowed", ",".join(c.client.id for c in first))


@pytest.fixture
def hub() -> Hub:
    return Hub(SSEConfig(heartbeat_interval=0, handle_sigterm=False))


@pytest.fixture
def watcher(hub: Hub) -> Watcher:
    watcher = Watcher(hub)
    hub.watchers.append(watcher)
    hub.overflow_watcher = watcher
    return watcher


def open_(hub: Hub, client_id: str, *topics: str) -> SSEConnection:
    conn, first = hub.open(client_id, frozenset(topics), None, frozenset(), threading.Event())
    if first:
        hub.opened(conn.client)
    return conn


def frames(hub: Hub, conn: SSEConnection) -> list[str]:
    """The data of everything queued for ``conn`` now."""
    chunks = []
    while hub.debug_state(conn)["stream"]["queued"]:
        chunks.append(next(conn))
    return [e.data for e in iter_events(chunks)]


def test_deliver_reaches_topic_client_and_all_audiences(hub: Hub) -> None:
    a, b = open_(hub, "a", "t"), open_(hub, "b")
    assert hub.deliver(event(Audience.TOPIC, "t", "topic")) == 1
    assert hub.deliver(event(Audience.CLIENT, "b", "direct")) == 1
    assert hub.deliver(event(Audience.ALL, None, "all")) == 2
    assert frames(hub, a) == ["topic", "all"]
    assert frames(hub, b) == ["direct", "all"]


def test_every_connection_of_a_client_shares_its_topics(hub: Hub) -> None:
    one, two = open_(hub, "c", "t"), open_(hub, "c")
    assert hub.topics_of("c") == {"t"}
    assert hub.deliver(event(Audience.TOPIC, "t")) == 2
    assert hub.subscribe("c", ["u"]) == {"t", "u"}
    assert hub.clients_by_topic("u") == ["c"]
    assert (len(frames(hub, one)), len(frames(hub, two))) == (1, 1)


def test_release_of_the_last_connection_forgets_the_client_and_tells_watchers_after_the_lock(
    hub: Hub, watcher: Watcher
) -> None:
    one, two = open_(hub, "c", "t"), open_(hub, "c")
    one.close()
    assert watcher.calls == [("opened", "c")]
    two.close()
    two.close()  # idempotent
    assert watcher.calls == [("opened", "c"), ("closed", "c")]
    assert watcher.lock_held == [False, False]
    state = hub.debug_state()
    assert (state["clients"], state["connections"], state["topics"], state["open_streams"]) == ([], 0, {}, 0)


def test_a_session_keeps_topics_until_it_expires_at_a_heartbeat_pass(hub: Hub) -> None:
    hub.config.session_ttl = 60.0
    open_(hub, "c", "t").close()
    assert hub.remembered("c") == {"t"}
    assert hub.subscribe("c", ["u"]) == {"t", "u"}  # a remembered client may change topics
    hub.beat(heartbeats=False, now=time.monotonic() + 61)
    assert hub.debug_state()["sessions"] == {}
    assert hub.remembered("c") is None
    with pytest.raises(ClientNotFound):
        hub.subscribe("c", ["v"])


def test_heartbeat_is_queued_only_on_idle_connections(hub: Hub) -> None:
    idle, busy = open_(hub, "idle"), open_(hub, "busy")
    hub.deliver(event(Audience.CLIENT, "busy", "work"))
    hub.beat()
    assert [e.event for e in iter_events([next(idle)])] == ["heartbeat"]
    assert frames(hub, busy) == ["work"]


def test_drop_oldest_keeps_the_newest_and_counts(hub: Hub, watcher: Watcher) -> None:
    hub.config.event_buffer_size = 3
    hub.config.overflow = "drop_oldest"
    conn = open_(hub, "c")
    for i in range(5):
        hub.deliver(event(data=str(i)))
    assert frames(hub, conn) == ["2", "3", "4"]
    assert (conn.dropped, hub.counters["dropped"]) == (2, 2)
    assert watcher.calls.count(("overflowed", "c")) == 1  # reported once, on its first drop


def test_disconnect_policy_ends_only_the_slow_stream(hub: Hub, watcher: Watcher) -> None:
    hub.config.event_buffer_size = 2
    slow, fast = open_(hub, "slow"), open_(hub, "fast")
    for i in range(3):
        hub.deliver(event(data=str(i)))
        assert frames(hub, fast) == [str(i)]
    assert slow.closed and not fast.closed
    assert hub.debug_state()["clients"] == ["fast"]
    assert ("closed", "slow") in watcher.calls
    assert hub.counters["overflow_disconnects"] == 1


def test_a_delivery_that_fills_half_a_queue_sets_pressure(hub: Hub) -> None:
    hub.config.event_buffer_size = 4
    open_(hub, "c")
    for _ in range(2):
        hub.deliver(event())
    assert not hub.pressure
    hub.deliver(event())
    assert hub.pressure


def test_limits_refuse_without_leaving_state(hub: Hub) -> None:
    hub.config.max_connections = 1
    hub.config.max_topics_per_connection = 2
    with pytest.raises(TooManyTopics):
        open_(hub, "c", "a", "b", "c")
    open_(hub, "c", "a")
    with pytest.raises(TooManyConnections):
        open_(hub, "d")
    assert hub.debug_state()["clients"] == ["c"]


def test_close_all_ends_every_stream_with_the_final_frame_and_refuses_new_ones(hub: Hub) -> None:
    conn = open_(hub, "c")
    assert hub.close_all(b"retry: 10\n\n") == 1
    assert list(conn) == [b"retry: 10\n\n"]
    assert hub.drained.is_set()
    with pytest.raises(BrokerUnavailable):
        open_(hub, "d")


def test_recipient_count_matches_what_deliver_queues(hub: Hub) -> None:
    open_(hub, "a", "t"), open_(hub, "a"), open_(hub, "b")
    cases: list[tuple[Audience, t.Any]] = [
        (Audience.TOPIC, "t"),
        (Audience.CLIENT, "a"),
        (Audience.ALL, None),
        (Audience.TOPIC, "none"),
    ]
    for audience, target in cases:
        assert hub.recipient_count(audience, target) == hub.deliver(event(audience, target))
