"""The server's side of what the browser client relies on, over real sockets:
streams that survive a stale token, unsubscribing while away, shared streams."""

from __future__ import annotations

import json
import typing as t

import pytest
from itsdangerous import URLSafeSerializer

from flask_sse_broker.client import EventSource
from flask_sse_broker.tokens import SALT

from .redis_support import SHARED_URL, delete_prefix, new_prefix, requires_redis
from .support import EventReader, Server, connect_url, http_request, wait_for
from .test_client import Consumer

CONFIG = {"SSE_HEARTBEAT_INTERVAL": 0.5, "SSE_HISTORY_SIZE": 200, "SSE_RETRY": 100}


@pytest.fixture(scope="module")
def server() -> t.Iterator[Server]:
    with Server("werkzeug", config=CONFIG, env={"SSE_TEST_AUTHZ": "secret"}) as srv:
        yield srv


def foreign_token(client_id: str) -> str:
    """A token as a server with another ``SECRET_KEY`` signed it."""
    return URLSafeSerializer("another-secret", salt=SALT).dumps(client_id)


# -- tokens this app did not sign ---------------------------------------------------


@pytest.mark.parametrize("token", [foreign_token("old-client"), "garbage", "a.b.c"])
def test_stream_with_a_stale_token_opens_as_a_new_client_and_resets(server: Server, token: str) -> None:
    server.publish("stale", "before")
    cursor = server.get_json("/test/last-event-id")["id"]
    with EventReader(connect_url(server, topics="stale", token=token, lastEventId=cursor)) as reader:
        assert reader.status == 200
        hello = reader.connected()
        assert hello["clientId"] != "old-client"
        assert hello["token"] != token
        assert reader.next().event == "reset"
        server.publish("stale", "after")
        event = reader.next()
        assert json.loads(event.data) == "after"


def test_stream_with_a_stale_token_and_no_cursor_has_no_reset(server: Server) -> None:
    with EventReader(connect_url(server, topics="fresh", token=foreign_token("x"))) as reader:
        reader.connected()
        server.publish("fresh", "first")
        event = reader.next()
        assert (event.event, json.loads(event.data)) == ("message", "first")


def test_stale_token_does_not_excuse_a_forbidden_topic(server: Server) -> None:
    status, body = http_request(
        "GET", connect_url(server, topics="secret-plans", token=foreign_token("x"), lastEventId="1-1")
    )
    assert status == 403
    assert "not authorised" in json.loads(body)["error"]


@pytest.mark.parametrize("action", ["subscribe", "unsubscribe"])
def test_topic_changes_with_a_stale_token_are_403(server: Server, action: str) -> None:
    status, body = http_request(
        "POST", server.url(f"/_sse/{action}"), {"token": foreign_token("x"), "topics": ["a"]}
    )
    assert status == 403
    assert json.loads(body)["error"] == "invalid token"


def test_python_consumer_survives_a_key_rotation() -> None:
    app = "tests.apps.browserapp:create_app()"
    srv = Server("werkzeug", app=app, config=CONFIG).start()
    source = EventSource(connect_url(srv), topics=["py-rot"])
    source.reconnect_delay = 0.1
    consumer = Consumer(source)
    try:
        srv.publish("py-rot", "before")
        assert [e.json() for e in consumer.take(1)] == ["before"]
        old = (source.client_id, source.token)
        srv.stop()
        srv = Server(
            "werkzeug", app=app, config=CONFIG, env={"SSE_TEST_SECRET_KEY": "rotated"}, port=srv.port
        )
        srv.start()
        wait_for(lambda: source.client_id not in (None, old[0]), 15, what="the consumer to be a new client")
        srv.publish("py-rot", "after")
        events = consumer.take(2)
    finally:
        consumer.close()
        srv.stop()
    assert [(e.event, e.json() if e.event == "message" else None) for e in events] == [
        ("reset", None),
        ("message", "after"),
    ]
    assert source.token != old[1]


# -- unsubscribing a client that is away ----------------------------------------------


def test_unsubscribe_applies_to_a_remembered_client_and_its_replay(server: Server) -> None:
    reader = EventReader(connect_url(server, topics="keep,rm"))
    hello = reader.connected()
    reader.close()
    wait_for(lambda: hello["clientId"] in server.state()["sessions"], 5, what="the session")
    status, body = http_request(
        "POST", server.url("/_sse/unsubscribe"), {"token": hello["token"], "topics": ["rm"]}
    )
    assert (status, json.loads(body)) == (200, {"topics": ["keep"]})
    server.publish("rm", "removed")
    server.publish("keep", "kept")
    url = connect_url(server, topics="keep", token=hello["token"], lastEventId=hello["lastEventId"])
    with EventReader(url) as again:
        assert again.connected()["topics"] == ["keep"]
        assert [json.loads(e.data) for e in again.drain()] == ["kept"]


@requires_redis
def test_unsubscribe_applies_to_a_client_remembered_in_redis() -> None:
    """The process that held the client is gone; Redis remembers its topics."""
    prefix = new_prefix()
    config = {**CONFIG, "SSE_REDIS_URL": SHARED_URL, "SSE_REDIS_PREFIX": prefix}
    srv = Server("werkzeug", config=config).start()
    try:
        reader = EventReader(connect_url(srv, topics="keep,rm"))
        hello = reader.connected()
        reader.close()
        wait_for(lambda: hello["clientId"] in srv.state()["sessions"], 5, what="the session")
        srv.stop()
        srv = Server("werkzeug", config=config, port=srv.port).start()
        assert hello["clientId"] not in srv.state()["sessions"]  # not in this process
        status, body = http_request(
            "POST", srv.url("/_sse/unsubscribe"), {"token": hello["token"], "topics": ["rm"]}
        )
        assert (status, json.loads(body)) == (200, {"topics": ["keep"]})
        srv.publish("rm", "removed")
        srv.publish("keep", "kept")
        url = connect_url(srv, topics="keep", token=hello["token"], lastEventId=hello["lastEventId"])
        with EventReader(url) as again:
            assert again.connected()["topics"] == ["keep"]
            assert [json.loads(e.data) for e in again.drain()] == ["kept"]
    finally:
        srv.stop()
        delete_prefix(SHARED_URL, prefix)


def test_unsubscribe_of_a_client_nobody_remembers_is_404(server: Server) -> None:
    reader = EventReader(connect_url(server))  # no topics: nothing to remember
    hello = reader.connected()
    reader.close()
    wait_for(lambda: hello["clientId"] not in server.state()["clients"], 5, what="release")
    status, body = http_request(
        "POST", server.url("/_sse/unsubscribe"), {"token": hello["token"], "topics": ["a"]}
    )
    assert status == 404
    assert json.loads(body)["error"]


def test_subscribe_of_a_client_that_is_away_is_still_404(server: Server) -> None:
    reader = EventReader(connect_url(server, topics="held"))
    hello = reader.connected()
    reader.close()
    wait_for(lambda: hello["clientId"] in server.state()["sessions"], 5, what="the session")
    status, _ = http_request(
        "POST", server.url("/_sse/subscribe"), {"token": hello["token"], "topics": ["more"]}
    )
    assert status == 404


# -- shared streams -----------------------------------------------------------------


def test_shared_stream_events_start_with_their_topic(server: Server) -> None:
    with EventReader(connect_url(server, topics="sh", shared="1")) as reader:
        hello = reader.connected()
        server.publish("sh", {"n": 1}, event="named")
        server.publish(None, "all", kind="all")
        server.publish(None, "you", kind="client", client_id=hello["clientId"])
        events = reader.take(3)
    assert [(e.event, e.data.split("\n")) for e in events] == [
        ("named", ['"sh"', '{"n":1}']),
        ("message", ["null", '"all"']),
        ("message", ["null", '"you"']),
    ]
    assert all(e.id for e in events)


def test_shared_stream_replay_carries_topics_too(server: Server) -> None:
    cursor = server.get_json("/test/last-event-id")["id"]
    server.publish("sh-replay", "missed")
    with EventReader(connect_url(server, topics="sh-replay", shared="1", lastEventId=cursor)) as reader:
        reader.connected()
        assert reader.next().data == '"sh-replay"\n"missed"'


def test_plain_stream_events_carry_no_topic(server: Server) -> None:
    with EventReader(connect_url(server, topics="plain")) as reader:
        reader.connected()
        server.publish("plain", "x")
        assert reader.next().data == '"x"'
