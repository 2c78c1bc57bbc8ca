"""A Redis Cluster listener's positions follow quiet partitions (SPEC §9.6).

A process receives only the events it has local recipients for, so events
of the other topics of a partition never move its position there. The
listener brings every position it can prove complete up to the partition's
head each ``advance_interval`` (heads read, then a ``PING`` on the sharded
pub/sub connection whose answer comes after every message pushed before):
a cursor written after a quiet spell is current, and a quiet topic whose
partition neighbours are busy survives a listener reconnection unreset.
"""

from __future__ import annotations

import threading
import time
import typing as t

import pytest

from flask_sse_broker._wire import Audience, Seq, parse_event_id
from flask_sse_broker.backends._cluster_cursor import PARTITIONS, parse_cursor
from flask_sse_broker.backends._redis_cluster import RedisClusterBackend, partition_of

from . import test_redis_cluster_routing as routing
from .cluster_support import LocalCluster, redis_cluster, requires_cluster_tools
from .support import wait_for
from .test_redis_cluster import broker_on, new_prefix
from .test_redis_cluster_routing import Reader, backend, same_partition

pytestmark = requires_cluster_tools

__all__ = ["redis_cluster"]  # the module-scoped fixture

HISTORY = 20


def heads(cluster: LocalCluster, back: RedisClusterBackend) -> list[Seq]:
    """Every partition's newest id, read from Redis."""
    client = cluster.client()
    try:
        found = [client.get(p.last) for p in back.partitions]
    finally:
        client.close()
    return [parse_event_id(v.decode()) or (0, 0) if v else (0, 0) for v in found]


def positions(back: RedisClusterBackend) -> list[Seq]:
    return [parse_event_id(p) if p else (0, 0) for p in back.debug_state()["positions"]]  # type: ignore[misc]


def covers(have: t.Sequence[Seq], want: t.Sequence[Seq]) -> bool:
    return all(h >= w for h, w in zip(have, want, strict=True))


def trimmed_past(cluster: LocalCluster, back: RedisClusterBackend, index: int, seq: Seq) -> bool:
    client = cluster.client()
    try:
        oldest = client.xrange(back.partitions[index].stream, count=1)
    finally:
        client.close()
    return bool(oldest) and parse_event_id(oldest[0][0].decode()) > seq  # type: ignore[operator]


def kill_listener(cluster: LocalCluster, back: RedisClusterBackend, index: int) -> None:
    """Close, on the Redis side, the sharded pub/sub connection reading
    partition ``index``; return once the listener is connected again."""
    reader = next(r for r in back._readers if index in [p.index for p in r.partitions])
    conn = reader.channels._conn
    assert conn is not None
    host, port = conn._sock.getsockname()[:2]  # type: ignore[attr-defined]
    node = cluster.node_for_key(back.partitions[index].channel).client()
    try:
        assert node.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}") in (b"OK", True, 1)
    finally:
        node.close()

    def reconnected() -> bool:
        now = reader.channels._conn
        return reader.connected and now is not None and now._sock.getsockname()[1] != port  # type: ignore[attr-defined]

    wait_for(reconnected, what="the listener reconnected")


def test_a_quiet_topic_in_a_busy_partition_is_not_reset_by_a_listener_reconnection(
    redis_cluster: LocalCluster,
) -> None:
    """More than ``history_size`` events of a topic this process does not hold
    trim its partition past the quiet topic's last event; the listener's
    position moved on with the head all the same, so its reconnection's
    catch-up finds nothing missing and keeps the stream open."""
    prefix = new_prefix()
    quiet, busy = "quiet", same_partition("quiet", 1)[0]
    index = partition_of(Audience.TOPIC, quiet)
    one = broker_on(redis_cluster, prefix, history_size=HISTORY)
    two = broker_on(redis_cluster, prefix, history_size=HISTORY)
    try:
        a = Reader(one.open_stream(topics=[quiet]))
        wait_for(lambda: a.events[:1] == ["connected"], what="connected")
        two.broadcast_to_topic(quiet, "q0")
        wait_for(lambda: a.data == ["q0"], what="the quiet topic's event")
        first = heads(redis_cluster, backend(one))[index]
        # Trimming is approximate (whole stream nodes of 100 entries): enough
        # to trim the quiet topic's event away.
        for i in range(HISTORY + 250):
            two.broadcast_to_topic(busy, f"b{i}")
        head = heads(redis_cluster, backend(one))[index]
        assert trimmed_past(redis_cluster, backend(one), index, first)
        wait_for(lambda: positions(backend(one))[index] >= head, what="the position at the partition's head")
        assert backend(one).debug_state()["received"] == 1  # none of the busy topic's events
        kill_listener(redis_cluster, backend(one), index)
        two.broadcast_to_topic(quiet, "q1")
        wait_for(lambda: a.data == ["q0", "q1"], what="the quiet topic's next event, on the same stream")
        assert a.thread.is_alive()
        assert "reset" not in a.events
        a.close()
    finally:
        one.shutdown(timeout=1), two.shutdown(timeout=1)


def test_a_cursor_written_after_a_quiet_spell_is_current_on_every_partition(
    redis_cluster: LocalCluster,
) -> None:
    prefix = new_prefix()
    quiet = "quiet"
    index = partition_of(Audience.TOPIC, quiet)
    one, two = broker_on(redis_cluster, prefix), broker_on(redis_cluster, prefix)
    try:
        a = Reader(one.open_stream(topics=[quiet]))
        wait_for(lambda: a.events[:1] == ["connected"], what="connected")
        # Events on every partition, none of them for process one.
        others = {partition_of(Audience.TOPIC, f"other-{i}"): f"other-{i}" for i in range(200)}
        assert len(others) == PARTITIONS - 1
        for topic in others.values():
            two.broadcast_to_topic(topic, "x")
        two.broadcast_to_topic(same_partition(quiet, 1)[0], "x")
        two.broadcast("everyone but topic holders")  # partition 0: delivered here
        read = heads(redis_cluster, backend(one))
        wait_for(
            lambda: covers(positions(backend(one)), read), timeout=5, what="every position up to its head"
        )
        cursor = parse_cursor(one.last_event_id() or "")
        assert cursor is not None and covers(cursor, read)
        # The next event's id names every partition's head.
        two.broadcast_to_topic(quiet, "q")
        wait_for(lambda: "q" in a.data, what="the event")
        written = parse_cursor(a.ids[-1])
        assert written is not None and covers(written, read)
        assert written[index] > read[index]
        a.close()
    finally:
        one.shutdown(timeout=1), two.shutdown(timeout=1)


@pytest.mark.parametrize(
    "scenario",
    [
        routing.test_a_topic_opened_while_its_events_flow_loses_and_repeats_none,
        routing.test_a_topic_subscribed_from_another_process_amid_a_busy_partition_loses_nothing,
        routing.test_a_topic_subscribed_from_another_process_while_events_flow_gets_them_once,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_channels_going_live_lose_nothing_while_positions_advance_constantly(
    redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, scenario: t.Callable[[LocalCluster], None]
) -> None:
    """The routing scenarios, with every listener advancing after every read:
    a channel going live keeps its partition's position until it is caught up."""
    monkeypatch.setattr(RedisClusterBackend, "advance_interval", 0.0)
    scenario(redis_cluster)


class Flow:
    """Publishes, from another process, on each topic in turn until stopped:
    ``<topic>:<n>``, the ``n`` of each topic counted in ``sent``."""

    def __init__(self, broker: t.Any, topics: list[str]) -> None:
        self.sent = dict.fromkeys(topics, 0)
        self._broker = broker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for topic in self.sent:
                self._broker.broadcast_to_topic(topic, f"{topic}:{self.sent[topic]}")
                self.sent[topic] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("how", ["opened here", "subscribed from another process"])
def test_a_topic_going_live_amid_events_this_process_does_not_receive_loses_and_repeats_none(
    redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Its partition's position advances on the events of a topic nobody here
    holds, after every read, while the new topic's channel goes live: what
    the new topic needs is delivered all the same, once, in order."""
    monkeypatch.setattr(RedisClusterBackend, "advance_interval", 0.0)
    prefix = new_prefix()
    held = "held"
    noise, fresh = same_partition(held, 2)
    one, two = broker_on(redis_cluster, prefix), broker_on(redis_cluster, prefix)
    flow = None
    try:
        holder = Reader(one.open_stream(topics=[held]))
        wait_for(lambda: holder.events[:1] == ["connected"], what="connected")
        cursor = one.last_event_id()
        flow = Flow(two, [noise, fresh])
        wait_for(lambda: flow.sent[fresh] > 20, what="events flowing")
        if how == "opened here":
            late = Reader(one.open_stream(topics=[fresh], last_event_id=cursor))
            start = 0  # the cursor is from before the flow: every event
        else:
            late = holder
            two.subscribe(holder.conn.client.id, [fresh])
            start = flow.sent[fresh]  # published once subscribe returned: from here on
        wait_for(lambda: flow.sent[fresh] > start + 60, what="more events")
        flow.stop()
        last = f"{fresh}:{flow.sent[fresh] - 1}"
        wait_for(lambda: last in late.data, what="the last event")
        time.sleep(0.2)  # anything extra would show up now
        got = [d for d in late.data if d.startswith(f"{fresh}:")]
        assert len(got) == len(set(got)), "an event twice"
        assert got == sorted(got, key=lambda d: int(d.rsplit(":", 1)[1])), "out of order"
        assert {f"{fresh}:{i}" for i in range(start, flow.sent[fresh])} <= set(got), "an event lost"
        assert not any(d.startswith(f"{noise}:") for d in late.data)
        assert "reset" not in late.events
        holder.close(), late.close()
    finally:
        if flow is not None:
            flow.stop()
        one.shutdown(timeout=1), two.shutdown(timeout=1)
