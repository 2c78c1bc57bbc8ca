"""``POST /_sse/publish`` over real sockets, on every server model (SPEC §9.3)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import typing as t

import pytest

from .redis_support import SHARED_URL, RedisServer, requires_redis, requires_redis_server
from .support import ROOT, SERVER_KINDS, EventReader, Server, connect_url

KEY = "publish-test-key-0123456789"
MAX_EVENT_BYTES = 10_000
MAX_PUBLISH_BYTES = 200_000

PUBLISH_CONFIG = {
    "SSE_HEARTBEAT_INTERVAL": 0.5,
    "SSE_HISTORY_SIZE": 2000,
    "SSE_MAX_TOPICS_PER_CONNECTION": 5,
    "SSE_MAX_TOPIC_LENGTH": 50,
    "SSE_EVENT_BUFFER_SIZE": 2000,
    "SSE_PUBLISH_KEY": KEY,
    "SSE_MAX_EVENT_BYTES": MAX_EVENT_BYTES,
    "SSE_MAX_PUBLISH_BYTES": MAX_PUBLISH_BYTES,
}


@pytest.fixture(scope="module", params=SERVER_KINDS)
def pub(request: pytest.FixtureRequest) -> t.Iterator[Server]:
    """The test app with a publish key, under each server model."""
    srv = Server(request.param, config=PUBLISH_CONFIG)
    srv.start()
    yield srv
    srv.stop()


def publish(
    srv: Server,
    body: t.Any = None,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, t.Any, http.client.HTTPMessage]:
    """POST to /_sse/publish; the status, the decoded JSON answer, the headers."""
    hdrs = {"Content-Type": "application/json"}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    hdrs.update(headers or {})
    payload = raw if raw is not None else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", "/_sse/publish", body=payload, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None, resp.headers
    finally:
        conn.close()


def last_id(srv: Server) -> str:
    return srv.get_json("/test/last-event-id")["id"]  # type: ignore[no-any-return]


# -- access ------------------------------------------------------------------------


def test_publish_is_off_by_default(server: Server) -> None:
    status, answer, _ = publish(server, {"topic": "t", "data": 1})
    assert status == 404 and answer["status"] == 404


def test_a_request_without_the_key_is_401_with_a_bearer_challenge(pub: Server) -> None:
    status, answer, headers = publish(pub, {"topic": "t", "data": 1}, key=None)
    assert status == 401 and answer["status"] == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        f"Basic {KEY}",
        KEY,
        "Bearer",
        "Bearer \xe9\xff",
        f"Bearer {KEY} extra",
    ],
)
def test_a_wrong_key_is_401_and_publishes_nothing(pub: Server, authorization: str) -> None:
    before = last_id(pub)
    status, _, headers = publish(
        pub, {"topic": "t", "data": 1}, key=None, headers={"Authorization": authorization}
    )
    assert status == 401 and "WWW-Authenticate" in headers
    assert last_id(pub) == before


def test_the_scheme_is_case_insensitive(pub: Server) -> None:
    status, answer, _ = publish(
        pub, {"topic": "t", "data": 1}, key=None, headers={"Authorization": f"bearer {KEY}"}
    )
    assert status == 200 and len(answer["ids"]) == 1


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_can_publish_decides_with_the_request(make_server: t.Callable[..., Server], kind: str) -> None:
    srv = make_server(kind, app="tests.apps.publishapp:create_app()")
    status, answer, _ = publish(srv, {"topic": "t", "data": 1}, key=None)
    assert status == 403 and answer["status"] == 403
    status, answer, _ = publish(srv, {"topic": "t", "data": 1}, key=None, headers={"X-Role": "publisher"})
    assert status == 200 and len(answer["ids"]) == 1


# -- what is published ---------------------------------------------------------------


def test_an_event_reaches_subscribers_with_the_id_returned(pub: Server) -> None:
    with EventReader(connect_url(pub, topics="single")) as reader:
        reader.connected()
        status, answer, _ = publish(
            pub, {"topic": "single", "data": {"a": [1, "x"]}, "event": "order", "retry": 1500}
        )
        assert status == 200
        event = reader.next()
        assert (event.event, event.json(), event.id) == ("order", {"a": [1, "x"]}, answer["ids"][0])
        assert reader.retry == 1500


def test_topics_publish_one_event_per_topic_in_the_order_given(pub: Server) -> None:
    with (
        EventReader(connect_url(pub, topics="ta,tb")) as both,
        EventReader(connect_url(pub, topics="tb")) as second,
    ):
        both.connected()
        second.connected()
        status, answer, _ = publish(pub, {"topics": ["tb", "ta"], "data": "x"})
        assert status == 200 and len(answer["ids"]) == 2
        assert [e.id for e in both.take(2)] == answer["ids"]
        assert [e.id for e in second.take(1)] == answer["ids"][:1]
        assert second.drain(0.2) == []


def test_a_client_target_reaches_only_that_client(pub: Server) -> None:
    with EventReader(connect_url(pub)) as alice, EventReader(connect_url(pub)) as bob:
        alice_id = alice.connected()["clientId"]
        bob.connected()
        status, _, _ = publish(pub, {"client": alice_id, "data": "for alice"})
        assert status == 200
        assert alice.next().json() == "for alice"
        assert bob.drain(0.3) == []


def test_all_reaches_every_client(pub: Server) -> None:
    with EventReader(connect_url(pub, topics="x")) as one, EventReader(connect_url(pub)) as two:
        one.connected()
        two.connected()
        status, answer, _ = publish(pub, {"all": True, "data": "hello"})
        assert status == 200
        assert [one.next().id, two.next().id] == answer["ids"] * 2


def test_a_batch_of_1000_arrives_in_order_with_the_ids_returned(pub: Server) -> None:
    with EventReader(connect_url(pub, topics="batch")) as reader:
        reader.connected()
        events = [{"topic": "batch", "data": i} for i in range(1000)]
        status, answer, _ = publish(pub, {"events": events})
        assert status == 200 and len(answer["ids"]) == 1000
        received = reader.take(1000)
        assert [e.json() for e in received] == list(range(1000))
        assert [e.id for e in received] == answer["ids"]


def test_a_batch_mixes_targets_in_order(pub: Server) -> None:
    with EventReader(connect_url(pub, topics="mix")) as reader:
        client_id = reader.connected()["clientId"]
        events = [
            {"topic": "mix", "data": 0},
            {"all": True, "data": 1},
            {"client": client_id, "data": 2, "event": "direct"},
            {"topics": ["other", "mix"], "data": 3},
        ]
        status, answer, _ = publish(pub, {"events": events})
        assert status == 200 and len(answer["ids"]) == 5
        received = reader.take(4)
        assert [e.json() for e in received] == [0, 1, 2, 3]
        assert [e.id for e in received] == [answer["ids"][i] for i in (0, 1, 2, 4)]


def test_an_invalid_event_refuses_the_whole_batch_naming_its_index(pub: Server) -> None:
    with EventReader(connect_url(pub, topics="atomic")) as reader:
        reader.connected()
        before = last_id(pub)
        events: list[t.Any] = [{"topic": "atomic", "data": i} for i in range(5)]
        events[3] = {"topic": "atomic", "data": 3, "event": "bad\nname"}
        status, answer, _ = publish(pub, {"events": events})
        assert status == 400
        assert answer["index"] == 3 and answer["error"].startswith("events[3]: ")
        assert last_id(pub) == before
        publish(pub, {"topic": "atomic", "data": "marker"})
        assert reader.next().json() == "marker"


# -- refused bodies --------------------------------------------------------------------


def test_a_body_that_is_not_json_content_type_is_415(pub: Server) -> None:
    status, answer, _ = publish(pub, raw=b'{"topic": "t", "data": 1}', headers={"Content-Type": "text/plain"})
    assert status == 415 and answer["status"] == 415


def test_a_body_over_max_publish_bytes_is_413(pub: Server) -> None:
    events = [{"topic": "t", "data": "x" * 900} for _ in range(MAX_PUBLISH_BYTES // 900 + 1)]
    status, answer, _ = publish(pub, {"events": events})
    assert status == 413 and answer["status"] == 413


def test_an_event_over_max_event_bytes_is_400_with_its_index(pub: Server) -> None:
    events = [{"topic": "t", "data": 1}, {"topic": "t", "data": "x" * MAX_EVENT_BYTES}]
    status, answer, _ = publish(pub, {"events": events})
    assert status == 400 and answer["index"] == 1


def test_more_than_1000_events_is_400(pub: Server) -> None:
    status, answer, _ = publish(pub, {"events": [{"all": True, "data": 0}] * 1001})
    assert status == 400 and "index" not in answer


def test_topics_expanding_past_1000_publishes_is_400_at_that_event(pub: Server) -> None:
    events = [{"topics": ["a", "b", "c", "d"], "data": 0}] * 251  # 1,004 publishes
    status, answer, _ = publish(pub, {"events": events})
    assert status == 400 and answer["index"] == 250


HOSTILE: dict[str, bytes] = {
    "not json": b"{nope",
    "not utf-8": b'{"topic": "t", "data": "\xff"}',
    "a list": b"[]",
    "a string": b'"hello"',
    "null": b"null",
    "empty": b"",
    "deeply nested": b'{"topic": "t", "data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "NaN": b'{"topic": "t", "data": NaN}',
    "Infinity": b'{"topic": "t", "data": -Infinity}',
    "a float overflowing": b'{"topic": "t", "data": 1e400}',
    "an integer of 5000 digits": b'{"topic": "t", "data": ' + b"9" * 5000 + b"}",
    "no target": b'{"data": 1}',
    "two targets": b'{"topic": "t", "all": true, "data": 1}',
    "all false": b'{"all": false, "data": 1}',
    "all as 1": b'{"all": 1, "data": 1}',
    "no data": b'{"topic": "t"}',
    "an unknown key": b'{"topic": "t", "data": 1, "evnet": "x"}',
    "an id": b'{"topic": "t", "data": 1, "id": "1-1"}',
    "topic not a string": b'{"topic": 5, "data": 1}',
    "empty topic": b'{"topic": "", "data": 1}',
    "topic too long": b'{"topic": "' + b"t" * 51 + b'", "data": 1}',
    "topic with a newline": b'{"topic": "a\\nb", "data": 1}',
    "a pattern topic": b'{"topic": "orders/*", "data": 1}',
    "a pattern in topics": b'{"topics": ["a", "orders/**"], "data": 1}',
    "topics not a list": b'{"topics": "a,b", "data": 1}',
    "topics empty": b'{"topics": [], "data": 1}',
    "topics repeated": b'{"topics": ["a", "a"], "data": 1}',
    "client not a string": b'{"client": 7, "data": 1}',
    "client empty": b'{"client": "", "data": 1}',
    "client with a control character": b'{"client": "a\\u0000b", "data": 1}',
    "event name with CR": b'{"topic": "t", "data": 1, "event": "a\\rb"}',
    "event name not a string": b'{"topic": "t", "data": 1, "event": ["x"]}',
    "event name empty": b'{"topic": "t", "data": 1, "event": ""}',
    "retry negative": b'{"topic": "t", "data": 1, "retry": -1}',
    "retry a bool": b'{"topic": "t", "data": 1, "retry": true}',
    "retry a float": b'{"topic": "t", "data": 1, "retry": 1.5}',
    "retry a string": b'{"topic": "t", "data": 1, "retry": "100"}',
    "events not a list": b'{"events": {"topic": "t", "data": 1}}',
    "events empty": b'{"events": []}',
    "events with an extra key": b'{"events": [{"topic": "t", "data": 1}], "topic": "t"}',
    "an event that is not an object": b'{"events": [{"topic": "t", "data": 1}, 5]}',
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_body_is_a_400_json_error_and_publishes_nothing(pub: Server, body: bytes) -> None:
    before = last_id(pub)
    status, answer, _ = publish(pub, raw=body)
    assert status == 400, answer
    assert answer["status"] == 400 and answer["error"]
    assert last_id(pub) == before


# -- through Redis -------------------------------------------------------------------


def _redis_config(prefix: str, url: str = SHARED_URL) -> dict[str, t.Any]:
    return {**PUBLISH_CONFIG, "SSE_REDIS_URL": url, "SSE_REDIS_PREFIX": prefix}


@requires_redis
def test_a_batch_published_to_one_process_reaches_another_in_order_through_redis(
    make_server: t.Callable[..., Server], prefix: str
) -> None:
    publisher = make_server("gthread", config=_redis_config(prefix))
    subscriber = make_server("gevent", config=_redis_config(prefix))
    with EventReader(connect_url(subscriber, topics="r")) as reader:
        client_id = reader.connected()["clientId"]
        events = [{"topic": "r", "data": i} for i in range(100)]
        events[50] = {"client": client_id, "data": 50}
        status, answer, _ = publish(publisher, {"events": events})
        assert status == 200 and len(answer["ids"]) == 100
        received = reader.take(100)
        assert [e.json() for e in received] == list(range(100))
        assert [e.id for e in received] == answer["ids"]
        assert last_id(subscriber) == answer["ids"][-1]


@requires_redis_server
def test_publishing_while_redis_is_unreachable_is_503_with_retry_after(
    make_server: t.Callable[..., Server], prefix: str, private_redis: RedisServer
) -> None:
    srv = make_server("gthread", config=_redis_config(prefix, private_redis.url))
    assert publish(srv, {"topic": "t", "data": 0})[0] == 200
    private_redis.kill()
    status, answer, headers = publish(srv, {"events": [{"topic": "t", "data": 1}] * 10})
    assert status == 503 and answer["status"] == 503
    assert "Retry-After" in headers


@pytest.mark.parametrize("depth", [400, 900, 990, 5000])
def test_nesting_near_the_recursion_limit_is_published_or_refused_never_a_crash(
    pub: Server, depth: int
) -> None:
    body = b'{"topic": "deep", "data": ' + b"[" * depth + b"]" * depth + b"}"
    status, answer, _ = publish(pub, raw=body)
    assert status in (200, 400), answer
    assert publish(pub, {"topic": "deep", "data": 1})[0] == 200


# -- the CLI ---------------------------------------------------------------------------


def run_cli(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLASK_APP": "tests.apps.serverapp:create_app()"}
    env.pop("SSE_PUBLISH_KEY", None)
    if key is not None:
        env["SSE_PUBLISH_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "flask", "sse", "publish", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_cli_publishes_through_a_running_server_with_url(pub: Server) -> None:
    with EventReader(connect_url(pub, topics="cli")) as reader:
        reader.connected()
        done = run_cli("cli", '{"n": 1}', "--event", "from-cli", "--url", pub.url("/_sse/publish"))
        assert done.returncode == 0, done.stderr
        event = reader.next()
        assert (event.event, event.json()) == ("from-cli", {"n": 1})
        assert event.id in done.stdout


def test_the_cli_reports_a_refused_key_and_fails(pub: Server) -> None:
    done = run_cli("cli", "1", "--url", pub.url("/_sse/publish"), key="wrong")
    assert done.returncode != 0 and "401" in done.stderr
