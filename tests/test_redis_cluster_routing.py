"""Routing on a Redis Cluster (SPEC §9.6): a process receives from Redis only
the events it has local recipients for, and nothing is lost or duplicated
while a channel becomes live, on any shard.

Each broker here is a "process" for Redis: its own listener connections, its
own node id. Topics are picked to share a partition with a topic the same
broker holds already, so "the partition is read anyway" cannot explain a pass.
"""

from __future__ import annotations

import threading
import time
import typing as t

from flask_sse_broker import SSEBroker
from flask_sse_broker._connection import SSEConnection
from flask_sse_broker._wire import Audience
from flask_sse_broker.backends._redis_cluster import RedisClusterBackend, partition_of

from .cluster_support import LocalCluster, redis_cluster, requires_cluster_tools
from .support import wait_for
from .test_redis_cluster import broker_on, new_prefix

pytestmark = requires_cluster_tools

__all__ = ["redis_cluster"]  # the module-scoped fixture


def same_partition(topic: str, count: int) -> list[str]:
    """``count`` other topics in ``topic``'s partition."""
    want = partition_of(Audience.TOPIC, topic)
    found = [f"{topic}-{i}" for i in range(10_000) if partition_of(Audience.TOPIC, f"{topic}-{i}") == want]
    return found[:count]


def backend(broker: SSEBroker) -> RedisClusterBackend:
    return t.cast(RedisClusterBackend, broker.backend)


class Reader:
    """Reads a stream in a thread: the data of each event, and its last id."""

    def __init__(self, conn: SSEConnection) -> None:
        self.conn = conn
        self.data: list[str] = []
        self.ids: list[str] = []
        self.events: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for chunk in self.conn:
            for block in chunk.decode().split("\n\n"):
                fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                if "event" in fields:
                    self.events.append(fields["event"])
                elif "data" in fields:
                    self.data.append(fields["data"].strip('"'))
                if "id" in fields:
                    self.ids.append(fields["id"])

    def close(self) -> None:
        self.conn.close()
        self.thread.join(5)


def test_a_process_without_a_subscriber_of_a_topic_receives_none_of_its_events(
    redis_cluster: LocalCluster,
) -> None:
    prefix = new_prefix()
    held, other = "held", same_partition("held", 1)[0]
    one, two = broker_on(redis_cluster, prefix), broker_on(redis_cluster, prefix)
    try:
        a, b = Reader(one.open_stream(topics=[held])), Reader(two.open_stream(topics=[other]))
        before = backend(one).debug_state()["received"]
        for i in range(20):
            one.broadcast_to_topic(other, f"o{i}")
        wait_for(lambda: len(b.data) == 20, what="the holder gets every event")
        one.broadcast_to_topic(held, "h")
        wait_for(lambda: a.data == ["h"], what="the held topic still arrives")
        # Exactly one message reached process one: its own topic's event.
        assert backend(one).debug_state()["received"] - before == 1
        channel = backend(one).topic_channel(other)
        node = redis_cluster.node_for_key(channel).client()
        assert node.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
        assert backend(one).topic_channel(held) in backend(one).debug_state()["channels"]
        assert channel not in backend(one).debug_state()["channels"]
        # The last local holder leaves: the channel goes.
        a.close()
        wait_for(
            lambda: backend(one).topic_channel(held) not in backend(one).debug_state()["channels"],
            what="the channel dropped",
        )
        b.close()
    finally:
        one.shutdown(timeout=1), two.shutdown(timeout=1)


def test_a_topic_opened_while_its_events_flow_loses_and_repeats_none(redis_cluster: LocalCluster) -> None:
    """A stream resuming from a cursor taken before the flow started, opened
    (its channel going live, and caught up) while events are published on its
    topic and on a topic the process already holds in the same partition."""
    prefix = new_prefix()
    busy, fresh = "busy", same_partition("busy", 1)[0]
    one, publisher = broker_on(redis_cluster, prefix), broker_on(redis_cluster, prefix)
    stop = threading.Event()
    published = {busy: 0, fresh: 0}

    def publish() -> None:
        while not stop.is_set():
            for topic in (busy, fresh):
                publisher.broadcast_to_topic(topic, f"{topic}:{published[topic]}")
                published[topic] += 1

    try:
        holder = Reader(one.open_stream(topics=[busy]))
        cursor = one.last_event_id()
        flow = threading.Thread(target=publish, daemon=True)
        flow.start()
        wait_for(lambda: published[fresh] > 20, what="events flowing")
        late = Reader(one.open_stream(topics=[fresh], last_event_id=cursor))
        wait_for(lambda: published[fresh] > 60, what="more events")
        stop.set()
        flow.join(5)
        n = published[fresh]
        wait_for(lambda: len(late.data) >= n, what="every event of the new topic")
        time.sleep(0.2)  # anything extra would show up now
        assert late.data == [f"{fresh}:{i}" for i in range(n)]
        assert "reset" not in late.events
        wait_for(lambda: len(holder.data) >= published[busy], what="the held topic")
        assert holder.data == [f"{busy}:{i}" for i in range(published[busy])]
        holder.close(), late.close()
    finally:
        stop.set()
        one.shutdown(timeout=1), publisher.shutdown(timeout=1)


def test_a_topic_subscribed_from_another_process_while_events_flow_gets_them_once(
    redis_cluster: LocalCluster,
) -> None:
    prefix = new_prefix()
    held, added = "held", same_partition("held", 1)[0]
    one, two = broker_on(redis_cluster, prefix), broker_on(redis_cluster, prefix)
    try:
        a = Reader(one.open_stream(topics=[held]))
        wait_for(lambda: a.events[:1] == ["connected"], what="connected")
        client_id = a.conn.client.id
        two.subscribe(client_id, [added])
        wait_for(
            lambda: backend(one).topic_channel(added) in backend(one).debug_state()["channels"],
            what="the channel held",
        )
        for i in range(30):
            two.broadcast_to_topic(held, f"h{i}")
            two.broadcast_to_topic(added, f"a{i}")
        wait_for(lambda: len(a.data) >= 60, what="every event")
        time.sleep(0.2)
        assert [d for d in a.data if d[0] == "a"] == [f"a{i}" for i in range(30)]
        assert [d for d in a.data if d[0] == "h"] == [f"h{i}" for i in range(30)]
        a.close()
    finally:
        one.shutdown(timeout=1), two.shutdown(timeout=1)


def test_a_pattern_gets_events_of_every_partition_and_topics_once(redis_cluster: LocalCluster) -> None:
    prefix = new_prefix()
    one, two = broker_on(redis_cluster, prefix), broker_on(redis_cluster, prefix)
    shard = {f"orders/{i}": redis_cluster.node_for_key(backend(one).topic_channel(f"orders/{i}")).port
             for i in range(50)}  # fmt: skip
    t1 = "orders/0"
    t2 = next(topic for topic, port in shard.items() if port != shard[t1])
    try:
        both = Reader(one.open_stream(topics=["orders/*", t1]))
        plain = Reader(two.open_stream(topics=["elsewhere"]))
        for i in range(5):
            two.broadcast_to_topic(t1, f"1-{i}")
            two.broadcast_to_topic(t2, f"2-{i}")
        two.broadcast_to_topic("nomatch", "never")
        wait_for(lambda: len(both.data) >= 10, what="every matching event")
        time.sleep(0.2)
        assert [d for d in both.data if d.startswith("1-")] == [f"1-{i}" for i in range(5)]
        assert [d for d in both.data if d.startswith("2-")] == [f"2-{i}" for i in range(5)]
        assert len(both.data) == 10
        # Nobody holds a pattern on process two: no partition-wide channel.
        assert not any(c.endswith(":events") for c in backend(two).debug_state()["channels"])
        assert sum(c.endswith(":events") for c in backend(one).debug_state()["channels"]) == 16
        both.close()
        wait_for(
            lambda: not any(c.endswith(":events") for c in backend(one).debug_state()["channels"]),
            what="the partition-wide channels dropped",
        )
        plain.close()
    finally:
        one.shutdown(timeout=1), two.shutdown(timeout=1)


def test_a_topic_subscribed_from_another_process_amid_a_busy_partition_loses_nothing(
    redis_cluster: LocalCluster,
) -> None:
    """The client's process holds a busy topic of the same partition: its
    position moves on while the new channel goes live, yet every event of the
    new topic published once ``subscribe`` returned arrives, once, in order."""
    prefix = new_prefix()
    busy, added = "busy", same_partition("busy", 1)[0]
    one, two = broker_on(redis_cluster, prefix), broker_on(redis_cluster, prefix)
    stop = threading.Event()
    sent: list[str] = []

    def publish() -> None:
        i = 0
        while not stop.is_set():
            two.broadcast_to_topic(busy, f"b{i}")
            two.broadcast_to_topic(added, f"a{i}")
            sent.append(f"a{i}")
            i += 1

    try:
        a = Reader(one.open_stream(topics=[busy]))
        wait_for(lambda: a.events[:1] == ["connected"], what="connected")
        flow = threading.Thread(target=publish, daemon=True)
        flow.start()
        wait_for(lambda: len(sent) > 20, what="events flowing")
        two.subscribe(a.conn.client.id, [added])
        after = len(sent)  # published once subscribe returned: from here on
        wait_for(lambda: len(sent) > after + 40, what="more events")
        stop.set()
        flow.join(5)
        wait_for(lambda: sent[-1] in a.data, what="the last event")
        time.sleep(0.2)
        got = [d for d in a.data if d[0] == "a"]
        assert len(got) == len(set(got)), "an event twice"
        assert got == sorted(got, key=lambda d: int(d[1:])), "out of order"
        assert set(sent[after:]) <= set(got), "an event lost"
        a.close()
    finally:
        stop.set()
        one.shutdown(timeout=1), two.shutdown(timeout=1)
