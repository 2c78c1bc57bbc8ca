"""Topic patterns (SPEC §9.1) over real sockets, under every server model,
and through Redis."""

from __future__ import annotations

import typing as t
import urllib.parse

import pytest

from flask_sse_broker import InvalidTopic, SSEBroker, SSEConfig

from .plugins.servers import servers_of
from .redis_support import Cluster, ConnectionReader, requires_redis
from .support import EventReader, Server, connect_url, http_request

APP = "tests.apps.patternsapp:create_app()"


#: :mod:`tests.apps.patternsapp` under each server model.
server = servers_of(APP, "module")


def _data(reader: EventReader) -> t.Any:
    return reader.next().json()


def _received_only(server: Server, reader: EventReader, sent: dict[str, bool], marker: str) -> None:
    """Publish ``data=topic`` to each topic of ``sent``, then to ``marker``
    (which ``reader`` receives): what arrives in between must be exactly the
    topics marked ``True``, in order and once each."""
    for topic in sent:
        server.publish(topic, topic)
    server.publish(marker, "marker")
    arrived = []
    while (data := _data(reader)) != "marker":
        arrived.append(data)
    assert arrived == [topic for topic, wanted in sent.items() if wanted]


# -- matching over the wire ------------------------------------------------------


def test_a_star_matches_exactly_one_segment(server: Server) -> None:
    with EventReader(connect_url(server, topics="orders/*")) as reader:
        assert reader.connected()["topics"] == ["orders/*"]
        _received_only(
            server,
            reader,
            {
                "orders/42": True,
                "orders": False,
                "orders/42/items": False,
                "orders/": False,
                "order/1": False,
            },
            marker="orders/end",
        )


def test_a_trailing_double_star_matches_one_or_more_segments(server: Server) -> None:
    with EventReader(connect_url(server, topics="shop/**")) as reader:
        reader.connected()
        _received_only(
            server,
            reader,
            {"shop/42": True, "shop": False, "shop/42/items": True, "shop/a/b/c": True, "shopx/1": False},
            marker="shop/end",
        )


def test_a_star_in_the_middle_matches_any_one_segment(server: Server) -> None:
    with EventReader(connect_url(server, topics="users/*/inbox")) as reader:
        reader.connected()
        _received_only(
            server,
            reader,
            {"users/7/inbox": True, "users/7/outbox": False, "users/7/8/inbox": False},
            marker="users/end/inbox",
        )


def test_an_event_matching_several_subscriptions_arrives_once(server: Server) -> None:
    topics = "dup/42,dup/*,dup/**,*/42"
    with EventReader(connect_url(server, topics=topics)) as reader:
        reader.connected()
        assert server.publish("dup/42", "once") == 1
        server.publish("dup/43", "next")
        assert [e.json() for e in reader.take(2)] == ["once", "next"]


def test_plain_topic_subscribers_and_pattern_subscribers_both_receive(server: Server) -> None:
    with (
        EventReader(connect_url(server, topics="both/1")) as plain,
        EventReader(connect_url(server, topics="both/*")) as pattern,
    ):
        plain.connected(), pattern.connected()
        assert server.publish("both/1", "x") == 2
        assert _data(plain) == _data(pattern) == "x"


@pytest.mark.parametrize("bad", ["ord*", "a/*b", "a/**/b", "a//*", "*x", "a/***"])
def test_an_invalid_pattern_in_the_query_is_refused_with_400(server: Server, bad: str) -> None:
    before = server.state()["clients"]
    status, body = http_request("GET", connect_url(server, topics=bad))
    assert status == 400
    assert "invalid topic" in body.decode()
    assert set(server.state()["clients"]) <= set(before)  # no new client (earlier ones may leave)


@pytest.mark.parametrize("path", ["/_sse/subscribe", "/_sse/unsubscribe"])
def test_an_invalid_pattern_in_a_body_is_refused_with_400(server: Server, path: str) -> None:
    with EventReader(connect_url(server, topics="keep")) as reader:
        token = reader.connected()["token"]
        status, body = http_request("POST", server.url(path), {"token": token, "topics": ["x/*y"]})
        assert status == 400, body
        assert "whole segment" in body.decode()


def test_a_pattern_longer_than_the_topic_limit_is_refused(server: Server) -> None:
    long = "a/" * 30 + "*"  # SHARED_CONFIG: at most 50 characters
    status, _ = http_request("GET", connect_url(server, topics=long))
    assert status == 400


def test_subscribe_and_unsubscribe_accept_patterns(server: Server) -> None:
    with EventReader(connect_url(server)) as reader:
        hello = reader.connected()
        body = {"token": hello["token"], "topics": ["sub/*"]}
        assert server.post("/_sse/subscribe", body) == {"topics": ["sub/*"]}
        server.publish("sub/1", "in")
        assert _data(reader) == "in"
        assert server.post("/_sse/unsubscribe", body) == {"topics": []}
        server.publish("sub/2", "out")
        server.publish(None, "marker", kind="client", client_id=hello["clientId"])
        assert _data(reader) == "marker"


# -- authorize ---------------------------------------------------------------------


def test_authorize_is_asked_for_the_pattern_as_written(server: Server) -> None:
    with EventReader(connect_url(server, topics="asked/*/x/**")) as reader:
        reader.connected()
    asked = server.get_json("/test/authorized")["topics"]
    assert "asked/*/x/**" in asked
    assert not [topic for topic in asked if topic.startswith("asked/") and topic != "asked/*/x/**"]


def test_a_pattern_the_app_refuses_is_403(server: Server) -> None:
    status, body = http_request("GET", connect_url(server, topics="secret/*"))
    assert status == 403, body
    with EventReader(connect_url(server)) as reader:
        token = reader.connected()["token"]
        status, _ = http_request(
            "POST", server.url("/_sse/subscribe"), {"token": token, "topics": ["secret/**"]}
        )
        assert status == 403


# -- replay and reset -----------------------------------------------------------


def test_replay_after_a_reconnect_follows_the_pattern(server: Server) -> None:
    with EventReader(connect_url(server, topics="replay/*")) as reader:
        hello = reader.connected()
        server.publish("replay/0", "seen")
        assert _data(reader) == "seen"
        last_id = reader.last_event_id
    for topic in ("replay/1", "news", "replay/1/deep", "replay/2"):
        server.publish(topic, topic)
    url = connect_url(server, token=hello["token"], lastEventId=last_id)
    with EventReader(url) as again:
        assert again.connected()["topics"] == ["replay/*"]  # remembered by the session
        assert [e.json() for e in again.take(2)] == ["replay/1", "replay/2"]
        server.publish("replay/3", "live")
        assert _data(again) == "live"


def test_reset_then_the_history_follows_the_pattern(server: Server) -> None:
    # A cursor from another life of the server (another epoch): reset, then
    # every event of this life that the pattern matches.
    server.publish("reset/1", "reset/1")
    server.publish("reset/1/x", "reset/1/x")
    with EventReader(connect_url(server, topics="reset/*", lastEventId="1-1")) as reader:
        reader.connected()
        assert reader.next().event == "reset"
        events = reader.drain(0.5)
        assert [e.json() for e in events if e.event == "message"] == ["reset/1"]


# -- the broker in process ----------------------------------------------------------


def test_publishing_to_a_pattern_is_refused() -> None:
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False))
    for pattern in ("orders/*", "orders/**", "*"):
        with pytest.raises(InvalidTopic):
            broker.broadcast_to_topic(pattern, "x")
    with pytest.raises(ValueError):
        broker.broadcast_to_topic("ord*", "x")
    assert broker.stats()["published"] == 0


def test_clients_by_topic_counts_pattern_holders_for_a_topic() -> None:
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False))
    broker.open_stream("a", topics=["orders/*"])
    broker.open_stream("b", topics=["orders/42"])
    broker.open_stream("c", topics=["orders/**"])
    assert broker.clients_by_topic("orders/42") == ["a", "b", "c"]
    assert broker.clients_by_topic("orders/*") == ["a"]  # a pattern: its holders as written
    broker.shutdown(timeout=0)


def test_the_browser_query_accepts_encoded_patterns(server: Server) -> None:
    query = urllib.parse.urlencode({"topics": "enc/*,enc/x/**"})
    with EventReader(server.url("/_sse/connect?" + query)) as reader:
        assert reader.connected()["topics"] == ["enc/*", "enc/x/**"]


# -- through Redis -----------------------------------------------------------------


@requires_redis
def test_a_pattern_receives_events_published_in_another_process(cluster: Cluster) -> None:
    holder, publisher = cluster.broker(), cluster.broker()
    reader = ConnectionReader(holder.open_stream("alice", topics=["orders/*", "orders/42"]))
    reader.connected()
    publisher.broadcast_to_topic("orders/42", "once")
    publisher.broadcast_to_topic("orders/42/items", "no")
    publisher.broadcast_to_topic("orders/7", "seven")
    assert [e.json() for e in reader.take(2)] == ["once", "seven"]


@requires_redis
def test_replay_from_redis_follows_the_pattern(cluster: Cluster) -> None:
    first, second = cluster.broker(), cluster.broker()
    reader = ConnectionReader(first.open_stream("bob", topics=["orders/**"]))
    cursor = reader.connected()["lastEventId"]
    reader.close()
    for topic in ("orders/1", "news", "orders/1/items", "ordersx"):
        second.broadcast_to_topic(topic, topic)
    again = ConnectionReader(second.open_stream("bob", topics=["orders/**"], last_event_id=cursor))
    again.connected()
    assert [e.json() for e in again.take(2)] == ["orders/1", "orders/1/items"]
    second.broadcast_to_topic("orders/2", "live")
    assert again.next().json() == "live"


@requires_redis
def test_clients_by_topic_across_processes_counts_patterns(cluster: Cluster) -> None:
    a, b = cluster.broker(), cluster.broker()
    ConnectionReader(a.open_stream("alice", topics=["orders/*"])).connected()
    ConnectionReader(b.open_stream("bob", topics=["orders/1"])).connected()
    assert a.clients_by_topic("orders/1", cluster=True) == ["alice", "bob"]
    assert a.clients_by_topic("orders/*", cluster=True) == ["alice"]
