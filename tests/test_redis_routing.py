"""Routing over real Redis (SPEC 9.6): a process receives from Redis only the
events it has local recipients for, and keeps section 6's guarantees.

Each broker here is a separate "process" to Redis (its own listener, pub/sub
connection and node id) on one shared key prefix. What a process received is
read from its listener's message counter (``_debug_state()["backend"]``): a
sentinel event for one of its own topics, published last, proves everything
published before it has reached it (one order on one Redis).
"""

from __future__ import annotations

import redis

from flask_sse_broker import SSEBroker

from .redis_support import (
    SHARED_URL,
    Cluster,
    ConnectionReader,
    connections_named,
    requires_redis,
)
from .support import wait_for

pytestmark = requires_redis


def received(broker: SSEBroker) -> int:
    """Messages this process's listener got from Redis so far."""
    return int(broker._debug_state()["backend"]["received"])


def channels(broker: SSEBroker) -> list[str]:
    return list(broker._debug_state()["backend"]["channels"])


def test_an_event_for_a_topic_is_not_received_by_a_process_without_its_subscriber(cluster: Cluster) -> None:
    x_holder, y_holder, publisher = cluster.broker(), cluster.broker(), cluster.broker()
    rx = ConnectionReader(x_holder.open_stream(topics=["x"]))
    ry = ConnectionReader(y_holder.open_stream(topics=["y"]))
    rx.connected()
    ry.connected()
    before = received(y_holder)
    for i in range(50):
        publisher.broadcast_to_topic("x", i)
    publisher.broadcast_to_topic("y", "sentinel")
    assert ry.next().json() == "sentinel"
    assert [e.json() for e in rx.take(50)] == list(range(50))
    assert received(y_holder) - before == 1  # the sentinel alone


def test_a_process_stops_receiving_a_topic_when_its_last_local_subscriber_leaves(cluster: Cluster) -> None:
    holder, publisher = cluster.broker(), cluster.broker()
    keeper = ConnectionReader(holder.open_stream(topics=["keep"]))
    leaver = ConnectionReader(holder.open_stream(topics=["gone"]))
    keeper.connected()
    leaver.connected()
    assert f"{cluster.prefix}:t:gone" in channels(holder)
    leaver.close()
    assert leaver.wait_ended()
    before = received(holder)
    for i in range(20):
        publisher.broadcast_to_topic("gone", i)
    publisher.broadcast_to_topic("keep", "sentinel")
    assert keeper.next().json() == "sentinel"
    assert received(holder) - before == 1
    assert f"{cluster.prefix}:t:gone" not in channels(holder)


def test_a_send_reaches_only_the_process_holding_the_client(cluster: Cluster) -> None:
    alice_home, bob_home = cluster.broker(), cluster.broker()
    alice = ConnectionReader(alice_home.open_stream("alice"))
    bob = ConnectionReader(bob_home.open_stream("bob"))
    alice.connected()
    bob.connected()
    before = received(bob_home)
    for i in range(20):
        bob_home.send("alice", i)
    alice_home.send("bob", "sentinel")
    assert bob.next().json() == "sentinel"
    assert [e.json() for e in alice.take(20)] == list(range(20))
    assert received(bob_home) - before == 1


def test_broadcasts_reach_every_process(cluster: Cluster) -> None:
    a, b, publisher = cluster.broker(), cluster.broker(), cluster.broker()
    ra = ConnectionReader(a.open_stream(topics=["x"]))
    rb = ConnectionReader(b.open_stream(topics=["y"]))
    ra.connected()
    rb.connected()
    publisher.broadcast("to all")
    assert ra.next().json() == rb.next().json() == "to all"


def test_an_event_published_right_after_a_stream_opens_on_a_new_topic_is_not_lost(cluster: Cluster) -> None:
    holder, publisher = cluster.broker(), cluster.broker()
    for round_ in range(30):
        topic = f"new-{round_}"
        reader = ConnectionReader(holder.open_stream(topics=[topic]))
        publisher.broadcast_to_topic(topic, round_)
        reader.connected()
        assert reader.next().json() == round_
        reader.close()


def test_a_topic_subscribed_from_another_process_gets_every_event_published_after(cluster: Cluster) -> None:
    holder, other = cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream("carol"))
    reader.connected()
    for round_ in range(20):
        topic = f"late-{round_}"
        other.subscribe("carol", topic)
        # Published at once, from the other process: the holder learns of the
        # subscription through Redis and must not miss this event.
        other.broadcast_to_topic(topic, round_)
        other.send("carol", f"after-{round_}")
        assert [e.json() for e in reader.take(2)] == [round_, f"after-{round_}"]


def test_one_connection_gets_topics_broadcasts_and_sends_in_publish_order(cluster: Cluster) -> None:
    holder, p1, p2 = cluster.broker(), cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream("dora", topics=["x", "y"]))
    reader.connected()
    plan = []
    for i in range(200):
        publisher = p1 if i % 2 else p2
        kind = i % 4
        if kind == 0:
            publisher.broadcast_to_topic("x", i)
        elif kind == 1:
            publisher.broadcast_to_topic("y", i)
        elif kind == 2:
            publisher.broadcast(i)
        else:
            publisher.send("dora", i)
        plan.append(i)
    events = reader.take(200)
    assert [e.json() for e in events] == plan
    ids = [e.id for e in events]
    assert ids == sorted(ids, key=lambda v: tuple(int(p) for p in v.split("-")))


def test_nothing_is_lost_on_a_routed_topic_across_a_listener_reconnect(cluster: Cluster) -> None:
    holder, publisher = cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream(topics=["x"]))
    reader.connected()
    publisher.broadcast_to_topic("x", 0)
    assert reader.next().json() == 0
    node = holder.backend.node  # type: ignore[attr-defined]
    listeners = [e for e in connections_named(SHARED_URL, f"{cluster.prefix}:{node}") if int(e.get("sub", 0))]
    assert len(listeners) == 1, listeners
    admin = redis.Redis.from_url(SHARED_URL)
    try:
        admin.client_kill_filter(_id=listeners[0]["id"])
        for i in range(1, 21):
            publisher.broadcast_to_topic("x", i)
            publisher.broadcast_to_topic("not-here", i)
    finally:
        admin.close()
    assert [e.json() for e in reader.take(20)] == list(range(1, 21))


def test_a_client_resuming_on_another_process_gets_its_topic_events_from_the_shared_history(
    cluster: Cluster,
) -> None:
    first, second = cluster.broker(), cluster.broker()
    a = ConnectionReader(first.open_stream("erin", topics=["x"]))
    a.connected()
    first.broadcast_to_topic("x", 0)
    last = a.next().id
    a.close()
    for i in range(1, 6):
        first.broadcast_to_topic("x", i)  # nobody on "second" holds x yet
    b = ConnectionReader(second.open_stream("erin", last_event_id=last))
    assert b.connected()["topics"] == ["x"]
    assert [e.json() for e in b.take(5)] == [1, 2, 3, 4, 5]
    first.broadcast_to_topic("x", 6)
    assert b.next().json() == 6


def patterns(broker: SSEBroker) -> list[str]:
    return list(broker._debug_state()["backend"]["patterns"])


def test_a_process_holding_only_a_pattern_receives_a_matching_event_from_another_process(
    cluster: Cluster,
) -> None:
    holder, publisher = cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream(topics=["rp/*"]))
    reader.connected()
    assert patterns(holder) == [f"{cluster.prefix}:t:rp/*"]
    publisher.broadcast_to_topic("rp/1", "hello")
    assert reader.next().json() == "hello"


def test_a_process_holding_a_topic_and_a_matching_pattern_delivers_the_event_once(cluster: Cluster) -> None:
    holder, publisher = cluster.broker(), cluster.broker()
    by_topic = ConnectionReader(holder.open_stream(topics=["rp/1"]))
    by_pattern = ConnectionReader(holder.open_stream(topics=["rp/*"]))
    by_topic.connected()
    by_pattern.connected()
    before = received(holder)
    publisher.broadcast_to_topic("rp/1", "one")
    publisher.broadcast_to_topic("rp/1", "two")
    for reader in (by_topic, by_pattern):
        assert [e.json() for e in reader.take(2)] == ["one", "two"]
    # Redis sent each event twice (message and pmessage); the listener
    # delivered it once, else each stream would have read "one" twice.
    wait_for(lambda: received(holder) - before == 4, 10, what="both copies of both events")


def test_a_pattern_is_unsubscribed_when_its_last_local_holder_leaves(cluster: Cluster) -> None:
    holder = cluster.broker()
    keeper = ConnectionReader(holder.open_stream(topics=["keep"]))
    first = ConnectionReader(holder.open_stream(topics=["rp/**"]))
    second = ConnectionReader(holder.open_stream(topics=["rp/**"]))
    for reader in (keeper, first, second):
        reader.connected()
    first.close()
    assert first.wait_ended()
    assert patterns(holder) == [f"{cluster.prefix}:t:rp/*"]
    second.close()
    wait_for(lambda: patterns(holder) == [], 10, what="the pattern to be unsubscribed")


def test_an_unsubscribe_reaches_a_process_that_remembers_an_older_session(cluster: Cluster) -> None:
    # B remembers alice's topics in memory after her stream there ends; she
    # then lives on A, where "b" is taken from her. Back on B within the
    # session's lifetime, she must not get "b" back from B's memory.
    a, b = cluster.broker(), cluster.broker()
    first = ConnectionReader(b.open_stream("alice", topics=["a", "b"]))
    assert sorted(first.connected()["topics"]) == ["a", "b"]
    first.close()
    assert first.wait_ended()
    wait_for(lambda: not b.is_connected("alice"), 10, what="alice gone from B")
    second = ConnectionReader(a.open_stream("alice"))
    assert sorted(second.connected()["topics"]) == ["a", "b"]
    assert a.unsubscribe("alice", "b") == frozenset({"a"})
    second.close()
    assert second.wait_ended()
    wait_for(lambda: not a.is_connected("alice"), 10, what="alice gone from A")
    third = ConnectionReader(b.open_stream("alice"))
    assert third.connected()["topics"] == ["a"]
