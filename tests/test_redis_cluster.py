"""The Redis Cluster backend (``SSE_REDIS_CLUSTER``, SPEC §9.6) on a real
local cluster: three ``redis-server --cluster-enabled yes`` primaries on free
ports, started and stopped (by PID) by the module's fixture.

Topics are picked so that they live on different primaries: what one test
shows about "nothing lost" it shows for every shard it reads.
"""

from __future__ import annotations

import secrets
import time
import typing as t

import pytest

from flask_sse_broker import BackendError, BrokerUnavailable, SSEBroker, SSEConfig
from flask_sse_broker._wire import MAX_ID_LENGTH, Audience
from flask_sse_broker.backends._cluster_cursor import PARTITIONS, encode_cursor, parse_cursor
from flask_sse_broker.backends._redis_cluster import RedisClusterBackend, partition_of

from .cluster_support import ClusterNode, LocalCluster, redis_cluster, requires_cluster_tools
from .redis_support import SHARED_URL, requires_redis
from .support import EventReader, Server, connect_url, http_request, wait_for

pytestmark = requires_cluster_tools

__all__ = ["redis_cluster"]  # the module-scoped fixture


def cluster_config(cluster: LocalCluster, prefix: str, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "SSE_REDIS_URL": cluster.url,
        "SSE_REDIS_CLUSTER": True,
        "SSE_REDIS_PREFIX": prefix,
        "SSE_HEARTBEAT_INTERVAL": 0.5,
        **extra,
    }


def new_prefix() -> str:
    return "sse-cluster-" + secrets.token_hex(4)


def topics_on_shards(cluster: LocalCluster, prefix: str, count: int = 2) -> list[tuple[str, ClusterNode]]:
    """``count`` topics whose partitions live on ``count`` different primaries."""
    partitions = RedisClusterBackend(cluster.url, prefix=prefix).partitions
    found: dict[int, tuple[str, ClusterNode]] = {}
    for i in range(1000):
        topic = f"topic-{i}"
        node = cluster.node_for_key(partitions[partition_of(Audience.TOPIC, topic)].channel)
        found.setdefault(node.port, (topic, node))
        if len(found) == count:
            return list(found.values())
    raise AssertionError("no topics on enough shards")


def broker_on(cluster: LocalCluster, prefix: str, **config: t.Any) -> SSEBroker:
    return SSEBroker(
        SSEConfig(
            redis_url=cluster.url, redis_cluster=True, redis_prefix=prefix, heartbeat_interval=0, **config
        )
    )


# -- the option ----------------------------------------------------------------


def test_redis_cluster_without_redis_url_is_refused() -> None:
    with pytest.raises(ValueError, match="redis_cluster needs redis_url"):
        SSEConfig(redis_cluster=True)
    with pytest.raises(ValueError, match="must be a bool"):
        SSEConfig(redis_url=SHARED_URL, redis_cluster="yes")  # type: ignore[arg-type]


@requires_redis
def test_a_server_that_is_not_a_cluster_is_a_clear_error() -> None:
    broker = SSEBroker(SSEConfig(redis_url=SHARED_URL, redis_cluster=True, redis_prefix=new_prefix()))
    with pytest.raises(BackendError, match="is not a Redis Cluster node"):
        broker.broadcast_to_topic("t", "x")
    with pytest.raises(BrokerUnavailable):
        broker.open_stream(topics=["t"])
    broker.shutdown(timeout=1)


# -- cursor ids ----------------------------------------------------------------


def test_cursor_ids_round_trip_and_stay_short() -> None:
    now = int(time.time() * 1000)
    positions = [(now - 17 * i, i % 3) for i in range(PARTITIONS)]
    positions[5] = (0, 0)
    value = encode_cursor(positions)
    assert parse_cursor(value) == positions
    assert len(value) < 100
    # Every partition idle for a year, with large sequences: still an id
    # the broker accepts back.
    old = [(now - 365 * 86400_000 - i, 36**3 - 1) for i in range(PARTITIONS)]
    assert len(encode_cursor(old)) <= MAX_ID_LENGTH
    assert parse_cursor(encode_cursor(old)) == old


@pytest.mark.parametrize(
    "forged",
    [
        "1-0",  # a single-Redis id
        "abc",
        "." * PARTITIONS,  # one piece short
        "." * (PARTITIONS + 1),
        "zz." + "zzz." * (PARTITIONS - 1) + "0",  # a delta past the base
        "ZZ" + "." * PARTITIONS,  # uppercase
        "1" + ".0-" * PARTITIONS,
        "z" * 14 + "." * PARTITIONS,  # past 64 bits
        "0" + ".x!" * PARTITIONS,
    ],
)
def test_forged_cursor_ids_are_not_parsed(forged: str) -> None:
    assert parse_cursor(forged) is None


def test_bad_cursor_ids_are_refused_over_http_and_leave_the_server_working(
    redis_cluster: LocalCluster, make_server: t.Callable[..., Server]
) -> None:
    prefix = new_prefix()
    srv = make_server("werkzeug", config=cluster_config(redis_cluster, prefix))
    for bad in ["1-0", "." * PARTITIONS, "0" + ".\u00e9" * PARTITIONS, "z" * 14 + "." * PARTITIONS]:
        status, _ = http_request("GET", connect_url(srv, topics="t"), headers={"Last-Event-ID": bad})
        assert status == 400, bad
    # A well-formed cursor from the future (or another cluster): reset, at once.
    future = encode_cursor([(int(time.time() * 1000) + 86400_000, 7)] * PARTITIONS)
    started = time.monotonic()
    with EventReader(connect_url(srv, topics="t"), headers={"Last-Event-ID": future}) as reader:
        reader.connected()
        assert reader.next().event == "reset"
        assert time.monotonic() - started < 1.5
    with EventReader(connect_url(srv, topics="t")) as reader:
        reader.connected()
        srv.publish("t", "still fine")
        assert reader.next().json() == "still fine"


# -- across processes ----------------------------------------------------------


def test_events_reach_streams_in_other_processes_on_every_shard(
    redis_cluster: LocalCluster, make_server: t.Callable[..., Server]
) -> None:
    prefix = new_prefix()
    (one_topic, _), (two_topic, _) = topics_on_shards(redis_cluster, prefix)
    one = make_server("gthread", config=cluster_config(redis_cluster, prefix))
    two = make_server("werkzeug", config=cluster_config(redis_cluster, prefix))
    with (
        EventReader(connect_url(one, topics=f"{one_topic},{two_topic}")) as a,
        EventReader(connect_url(two, topics=f"{one_topic},{two_topic}")) as b,
    ):
        a.connected(), b.connected()
        for i in range(5):
            one.publish(one_topic, f"1-{i}")
            two.publish(two_topic, f"2-{i}")
        two.publish(None, "all", kind="all")
        for reader in (a, b):
            got = [e.json() for e in reader.take(11)]
            # Per topic in order; between topics on different shards, any order.
            assert [d for d in got if d.startswith("1-")] == [f"1-{i}" for i in range(5)]
            assert [d for d in got if d.startswith("2-")] == [f"2-{i}" for i in range(5)]
            assert "all" in got


def test_a_client_resumes_on_the_other_process_with_nothing_lost_on_any_shard(
    redis_cluster: LocalCluster, make_server: t.Callable[..., Server]
) -> None:
    prefix = new_prefix()
    (t1, n1), (t2, n2) = topics_on_shards(redis_cluster, prefix)
    assert n1.port != n2.port
    one = make_server("gthread", config=cluster_config(redis_cluster, prefix))
    two = make_server("werkzeug", config=cluster_config(redis_cluster, prefix))
    a = EventReader(connect_url(one, topics=f"{t1},{t2}"))
    hello = a.connected()
    one.publish(t1, "seen-1")
    one.publish(t2, "seen-2")
    assert sorted(e.json() for e in a.take(2)) == ["seen-1", "seen-2"]
    last = a.last_event_id
    assert last is not None and parse_cursor(last) is not None
    a.close()
    # While it is away: both shards, a broadcast and a direct send.
    for i in range(4):
        two.publish(t1, f"{t1}:{i}")
        one.publish(t2, f"{t2}:{i}")
    one.publish(None, "all", kind="all")
    two.publish(None, "direct", kind="client", client_id=hello["clientId"])
    one.publish("not-mine", "never")
    # Back on the other process, with its token, topics and last id.
    query = {"token": hello["token"], "topics": f"{t1},{t2}"}
    with EventReader(connect_url(two, **query), headers={"Last-Event-ID": last}) as resumed:
        assert resumed.connected()["clientId"] == hello["clientId"]
        got = [e.json() for e in resumed.take(10)]
        assert [d for d in got if d.startswith(t1)] == [f"{t1}:{i}" for i in range(4)]
        assert [d for d in got if d.startswith(t2)] == [f"{t2}:{i}" for i in range(4)]
        assert {"all", "direct"} <= set(got)
        # Live after the replay, nothing twice.
        one.publish(t1, "live")
        assert resumed.next().json() == "live"
        assert resumed.drain() == []
        resumed_last = resumed.last_event_id
    # Resuming from the last id of the resumed stream replays nothing.
    with EventReader(connect_url(one, **query), headers={"Last-Event-ID": resumed_last}) as again:
        again.connected()
        two.publish(t2, "after")
        assert [e.json() for e in again.take(1)] == ["after"]
        assert again.drain() == []


def test_presence_sessions_and_subscriptions_are_cluster_wide(
    redis_cluster: LocalCluster, make_server: t.Callable[..., Server]
) -> None:
    prefix = new_prefix()
    (t1, _), (t2, _) = topics_on_shards(redis_cluster, prefix)
    one = make_server("gthread", config=cluster_config(redis_cluster, prefix))
    two = make_server("werkzeug", config=cluster_config(redis_cluster, prefix))
    a = EventReader(connect_url(one, topics=t1))
    hello = a.connected()
    # A subscribe landing on the other process reaches the stream.
    subscribed = two.post("/_sse/subscribe", {"token": hello["token"], "topics": [t2]})
    assert subscribed["topics"] == sorted([t1, t2])
    two.publish(t2, "via two")
    assert a.next().json() == "via two"
    observer = broker_on(redis_cluster, prefix)
    try:
        assert observer.is_connected(hello["clientId"])
        assert observer.clients_by_topic(t2, cluster=True) == [hello["clientId"]]
        last = a.last_event_id
        a.close()
        wait_for(lambda: not observer.is_connected(hello["clientId"]), 10, what="the client to leave")
        one.publish(t1, "away-1")
        one.publish(t2, "away-2")
        # Back on the other process with its token and last id only: its
        # topics come from the session the first process left in Redis.
        with EventReader(connect_url(two, token=hello["token"]), headers={"Last-Event-ID": last}) as b:
            assert b.connected()["topics"] == sorted([t1, t2])
            assert sorted(e.json() for e in b.take(2)) == ["away-1", "away-2"]
            assert observer.client_count(cluster=True) == 1
    finally:
        observer.shutdown(timeout=1)


# -- failures ------------------------------------------------------------------


def test_a_primary_killed_and_restarted(
    redis_cluster: LocalCluster, make_server: t.Callable[..., Server]
) -> None:
    prefix = new_prefix()
    (down_topic, node), (up_topic, _) = topics_on_shards(redis_cluster, prefix)
    srv = make_server("gevent", config=cluster_config(redis_cluster, prefix))
    reader = EventReader(connect_url(srv, topics=f"{down_topic},{up_topic}"))
    reader.connected()
    srv.publish(down_topic, "before")
    assert reader.next().json() == "before"
    node.kill()
    try:
        started = time.monotonic()
        status, _ = http_request("POST", srv.url("/test/publish"), {"topic": down_topic, "data": "lost"})
        assert status == 500 and time.monotonic() - started < 5
        assert "BackendError" in srv.log() or "Redis Cluster backend" in srv.log()
        # The other shards keep serving meanwhile.
        srv.publish(up_topic, "other shard")
        assert reader.next().json() == "other shard"
    finally:
        redis_cluster.restart(node)

    def publish_ok() -> bool:
        status, _ = http_request("POST", srv.url("/test/publish"), {"topic": down_topic, "data": "after"})
        return status == 200

    wait_for(publish_ok, 20, 0.2, "publishing to the restarted primary")
    assert reader.next(15).json() == "after"
    assert not reader.ended.is_set()
    wait_for(lambda: "Redis Cluster listener reconnected" in srv.log(), 10, what="the reconnection logged")
    reader.close()


def test_a_cursor_past_a_trimmed_shard_history_is_reset(redis_cluster: LocalCluster) -> None:
    prefix = new_prefix()
    (kept, _), (trimmed, _) = topics_on_shards(redis_cluster, prefix)
    one = broker_on(redis_cluster, prefix, history_size=10)
    two = broker_on(redis_cluster, prefix, history_size=10)
    try:
        conn = one.open_stream(topics=[kept, trimmed])
        stream = iter(conn)
        next(stream)
        one.broadcast_to_topic(kept, "a")
        one.broadcast_to_topic(trimmed, "a")
        written = b""
        while written.count(b"id: ") < 2:
            written += next(stream)
        cursor = one.last_event_id()
        assert cursor is not None
        conn.close()
        # MAXLEN ~ trims whole stream nodes (100 entries): publish past one.
        for i in range(250):
            two.broadcast_to_topic(trimmed, i)
        two.broadcast_to_topic(kept, "b")
        resumed = two.open_stream(topics=[kept, trimmed], last_event_id=cursor)
        head = next(iter(resumed))
        assert b"event: reset" in head
        resumed.close()
        # A cursor naming the trimmed partition at its origin is reset too.
        origin = encode_cursor([(0, 0)] * PARTITIONS)
        resumed = two.open_stream(topics=[kept, trimmed], last_event_id=origin)
        assert b"event: reset" in next(iter(resumed))
        resumed.close()
        # A cursor from after the trim resumes without reset on both shards.
        fresh = two.last_event_id()
        two.broadcast_to_topic(kept, "c")
        two.broadcast_to_topic(trimmed, "d")
        again = one.open_stream(topics=[kept, trimmed], last_event_id=fresh)
        written = b""
        for chunk in again:  # the replay, then live: whichever has them
            written += chunk
            if written.count(b"data: ") == 3:  # connected, "c", "d"
                break
        assert b"event: reset" not in written
        assert b'data: "c"' in written and b'data: "d"' in written
        again.close()
    finally:
        one.shutdown(timeout=1)
        two.shutdown(timeout=1)
