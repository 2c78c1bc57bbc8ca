"""The Redis backend (SPEC section 6), against a real Redis.

In-process tests put several brokers on one Redis prefix (each is a separate
"process" to Redis: its own pub/sub connection and node id); the topology
tests run real servers, separate processes and a plain-Python publisher.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import typing as t

import pytest
import redis

from flask_sse_broker import BackendError, BrokerUnavailable, ClientNotFound, SSEBroker, SSEConfig
from flask_sse_broker._wire import parse_event_id
from flask_sse_broker.backends.base import Replay

from .redis_support import (
    SHARED_URL,
    Cluster,
    ConnectionReader,
    RedisServer,
    connections_named,
    new_prefix,
    requires_redis,
    requires_redis_server,
)
from .support import (
    ROOT,
    EventReader,
    Server,
    connect_url,
    free_port,
    http_request,
    only_worker,
    wait_for,
    worker_pids,
)

pytestmark = requires_redis


def redis_config(prefix: str, url: str = SHARED_URL, **extra: t.Any) -> dict[str, t.Any]:
    return {
        "SSE_REDIS_URL": url,
        "SSE_REDIS_PREFIX": prefix,
        "SSE_HEARTBEAT_INTERVAL": 0.5,
        "SSE_HISTORY_SIZE": 1000,
        **extra,
    }


# -- in process: ids, history, replay ------------------------------------------


def test_publishing_from_a_process_that_serves_nothing_reaches_other_processes(cluster: Cluster) -> None:
    server, script = cluster.broker(), cluster.broker()
    reader = ConnectionReader(server.open_stream("alice", topics=["orders"]))
    reader.connected()
    assert script.broadcast_to_topic("orders", {"n": 1}) == 0  # nothing local to the script
    event = reader.next()
    assert event.json() == {"n": 1}
    assert event.id == script.last_event_id() == server.last_event_id()
    assert not script._debug_state()["started"]  # so no listener either


def test_ids_are_shared_and_follow_delivery_order_across_publishers(cluster: Cluster) -> None:
    server, pub1, pub2 = cluster.broker(), cluster.broker(), cluster.broker()
    reader = ConnectionReader(server.open_stream("alice"))
    reader.connected()

    def publish(broker: SSEBroker, name: str) -> None:
        for i in range(100):
            broker.broadcast({"p": name, "n": i})

    threads = [threading.Thread(target=publish, args=(b, n)) for b, n in ((pub1, "a"), (pub2, "b"))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    events = reader.take(200)
    keys = [parse_event_id(e.id) for e in events]
    assert keys == sorted(keys) and len(set(keys)) == 200
    for name in "ab":
        assert [e.json()["n"] for e in events if e.json()["p"] == name] == list(range(100))


def test_replay_returns_the_events_after_the_cursor(cluster: Cluster) -> None:
    broker = cluster.broker()
    broker.broadcast("before")
    cursor = broker.last_event_id()
    for i in range(5):
        broker.broadcast(i)
    replay = broker.backend.replay(cursor)
    assert not replay.reset and replay.cursor == cursor
    assert [e.frame.split(b"\n")[0] for e in replay.envelopes] == [b"data: %d" % i for i in range(5)]
    assert replay.envelopes[-1].id == broker.last_event_id()


def test_replay_without_a_cursor_starts_at_the_newest_id(cluster: Cluster) -> None:
    broker = cluster.broker()
    assert broker.backend.replay(None).cursor == "0-0"
    broker.broadcast("x")
    replay = broker.backend.replay(None)
    assert replay.cursor == broker.last_event_id() and not replay.envelopes and not replay.reset


def test_a_cursor_older_than_the_history_is_reset(cluster: Cluster) -> None:
    broker = cluster.broker(history_size=10)
    broker.broadcast("first")
    cursor = broker.last_event_id()
    for i in range(300):  # MAXLEN ~ trims whole stream nodes of 100 entries
        broker.broadcast(i)
    replay = broker.backend.replay(cursor)
    assert replay.reset and replay.cursor == broker.last_event_id() and not replay.envelopes


def test_a_cursor_exactly_history_size_behind_is_still_replayed(cluster: Cluster) -> None:
    broker = cluster.broker(history_size=150)
    for i in range(400):
        broker.broadcast(i)
    cursor = broker.last_event_id()
    for i in range(150):
        broker.broadcast(i)
    replay = broker.backend.replay(cursor)
    assert not replay.reset and len(replay.envelopes) == 150


def test_without_history_only_the_newest_id_resumes_without_reset(cluster: Cluster) -> None:
    broker = cluster.broker(history_size=0)
    broker.broadcast("a")
    older = broker.last_event_id()
    broker.broadcast("b")
    newest = broker.last_event_id()
    assert broker.backend.replay(newest) == Replay(cursor=newest)
    assert broker.backend.replay(older) == Replay(reset=True, cursor=newest)


def test_a_page_rendered_before_the_first_event_misses_nothing(cluster: Cluster) -> None:
    broker = cluster.broker()
    rendered = broker.last_event_id()
    assert rendered == "0-0"
    broker.broadcast("between render and connect")
    replay = broker.backend.replay(rendered)
    assert not replay.reset
    assert [e.frame.split(b"\n")[0] for e in replay.envelopes] == [b'data: "between render and connect"']


def test_the_origin_cursor_is_reset_once_history_was_trimmed(cluster: Cluster) -> None:
    broker = cluster.broker(history_size=10)
    for i in range(300):
        broker.broadcast(i)
    replay = broker.backend.replay("0-0")
    assert replay.reset and not replay.envelopes


@pytest.mark.parametrize("cursor", ["1-0", "99999999999999-0", "CURSOR_BETWEEN"])
def test_foreign_or_future_cursors_are_reset(cluster: Cluster, cursor: str) -> None:
    broker = cluster.broker()
    broker.broadcast("a")
    first = parse_event_id(broker.last_event_id() or "")
    broker.broadcast("b")
    if cursor == "CURSOR_BETWEEN":  # inside the history's range, but no such entry
        assert first is not None
        cursor = f"{first[0]}-{first[1] + 1000}"
    replay = broker.backend.replay(cursor)
    assert replay.reset and replay.cursor == broker.last_event_id()


def test_a_resuming_stream_gets_what_it_missed_from_another_process(cluster: Cluster) -> None:
    a, b = cluster.broker(), cluster.broker()
    first = ConnectionReader(a.open_stream("alice", topics=["t"]))
    first.connected()
    a.broadcast_to_topic("t", 0)
    last = first.next().id
    first.close()
    for i in range(1, 4):
        b.broadcast_to_topic("t", i)
    b.broadcast_to_topic("other", "not for alice")
    resumed = ConnectionReader(b.open_stream("alice", last_event_id=last))
    hello = resumed.connected()
    assert hello["topics"] == ["t"]  # the session came back from Redis
    assert [e.json() for e in resumed.take(3)] == [1, 2, 3]
    b.broadcast_to_topic("t", 4)
    assert resumed.next().json() == 4


# -- in process: operations reach the process holding the client ---------------


def test_subscribe_and_unsubscribe_reach_the_process_holding_the_client(cluster: Cluster) -> None:
    holder, other = cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream("bob"))
    reader.connected()
    assert other.subscribe("bob", "news") == frozenset({"news"})
    other.broadcast_to_topic("news", "one")
    assert reader.next().json() == "one"
    assert holder.get_client("bob").topics == frozenset({"news"})  # type: ignore[union-attr]
    other.unsubscribe("bob", "news")
    other.broadcast_to_topic("news", "missed")
    other.send("bob", "direct")
    assert reader.next().json() == "direct"


def test_subscribe_for_a_client_known_nowhere_raises(cluster: Cluster) -> None:
    broker = cluster.broker()
    with pytest.raises(ClientNotFound):
        broker.subscribe("nobody", "t")


def test_disconnect_reaches_the_process_holding_the_client(cluster: Cluster) -> None:
    holder, other = cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream("carol"))
    reader.connected()
    other.disconnect("carol")
    assert reader.ended.wait(5)
    wait_for(lambda: not other.is_connected("carol"), 5, what="presence of carol to go")


def test_presence_is_cluster_wide(cluster: Cluster) -> None:
    a, b = cluster.broker(), cluster.broker()
    ra = ConnectionReader(a.open_stream("alice", topics=["x"]))
    rb = ConnectionReader(b.open_stream("bob", topics=["x", "y"]))
    ra.connected()
    rb.connected()
    assert a.client_count() == 1
    assert a.client_count(cluster=True) == b.client_count(cluster=True) == 2
    assert a.clients_by_topic("x", cluster=True) == ["alice", "bob"]
    assert a.clients_by_topic("y", cluster=True) == ["bob"]
    assert a.is_connected("bob") and b.is_connected("alice")
    rb.close()
    wait_for(lambda: a.client_count(cluster=True) == 1, 5, what="bob to leave")
    assert not a.is_connected("bob")


def test_shutdown_leaves_sessions_for_clients_to_resume_elsewhere(cluster: Cluster) -> None:
    leaving, staying = cluster.broker(), cluster.broker()
    reader = ConnectionReader(leaving.open_stream("dave", topics=["a", "b"]))
    reader.connected()
    leaving.shutdown(timeout=1)
    assert reader.ended.wait(5)
    resumed = ConnectionReader(staying.open_stream("dave"))
    assert resumed.connected()["topics"] == ["a", "b"]
    assert staying.client_count(cluster=True) == 1


def test_operations_fail_fast_with_backend_error_when_redis_is_unreachable() -> None:
    broker = SSEBroker(SSEConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_prefix=new_prefix()))
    started = time.monotonic()
    with pytest.raises(BackendError, match="publishing the event failed"):
        broker.broadcast("x")
    with pytest.raises(BackendError):
        broker.last_event_id()
    assert time.monotonic() - started < 3


def test_opening_a_stream_while_redis_is_unreachable_is_refused_as_unavailable() -> None:
    broker = SSEBroker(SSEConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_prefix=new_prefix()))
    try:
        with pytest.raises(BrokerUnavailable, match="Redis"):
            broker.open_stream("alice", topics=["t"])
        assert broker.client_count() == 0 and broker._debug_state()["connections"] == 0  # nothing left behind
    finally:
        broker.backend.close()


@requires_redis_server
def test_a_hung_redis_fails_publishers_within_the_socket_timeout(private_redis: RedisServer) -> None:
    prefix = new_prefix()
    broker = SSEBroker(SSEConfig(redis_url=private_redis.url, redis_prefix=prefix))
    resumer = SSEBroker(SSEConfig(redis_url=private_redis.url, redis_prefix=prefix))
    broker.broadcast("accepted before")
    cursor = broker.last_event_id()
    broker.broadcast("also accepted")
    private_redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(BackendError):
            broker.broadcast("while hung")
        assert time.monotonic() - started < broker.backend.socket_timeout + 2  # type: ignore[attr-defined]
    finally:
        private_redis.resume()
    # Nothing accepted before the outage is lost for a resuming client.
    reader = ConnectionReader(resumer.open_stream("z", last_event_id=cursor))
    reader.connected()
    assert reader.next().json() == "also accepted"
    resumer.shutdown(0.5)
    broker.shutdown(0.5)


def test_the_listener_catches_up_from_the_stream_after_losing_its_connection(cluster: Cluster) -> None:
    server, publisher = cluster.broker(), cluster.broker()
    reader = ConnectionReader(server.open_stream("alice"))
    reader.connected()
    publisher.broadcast(0)
    assert reader.next().json() == 0
    node = server.backend.node  # type: ignore[attr-defined]
    admin = redis.Redis.from_url(SHARED_URL)
    # Kill this process's pub/sub connection, publish while it is gone.
    listeners = [
        entry
        for entry in connections_named(SHARED_URL, f"{cluster.prefix}:{node}")
        if int(entry.get("sub", 0))
    ]
    assert len(listeners) == 1, listeners
    admin.client_kill_filter(_id=listeners[0]["id"])
    for i in range(1, 21):
        publisher.broadcast(i)
    assert [e.json() for e in reader.take(20)] == list(range(1, 21))
    admin.close()


# -- real servers ----------------------------------------------------------------


def test_gevent_two_workers_deliver_everything_published_from_either_worker(
    make_server: t.Callable[..., Server], prefix: str
) -> None:
    srv = make_server("gevent", config=redis_config(prefix), workers=2)
    workers = worker_pids(srv, 2)
    readers: dict[int, list[tuple[EventReader, str]]] = {}
    for pid in workers:
        with only_worker(pid, workers):
            for _ in range(2):
                reader = EventReader(connect_url(srv, topics="t"))
                readers.setdefault(pid, []).append((reader, reader.connected()["clientId"]))
            assert set(srv.state()["clients"]) == {cid for _, cid in readers[pid]}
    published: list[tuple[str, str | None, dict[str, int]]] = []
    for pid in workers:
        other = next(w for w in workers if w != pid)
        bodies = [
            {"kind": "all"},
            {"kind": "topic", "topic": "t"},
            {"kind": "client", "client_id": readers[other][0][1]},
        ]
        for body in bodies:
            data = {"n": len(published), "from": pid}
            with only_worker(pid, workers):
                status, answer = http_request("POST", srv.url("/test/publish"), {**body, "data": data})
            assert status == 200 and json.loads(answer)["pid"] == pid, answer
            published.append((body["kind"], body.get("client_id"), data))
    for group in readers.values():
        for reader, cid in group:
            expected = [data for kind, target, data in published if kind != "client" or target == cid]
            assert [e.json() for e in reader.take(len(expected))] == expected
            assert reader.drain(0.2) == []
            reader.close()


PUBLISHER_SCRIPT = """
import json, sys
from flask_sse_broker import SSEBroker, SSEConfig
url, prefix, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
broker = SSEBroker(SSEConfig(redis_url=url, redis_prefix=prefix))
for item in spec:
    if item["kind"] == "topic":
        broker.broadcast_to_topic(item["topic"], item["data"])
    elif item["kind"] == "client":
        broker.send(item["client_id"], item["data"])
    else:
        broker.broadcast(item["data"])
print(broker.last_event_id())
"""


def run_publisher(prefix: str, spec: list[dict[str, t.Any]], url: str = SHARED_URL) -> str:
    """Publish from a separate plain Python process that serves nothing."""
    out = subprocess.run(
        [sys.executable, "-c", PUBLISHER_SCRIPT, url, prefix, json.dumps(spec)],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.decode().strip()


def test_two_hosts_and_a_script_publisher_lose_nothing_across_hosts(
    make_server: t.Callable[..., Server], prefix: str
) -> None:
    one = make_server("gthread", config=redis_config(prefix))
    two = make_server("werkzeug", config=redis_config(prefix))
    a = EventReader(connect_url(one, topics="orders"))
    b = EventReader(connect_url(two, topics="orders"))
    hello_a, hello_b = a.connected(), b.connected()
    run_publisher(prefix, [{"kind": "topic", "topic": "orders", "data": i} for i in range(10)])
    assert [e.json() for e in a.take(10)] == list(range(10))
    assert [e.json() for e in b.take(10)] == list(range(10))
    last = a.last_event_id
    a.close()
    run_publisher(
        prefix,
        [{"kind": "topic", "topic": "orders", "data": i} for i in range(10, 15)]
        + [
            {"kind": "client", "client_id": hello_a["clientId"], "data": "direct"},
            {"kind": "all", "data": "all"},
        ],
    )
    # A comes back on the other host, with its token and last id only.
    resumed = EventReader(connect_url(two, token=hello_a["token"]), headers={"Last-Event-ID": last})
    hello = resumed.connected()
    assert hello["clientId"] == hello_a["clientId"] and hello["topics"] == ["orders"]
    assert [e.json() for e in resumed.take(7)] == [*range(10, 15), "direct", "all"]
    assert [e.json() for e in b.take(6)] == [*range(10, 15), "all"]
    assert hello_b["clientId"] != hello["clientId"]
    resumed.close()
    b.close()


def test_subscribe_in_one_process_for_a_client_in_another_takes_effect(
    make_server: t.Callable[..., Server], prefix: str
) -> None:
    one = make_server("gthread", config=redis_config(prefix))
    two = make_server("gthread", config=redis_config(prefix))
    b = EventReader(connect_url(two))
    hello = b.connected()
    # Server-side, from process 1's code:
    assert one.post("/test/subscribe", {"client_id": hello["clientId"], "topics": ["news"]})["topics"] == [
        "news"
    ]
    one.publish("news", "from one")
    assert b.next().json() == "from one"
    # Over HTTP, the browser's subscribe request landing on the other process:
    assert one.post("/_sse/subscribe", {"token": hello["token"], "topics": ["sport"]})["topics"] == [
        "news",
        "sport",
    ]
    run_publisher(prefix, [{"kind": "topic", "topic": "sport", "data": "goal"}])
    assert b.next().json() == "goal"
    assert one.post("/_sse/unsubscribe", {"token": hello["token"], "topics": ["news"]})["topics"] == ["sport"]
    one.publish("news", "not for b")
    one.publish("sport", "for b")
    assert b.next().json() == "for b"
    b.close()


@requires_redis_server
def test_redis_killed_and_restarted_mid_stream(
    make_server: t.Callable[..., Server], prefix: str, private_redis: RedisServer
) -> None:
    config = redis_config(prefix, private_redis.url)
    srv = make_server("gevent", config=config)
    reader = EventReader(connect_url(srv, topics="t"))
    reader.connected()
    srv.publish("t", "before")
    assert reader.next().json() == "before"
    private_redis.kill()
    started = time.monotonic()
    status, _ = http_request("POST", srv.url("/test/publish"), {"topic": "t", "data": "lost"}, timeout=15)
    assert status == 500 and time.monotonic() - started < 5
    beats = reader.heartbeats
    wait_for(lambda: reader.heartbeats >= beats + 3, 10, what="heartbeats while Redis is down")
    assert not reader.ended.is_set()
    private_redis.start()

    def publish_ok() -> bool:
        status, _ = http_request("POST", srv.url("/test/publish"), {"topic": "t", "data": "after"})
        return status == 200

    wait_for(publish_ok, 20, 0.2, "publishing to work again")
    assert reader.next(15).json() == "after"
    wait_for(
        lambda: "Redis listener reconnected" in srv.log_path.read_text(errors="replace"),
        5,
        what="the reconnection to be logged",
    )
    reader.close()


def test_500_clients_use_a_constant_small_number_of_redis_connections(
    make_server: t.Callable[..., Server], prefix: str
) -> None:
    config = redis_config(prefix, SSE_MAX_CONNECTIONS=2000, SSE_HEARTBEAT_INTERVAL=5)
    srv = make_server("gevent", config=config)
    pid = srv.state()["pid"]
    socks: list[socket.socket] = []
    counts = []
    try:
        for _batch in range(5):
            for _ in range(100):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
                s.sendall(b"GET /_sse/connect?topics=t HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(s)
            opened = len(socks)
            wait_for(lambda: srv.state()["connections"] == opened, 60, 0.2, f"{opened} streams")  # noqa: B023
            counts.append(len(_worker_connections(prefix, pid)))
        srv.publish(None, "to all", kind="all")
        wait_for(
            lambda: srv.state()["counters"]["queued"] >= 500,
            20,
            0.2,
            "the broadcast to reach 500 streams",
        )
        counts.append(len(_worker_connections(prefix, pid)))
    finally:
        for s in socks:
            s.close()
    print("Redis connections of the worker after each 100 streams, then a broadcast:", counts)
    # One pub/sub connection, one for the listener's own commands, plus at
    # most the command pool, however many clients.
    assert max(counts) <= 1 + 1 + 8, counts
    assert max(counts) - min(counts) <= 8, counts


def _worker_connections(prefix: str, pid: int) -> list[dict[str, t.Any]]:
    return [c for c in connections_named(SHARED_URL, f"{prefix}:") if f":{pid}:" in c["name"]]


# -- the CLI -------------------------------------------------------------------


def test_flask_sse_publish_reaches_a_stream_served_elsewhere(cluster: Cluster, prefix: str) -> None:
    from flask import Flask

    from flask_sse_broker import create_blueprint

    server = cluster.broker()
    reader = ConnectionReader(server.open_stream("alice", topics=["orders"]))
    reader.connected()
    app = Flask(__name__)
    app.config.update(SSE_REDIS_URL=SHARED_URL, SSE_REDIS_PREFIX=prefix, SSE_HANDLE_SIGTERM=False)
    cli_broker = SSEBroker()
    app.register_blueprint(create_blueprint(cli_broker))
    try:
        result = app.test_cli_runner().invoke(
            args=["sse", "publish", "orders", '{"id": 7}', "--event", "order"]
        )
        assert result.exit_code == 0, result.output
        event = reader.next()
        assert (event.event, json.loads(event.data)) == ("order", {"id": 7})
        result = app.test_cli_runner().invoke(args=["sse", "stats"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["cluster_clients"] == 1
    finally:
        cli_broker.shutdown(timeout=0)
