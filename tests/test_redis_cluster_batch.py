"""``publish_batch`` on the Redis Cluster backend: one pipeline per primary
(``_redis_cluster_publish.py``), over a real local three-primary cluster.

A batch interleaves topics that live on the three primaries, so each test
shows what it shows for every shard.
"""

from __future__ import annotations

import json
import typing as t

import pytest

from flask_sse_broker import BackendError
from flask_sse_broker._wire import Audience
from flask_sse_broker.backends._redis_cluster import RedisClusterBackend, partition_of
from flask_sse_broker.backends._redis_cluster_keys import PUBLISH_SCRIPT

from .cluster_support import ClusterNode, LocalCluster, redis_cluster, requires_cluster_tools
from .support import EventReader, Server, connect_url, http_request
from .test_redis_cluster import broker_on, cluster_config, new_prefix, topics_on_shards

pytestmark = requires_cluster_tools

__all__ = ["redis_cluster"]  # the module-scoped fixture

KEY = "cluster-batch-key-0123456789"


def post_batch(srv: Server, events: list[dict[str, t.Any]]) -> tuple[int, t.Any]:
    status, body = http_request(
        "POST", srv.url("/_sse/publish"), {"events": events}, headers={"Authorization": f"Bearer {KEY}"}
    )
    return status, json.loads(body)


def interleaved(topics: list[str], rounds: int, tag: str = "") -> list[dict[str, t.Any]]:
    return [{"topic": topic, "data": f"{tag}{topic}:{i}"} for i in range(rounds) for topic in topics]


def stream_entries(cluster: LocalCluster, prefix: str, topic: str) -> list[tuple[str, str]]:
    """The (stream id, data) of the topic's partition, oldest first."""
    partition = RedisClusterBackend(cluster.url, prefix=prefix).partitions[
        partition_of(Audience.TOPIC, topic)
    ]
    with cluster.client() as c:
        entries = c.xrange(partition.stream)
    return [(i.decode(), json.loads(f[b"b"].split(b"data: ", 1)[1])) for i, f in entries]


def test_a_batch_over_every_primary_arrives_in_order_and_resumes_with_nothing_lost(
    redis_cluster: LocalCluster, make_server: t.Callable[..., Server]
) -> None:
    prefix = new_prefix()
    topics = [topic for topic, _ in topics_on_shards(redis_cluster, prefix, 3)]
    config = cluster_config(redis_cluster, prefix, SSE_PUBLISH_KEY=KEY)
    one = make_server("gthread", config=config)
    two = make_server("werkzeug", config=config)
    events = interleaved(topics, 20)
    with EventReader(connect_url(one, topics=",".join(topics))) as reader:
        hello = reader.connected()
        status, answer = post_batch(one, events)
        assert status == 200 and len(answer["ids"]) == len(events)
        got = [e.json() for e in reader.take(len(events))]
        for topic in topics:
            assert [d for d in got if d.startswith(topic + ":")] == [f"{topic}:{i}" for i in range(20)]
        last = reader.last_event_id
    # The ids are in the items' order: each names the item's partition and
    # the stream entry holding that very item.
    for topic in topics:
        index = partition_of(Audience.TOPIC, topic)
        returned = [
            event_id for event_id, e in zip(answer["ids"], events, strict=True) if e["topic"] == topic
        ]
        assert all(event_id.startswith(f"{index}:") for event_id in returned)
        stored = dict(stream_entries(redis_cluster, prefix, topic))
        assert [stored[event_id.split(":", 1)[1]] for event_id in returned] == [
            f"{topic}:{i}" for i in range(20)
        ]
    # While the client is away, another batch over every primary; it
    # resumes on the other process with its last id and loses none.
    away = interleaved(topics, 15, "away-")
    assert post_batch(two, away)[0] == 200
    query = {"token": hello["token"], "topics": ",".join(topics)}
    with EventReader(connect_url(two, **query), headers={"Last-Event-ID": last}) as resumed:
        resumed.connected()
        got = [e.json() for e in resumed.take(len(away))]
        for topic in topics:
            assert [d for d in got if d.startswith(f"away-{topic}:")] == [
                f"away-{topic}:{i}" for i in range(15)
            ]
        assert resumed.drain() == []


def reads(node: ClusterNode) -> int:
    """How many reads the primary made from its clients' sockets so far."""
    with node.client() as c:
        return int(c.info("stats")["total_reads_processed"])


def test_a_batch_is_one_pipeline_per_primary_with_the_ids_in_item_order(redis_cluster: LocalCluster) -> None:
    prefix = new_prefix()
    placed = topics_on_shards(redis_cluster, prefix, 3)
    topics = [topic for topic, _ in placed]
    broker = broker_on(redis_cluster, prefix)
    try:
        rounds = 40
        items = [(Audience.TOPIC, tp, f'data: "{tp}:{i}"\n'.encode()) for i in range(rounds) for tp in topics]
        broker.backend.publish_batch(items[:3])  # connect first
        before = [reads(node) for _, node in placed]
        results = broker.backend.publish_batch(items)
        # One by one, each primary would read 40 commands in 40 reads; one
        # pipeline arrives in one read or a few.
        spent = [reads(node) - n for (_, node), n in zip(placed, before, strict=True)]
        assert max(spent) < rounds // 2, spent
        assert len(results) == len(items)
        for topic in topics:
            mine = [r[0] for r, (_, tp, _) in zip(results, items, strict=True) if tp == topic]
            stored = stream_entries(redis_cluster, prefix, topic)[1:]
            assert [f"{partition_of(Audience.TOPIC, topic)}:{i}" for i, _ in stored] == mine
            assert [d for _, d in stored] == [f"{topic}:{i}" for i in range(rounds)]
    finally:
        broker.shutdown(timeout=1)


def test_a_primary_down_mid_batch_fails_it_and_the_other_primaries_publish_all(
    redis_cluster: LocalCluster, make_server: t.Callable[..., Server]
) -> None:
    prefix = new_prefix()
    (first, _), (down, node), (last, _) = topics_on_shards(redis_cluster, prefix, 3)
    srv = make_server("gthread", config=cluster_config(redis_cluster, prefix, SSE_PUBLISH_KEY=KEY))
    assert post_batch(srv, interleaved([first, down, last], 1, "warm-"))[0] == 200
    node.kill()
    try:
        status, answer = post_batch(srv, interleaved([first, down, last], 4))
        assert status == 503, answer
    finally:
        redis_cluster.restart(node)
    # Every other primary's items, all and in order.
    for topic in (first, last):
        stored = [d for _, d in stream_entries(redis_cluster, prefix, topic)]
        assert stored == [f"warm-{topic}:0"] + [f"{topic}:{i}" for i in range(4)]
    # The restarted primary came back empty; batches reach it again.
    assert post_batch(srv, interleaved([down, first], 1, "back-"))[0] == 200
    node.kill()
    redis_cluster.restart(node)
    status, answer = post_batch(srv, interleaved([down, first], 3, "after-"))
    assert status == 200 and len(answer["ids"]) == 6
    assert [d for _, d in stream_entries(redis_cluster, prefix, down)] == [
        f"after-{down}:{i}" for i in range(3)
    ]
    assert [d for _, d in stream_entries(redis_cluster, prefix, first)][-4:] == [f"back-{first}:0"] + [
        f"after-{first}:{i}" for i in range(3)
    ]


def test_an_error_reply_is_a_backend_error(redis_cluster: LocalCluster) -> None:
    prefix = new_prefix()
    (topic, _), _ = topics_on_shards(redis_cluster, prefix)
    broker = broker_on(redis_cluster, prefix)
    backend = t.cast(RedisClusterBackend, broker.backend)
    try:
        partition = backend.partitions[partition_of(Audience.TOPIC, topic)]
        with redis_cluster.client() as c:
            c.set(partition.stream, "not a stream")  # XADD answers WRONGTYPE
        with pytest.raises(BackendError, match="WRONGTYPE"):
            backend.publish_batch([(Audience.TOPIC, topic, b'data: "x"\n')])
    finally:
        broker.shutdown(timeout=1)


def test_items_answered_moved_are_sent_again_to_the_slots_owner(redis_cluster: LocalCluster) -> None:
    prefix = new_prefix()
    (topic, node), (other, elsewhere) = topics_on_shards(redis_cluster, prefix)
    broker = broker_on(redis_cluster, prefix)
    backend = t.cast(RedisClusterBackend, broker.backend)
    try:
        items = [
            (Audience.TOPIC, tp, f'data: "{tp}:{i}"\n'.encode()) for i in range(3) for tp in (topic, other)
        ]
        backend.publish_batch(items[:2])
        # As if the topic's slot had moved since the routes were made.
        index = partition_of(Audience.TOPIC, topic)
        stale = backend._node_client("127.0.0.1", elsewhere.port)
        backend._routes[index] = stale.register_script(PUBLISH_SCRIPT)
        results = backend.publish_batch(items[2:])
        assert [event_id.split(":")[0] for event_id, _ in results] == [
            str(index),
            str(partition_of(Audience.TOPIC, other)),
        ] * 2
        assert [d for _, d in stream_entries(redis_cluster, prefix, topic)] == [
            f"{topic}:{i}" for i in range(3)
        ]
        assert [d for _, d in stream_entries(redis_cluster, prefix, other)] == [
            f"{other}:{i}" for i in range(3)
        ]
        assert node.port != elsewhere.port
    finally:
        broker.shutdown(timeout=1)
