"""Live revoke (SPEC §9.2): over real sockets under every server model, in
process, and across processes sharing Redis."""

from __future__ import annotations

import json
import typing as t

import pytest

from flask_sse_broker import InvalidTopic, SSEBroker, SSEClient, SSEConfig, topic_revoked
from flask_sse_broker.backends import MemoryBackend

from .plugins.servers import servers_of
from .redis_support import SHARED_URL, Cluster, ConnectionReader, delete_prefix, new_prefix, requires_redis
from .support import EventReader, Server, connect_url, http_request, wait_for

APP = "tests.apps.patternsapp:create_app()"


#: :mod:`tests.apps.patternsapp` under each server model.
server = servers_of(APP, "module")


def revoke(server: Server, topic: str, client_id: str | None = None) -> int:
    body: dict[str, t.Any] = {"topic": topic}
    if client_id is not None:
        body["client_id"] = client_id
    return t.cast(int, server.post("/test/revoke", body)["affected"])


# -- over the wire -----------------------------------------------------------------


def test_the_client_receives_revoked_with_the_topics_and_no_id(server: Server) -> None:
    with EventReader(connect_url(server, topics="rv1/news,rv1/orders/*")) as reader:
        hello = reader.connected()
        server.publish("rv1/news", "before")
        assert reader.next().json() == "before"
        cursor = reader.last_event_id
        assert revoke(server, "rv1/orders/*", hello["clientId"]) == 1
        event = reader.next()
        assert event.event == "revoked"
        assert event.json() == {"topics": ["rv1/orders/*"]}
        assert event.id == cursor  # no id: field, so the client's cursor stays put


def test_nothing_more_of_a_revoked_topic_arrives(server: Server) -> None:
    with EventReader(connect_url(server, topics="rv2/news,rv2/orders/*")) as reader:
        hello = reader.connected()
        revoke(server, "rv2/orders/*", hello["clientId"])
        assert reader.next().event == "revoked"
        assert server.publish("rv2/orders/1", "gone") == 0
        server.publish("rv2/news", "still here")
        assert reader.next().json() == "still here"


def test_revoke_without_a_client_takes_the_topic_from_every_holder(server: Server) -> None:
    with (
        EventReader(connect_url(server, topics="rv3/*")) as one,
        EventReader(connect_url(server, topics="rv3/*,rv3/keep")) as two,
        EventReader(connect_url(server, topics="rv3/keep")) as plain,
    ):
        one.connected(), two.connected(), plain.connected()
        assert revoke(server, "rv3/*") == 2
        assert one.next().json() == two.next().json() == {"topics": ["rv3/*"]}
        server.publish("rv3/other", "gone")
        server.publish("rv3/keep", "kept")
        assert two.next().json() == plain.next().json() == "kept"
        server.publish(None, "everyone", kind="all")
        assert one.next().json() == "everyone"  # rv3/other never reached it


def test_revoke_removes_the_subscription_as_written_only(server: Server) -> None:
    with EventReader(connect_url(server, topics="rv4/*,rv4/1")) as reader:
        hello = reader.connected()
        revoke(server, "rv4/1", hello["clientId"])
        assert reader.next().json() == {"topics": ["rv4/1"]}
        server.publish("rv4/1", "still matched by rv4/*")
        assert reader.next().json() == "still matched by rv4/*"


def test_revoking_a_topic_the_client_does_not_hold_sends_nothing(server: Server) -> None:
    with EventReader(connect_url(server, topics="rv5/a")) as reader:
        hello = reader.connected()
        assert revoke(server, "rv5/b", hello["clientId"]) == 0
        assert revoke(server, "rv5/a", "nobody-here") == 0
        server.publish("rv5/a", "first event after")
        assert reader.next().json() == "first event after"


def test_every_connection_of_the_client_is_told(server: Server) -> None:
    with EventReader(connect_url(server, topics="rv6")) as first:
        hello = first.connected()
        with EventReader(connect_url(server, token=hello["token"])) as second:
            assert second.connected()["topics"] == ["rv6"]
            assert revoke(server, "rv6", hello["clientId"]) == 1
            assert first.next().event == second.next().event == "revoked"


def test_a_reconnect_with_the_token_does_not_get_a_revoked_topic_back(server: Server) -> None:
    reader = EventReader(connect_url(server, topics="rv7/a,rv7/b/*"))
    hello = reader.connected()
    reader.close()
    wait_for(lambda: hello["clientId"] in server.state()["sessions"], what="the session")
    assert revoke(server, "rv7/b/*") == 0  # nobody connected, but the session loses it
    assert server.get_json(f"/test/session/{hello['clientId']}")["topics"] == ["rv7/a"]
    with EventReader(connect_url(server, token=hello["token"])) as again:
        assert again.connected()["topics"] == ["rv7/a"]
        server.publish("rv7/b/1", "gone")
        server.publish("rv7/a", "kept")
        assert again.next().json() == "kept"


def test_a_revoked_topic_asked_for_again_must_pass_authorize(server: Server) -> None:
    with EventReader(connect_url(server)) as reader:
        hello = reader.connected()
        # Granted by the app server-side, which no authorize() call guards.
        server.post("/test/subscribe", {"client_id": hello["clientId"], "topics": ["secret/plans"]})
        revoke(server, "secret/plans", hello["clientId"])
        assert reader.next().event == "revoked"
        body = {"token": hello["token"], "topics": ["secret/plans"]}
        status, _ = http_request("POST", server.url("/_sse/subscribe"), body)
        assert status == 403
        status, _ = http_request("GET", connect_url(server, token=hello["token"], topics="secret/plans"))
        assert status == 403


# -- in process ----------------------------------------------------------------------


@pytest.fixture
def broker() -> t.Iterator[SSEBroker]:
    b = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False))
    yield b
    b.shutdown(timeout=0)


def _frames(conn: t.Any) -> list[tuple[str, t.Any]]:
    """(event name, data) of every event written so far, read without blocking
    (the connection's queue is taken by one ``next``)."""
    chunk = next(conn)
    out = []
    for block in chunk.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


def test_events_queued_but_not_yet_written_are_dropped_too(broker: SSEBroker) -> None:
    conn = broker.open_stream("c", topics=["orders/*", "news"])
    next(conn)  # connected
    broker.broadcast_to_topic("orders/1", "queued, unwritten")
    broker.broadcast_to_topic("news", "kept")
    broker.revoke("orders/*", "c")
    assert _frames(conn) == [("message", "kept"), ("revoked", {"topics": ["orders/*"]})]


def test_an_invalid_topic_cannot_be_revoked(broker: SSEBroker) -> None:
    for bad in ("a/*b", "ord*", ""):
        with pytest.raises(InvalidTopic):
            broker.revoke(bad)


def test_revoke_sends_the_topic_revoked_signal(broker: SSEBroker) -> None:
    seen: list[tuple[str, frozenset[str]]] = []

    def receiver(sender: SSEBroker, client: t.Any, topics: frozenset[str]) -> None:
        seen.append((client.id, topics))

    broker.open_stream("a", topics=["orders/*"])
    broker.open_stream("b", topics=["orders/*"])
    broker.open_stream("c", topics=["news"])
    with topic_revoked.connected_to(receiver, sender=broker):
        assert broker.revoke("orders/*") == 2
    assert sorted(seen) == [("a", frozenset({"orders/*"})), ("b", frozenset({"orders/*"}))]
    assert broker.get_client("a").topics == frozenset()  # type: ignore[union-attr]
    assert broker.clients_by_topic("orders/1") == []


def test_the_backend_hears_of_a_revoke_after_the_lock() -> None:
    class Watching(MemoryBackend):
        heard: list[tuple[str, frozenset[str], frozenset[str], bool]] = []

        def client_revoked(self, client: SSEClient, topics: frozenset[str]) -> None:
            self.heard.append((client.id, topics, client.topics, self.hub.lock.locked()))

    backend = Watching(100)
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False), backend=backend)
    broker.open_stream("a", topics=["orders/*", "news"])
    assert broker.revoke("orders/*") == 1
    assert backend.heard == [("a", frozenset({"orders/*"}), frozenset({"news"}), False)]
    broker.shutdown(timeout=0)


# -- through Redis -------------------------------------------------------------------


@requires_redis
def test_revoke_in_one_process_reaches_a_client_in_another(cluster: Cluster) -> None:
    holder, other = cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream("alice", topics=["orders/*", "news"]))
    reader.connected()
    assert other.revoke("orders/*") == 0  # no local client affected
    event = reader.next()
    assert (event.event, event.json()) == ("revoked", {"topics": ["orders/*"]})
    # Published after revoke() returned: never delivered, in any process.
    other.broadcast_to_topic("orders/1", "gone")
    other.broadcast_to_topic("news", "kept")
    assert reader.next().json() == "kept"
    wait_for(lambda: other.clients_by_topic("news", cluster=True) == ["alice"], 5, what="presence")
    assert other.clients_by_topic("orders/1", cluster=True) == []


@requires_redis
def test_revoke_reaches_a_session_kept_in_redis(cluster: Cluster) -> None:
    first, revoker, later = cluster.broker(), cluster.broker(), cluster.broker()
    reader = ConnectionReader(first.open_stream("bob", topics=["orders/*", "news"]))
    reader.connected()
    first.shutdown(timeout=1)  # bob's session now lives in Redis only
    assert reader.ended.wait(5)
    revoker.revoke("orders/*", "bob")
    again = ConnectionReader(later.open_stream("bob"))
    assert again.connected()["topics"] == ["news"]


@requires_redis
def test_revoke_of_every_holder_reaches_sessions_kept_in_redis(cluster: Cluster) -> None:
    first, revoker, later = cluster.broker(), cluster.broker(), cluster.broker()
    for client_id in ("carol", "dave"):
        ConnectionReader(first.open_stream(client_id, topics=["orders/**", "news"])).connected()
    first.shutdown(timeout=1)
    revoker.revoke("orders/**")
    for client_id in ("carol", "dave"):
        assert ConnectionReader(later.open_stream(client_id)).connected()["topics"] == ["news"]


@requires_redis
def test_revoke_over_http_reaches_a_client_served_by_another_process(prefix_config: dict[str, t.Any]) -> None:
    with (
        Server("gthread", app=APP, config=prefix_config) as one,
        Server("gevent", app=APP, config=prefix_config) as two,
        EventReader(connect_url(two, topics="orders/*,news")) as reader,
    ):
        hello = reader.connected()
        assert revoke(one, "orders/*", hello["clientId"]) == 0
        assert reader.next().json() == {"topics": ["orders/*"]}
        one.publish("orders/1", "gone")
        one.publish("news", "kept")
        assert reader.next().json() == "kept"


@pytest.fixture
def prefix_config() -> t.Iterator[dict[str, t.Any]]:
    prefix = new_prefix()
    yield {
        "SSE_REDIS_URL": SHARED_URL,
        "SSE_REDIS_PREFIX": prefix,
        "SSE_HEARTBEAT_INTERVAL": 0.5,
        "SSE_HISTORY_SIZE": 1000,
    }
    delete_prefix(SHARED_URL, prefix)
