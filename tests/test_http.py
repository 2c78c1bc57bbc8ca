"""The HTTP contract and the guarantees, over real sockets, under every server model.

The ``server`` fixture runs each test against the Werkzeug threaded server,
gunicorn gthread and gunicorn gevent in turn (see conftest.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import threading
import time
import typing as t

import pytest

from .plugins.servers import SHARED_CONFIG
from .support import EventReader, Server, connect_url, http_request, wait_for

# -- the stream ---------------------------------------------------------------


def test_stream_response_headers(server: Server) -> None:
    with EventReader(connect_url(server)) as reader:
        assert reader.status == 200
        assert reader.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert reader.headers["Cache-Control"] == "no-cache, no-transform"
        assert reader.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in reader.headers
        assert "Content-Length" not in reader.headers


def test_first_frames_are_retry_then_connected(server: Server) -> None:
    with EventReader(connect_url(server, topics="a,b")) as reader:
        hello = reader.connected()
        assert reader.retry == 3000
        assert hello["topics"] == ["a", "b"]
        assert hello["heartbeat"] == 500
        assert isinstance(hello["token"], str) and hello["clientId"] not in hello["token"].split(".")[0]
        assert len(hello["clientId"]) >= 16


def test_heartbeats_are_named_events_without_id(server: Server) -> None:
    with EventReader(connect_url(server), keep_heartbeats=True) as reader:
        reader.connected()
        beat = reader.next(timeout=5)
        assert beat.event == "heartbeat"
        assert beat.data == "{}"


def test_topic_events_reach_subscribers_only(server: Server) -> None:
    with (
        EventReader(connect_url(server, topics="news")) as news,
        EventReader(connect_url(server, topics="sport")) as sport,
    ):
        news.connected(), sport.connected()
        assert server.publish("news", {"headline": "x"}, event="story") == 1
        event = news.next()
        assert (event.event, json.loads(event.data)) == ("story", {"headline": "x"})
        server.publish(None, "all", kind="all")
        assert json.loads(sport.next().data) == "all"
        assert json.loads(news.next().data) == "all"


def test_publishing_from_a_background_thread(server: Server) -> None:
    with EventReader(connect_url(server, topics="bg")) as reader:
        reader.connected()
        assert server.post("/test/publish-thread", {"topic": "bg", "data": "from thread"})["queued"] == 1
        assert json.loads(reader.next().data) == "from thread"


def test_publishing_from_another_greenlet(server: Server) -> None:
    if server.kind != "gevent":
        pytest.skip("greenlets are the gevent worker's")
    with EventReader(connect_url(server, topics="gl")) as reader:
        reader.connected()
        assert server.post("/test/publish-greenlet", {"topic": "gl", "data": "from greenlet"})["queued"] == 1
        assert json.loads(reader.next().data) == "from greenlet"


def test_direct_send_reaches_every_tab_of_a_client(server: Server) -> None:
    with EventReader(connect_url(server)) as tab1:
        hello = tab1.connected()
        with EventReader(connect_url(server, token=hello["token"])) as tab2:
            assert tab2.connected()["clientId"] == hello["clientId"]
            assert server.publish(data="dm", kind="client", client_id=hello["clientId"]) == 2
            assert json.loads(tab1.next().data) == "dm"
            assert json.loads(tab2.next().data) == "dm"


# -- guarantee 1: order -------------------------------------------------------


def test_order_of_1000_events_from_4_publishers(server: Server) -> None:
    results: dict[int, list[t.Any]] = {}
    readers_ready = threading.Barrier(3)

    def subscriber(i: int) -> None:
        results[i] = collect_resuming(server, "order", 1000, readers_ready)

    subs = [threading.Thread(target=subscriber, args=(i,)) for i in range(2)]
    for th in subs:
        th.start()
    readers_ready.wait(10)

    def publisher(p: int) -> None:
        server.post("/test/publish", {"topic": "order", "count": 250, "publisher": p})

    pubs = [threading.Thread(target=publisher, args=(p,)) for p in range(4)]
    for th in pubs:
        th.start()
    for th in pubs + subs:
        th.join(90)
    for i in range(2):
        got = results[i]
        assert len(got) == 1000, len(got)
        assert len({(e["p"], e["n"]) for e in got}) == 1000, "duplicates"
        for p in range(4):
            assert [e["n"] for e in got if e["p"] == p] == list(range(250))


def collect_resuming(
    server: Server,
    topics: str,
    count: int,
    barrier: threading.Barrier,
    timeout: float = 60.0,
    got: list[t.Any] | None = None,
) -> list[t.Any]:
    """Read ``count`` message payloads, reconnecting with the last event id
    whenever the stream ends, as a browser does; pass ``barrier`` once
    connected. Returns the payloads in arrival order, appended to ``got`` as
    they arrive when it is given (so another thread can watch progress)."""
    got = [] if got is None else got
    deadline = time.monotonic() + timeout
    reader = EventReader(connect_url(server, topics=topics))
    try:
        reader.connected()
        cursor = reader.last_event_id
        barrier.wait(10)
        while len(got) < count:
            try:
                event = reader.next(timeout=max(0.1, deadline - time.monotonic()))
            except AssertionError:
                if time.monotonic() > deadline or not reader.ended.is_set():
                    raise
                reader.close()
                reader = EventReader(connect_url(server, topics=topics), headers={"Last-Event-ID": cursor})
                continue
            if event.id:
                cursor = event.id
            if event.event == "message":
                got.append(json.loads(event.data))
    finally:
        reader.close()
    return got


# -- guarantee 2: no loss across reconnects -----------------------------------


def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(server: Server) -> None:
    reader = EventReader(connect_url(server, topics="resume"))
    hello = reader.connected()
    server.publish("resume", "seen")
    cursor = reader.next().id
    reader.close()
    server.post("/test/publish", {"topic": "resume", "count": 50})
    server.publish("elsewhere", "not mine")
    with EventReader(
        connect_url(server, topics="resume", token=hello["token"]), headers={"Last-Event-ID": cursor}
    ) as again:
        assert again.connected()["clientId"] == hello["clientId"]
        got = again.take(50)
        assert [json.loads(e.data)["n"] for e in got] == list(range(50))
        server.publish("resume", "live")
        assert json.loads(again.next().data) == "live"


def test_last_event_id_query_parameter_and_header_wins(server: Server) -> None:
    reader = EventReader(connect_url(server, topics="q"))
    reader.connected()
    server.publish("q", 1)
    first = reader.next().id
    server.publish("q", 2)
    second = reader.next().id
    reader.close()
    server.publish("q", 3)
    with EventReader(connect_url(server, topics="q", lastEventId=first)) as by_query:
        by_query.connected()
        assert [json.loads(e.data) for e in by_query.take(2)] == [2, 3]
    with EventReader(
        connect_url(server, topics="q", lastEventId=first), headers={"Last-Event-ID": second}
    ) as by_header:
        by_header.connected()
        assert json.loads(by_header.next().data) == 3


def test_cursor_older_than_history_gets_reset(server: Server) -> None:
    reader = EventReader(connect_url(server, topics="old"))
    reader.connected()
    server.publish("old", 0)
    cursor = reader.next().id
    reader.close()
    server.post("/test/publish", {"topic": "nobody", "count": SHARED_CONFIG["SSE_HISTORY_SIZE"] + 10})
    with EventReader(connect_url(server, topics="old"), headers={"Last-Event-ID": cursor}) as again:
        again.connected()
        assert again.next().event == "reset"


def test_server_side_subscriptions_survive_a_reconnect_with_the_token(server: Server) -> None:
    reader = EventReader(connect_url(server))
    hello = reader.connected()
    server.post("/test/subscribe", {"client_id": hello["clientId"], "topics": ["kept"]})
    reader.close()
    wait_for(lambda: hello["clientId"] not in server.state()["clients"], 5, what="release")
    with EventReader(connect_url(server, token=hello["token"])) as again:
        assert again.connected()["topics"] == ["kept"]
        server.publish("kept", "still here")
        assert json.loads(again.next().data) == "still here"


# -- guarantee 3: bounded memory ----------------------------------------------


def open_stalled_stream(server: Server, topics: str) -> socket.socket:
    """A client that sends its request and never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /_sse/connect?topics={topics} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_a_stalled_client_is_bounded_and_others_are_not_slowed(server: Server) -> None:
    limit = SHARED_CONFIG["SSE_EVENT_BUFFER_SIZE"]
    before = server.state()["counters"]
    stalled = open_stalled_stream(server, "firehose")
    wait_for(lambda: server.state()["topics"].get("firehose") == 1, 5, what="stalled client registered")
    received: list[t.Any] = []
    ready = threading.Barrier(2)
    total = 10_000
    collector = threading.Thread(
        target=collect_resuming,
        args=(server, "firehose", total, ready),
        kwargs={"timeout": 90, "got": received},
    )
    collector.start()
    ready.wait(10)
    max_queued = 0
    # 10,000 events at a steady pace of about 2,000/s: 20 per request, 100 requests/s.
    # The publisher never runs more than half the history ahead of the reading
    # client: a reader slower than 2,000/s (a loaded machine, an old Python)
    # is dropped and resumes, but never falls out of the history into `reset`.
    # A server that let the stalled client slow the others stalls the reader,
    # and so this loop, until the wait below fails.
    lead = SHARED_CONFIG["SSE_HISTORY_SIZE"] // 2
    start = time.monotonic()
    for batch in range(total // 20):
        wait_for(lambda: len(received) >= batch * 20 - lead, 30, what="the reading client keeps up")  # noqa: B023
        # 2 KiB events, so the kernel's socket buffers fill and the server's bound is what holds.
        server.post("/test/publish", {"topic": "firehose", "count": 20, "publisher": batch, "pad": 2048})
        if batch % 25 == 0:
            max_queued = max([max_queued, *server.state()["queued"]])
        delay = start + (batch + 1) / 100 - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the publisher, not waiting for a result
    collector.join(90)
    stalled.close()
    after = server.state()["counters"]
    assert max_queued <= limit
    assert after["dropped"] > before["dropped"]
    assert after["overflow_disconnects"] > before["overflow_disconnects"]
    assert len(received) == total
    assert len({(e["p"], e["n"]) for e in received}) == total


# -- guarantee 4: dead clients are found --------------------------------------


def test_a_vanished_client_is_released_within_a_heartbeat(server: Server) -> None:
    reader = EventReader(connect_url(server, topics="dead1,dead2"))
    client_id = reader.connected()["clientId"]
    assert client_id in server.state()["clients"]
    reader.close()

    def released() -> bool:
        state = server.state()
        return (
            client_id not in state["clients"]
            and "dead1" not in state["topics"]
            and "dead2" not in state["topics"]
        )

    # One heartbeat finds it (the socket shows EOF), plus a margin for a busy machine.
    wait_for(released, timeout=SHARED_CONFIG["SSE_HEARTBEAT_INTERVAL"] + 1.5, what="release")
    state = server.state()
    assert len(state["queued"]) == state["connections"] == state["open_streams"]


@pytest.mark.parametrize("kind", ["werkzeug", "gthread", "gevent"])
def test_a_closed_client_is_found_by_the_first_heartbeat_after_it(make_server: t.Any, kind: str) -> None:
    interval = 2.0
    srv = make_server(kind, config={"SSE_HEARTBEAT_INTERVAL": interval})
    reader = EventReader(connect_url(srv), keep_heartbeats=True)
    client_id = reader.connected()["clientId"]
    assert reader.next(interval + 2).event == "heartbeat"
    reader.close()  # right after a heartbeat: the next one is a full interval away
    closed_at = time.monotonic()
    wait_for(lambda: client_id not in srv.state()["clients"], timeout=interval + 3, what="release")
    # A write-only check needs a second heartbeat (the first write after a
    # close succeeds): about two intervals. The socket's EOF is seen at one.
    assert time.monotonic() - closed_at < interval * 1.5


# -- bad input ----------------------------------------------------------------

LONG = "x" * (SHARED_CONFIG["SSE_MAX_TOPIC_LENGTH"] + 1)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("topics=" + LONG, 400),
        ("topics=a,b,c,d,e,f", 400),
        ("topics=a%0Db", 400),
        ("topics=a%0Ab", 400),
        ("topics=a%00b", 400),
        ("lastEventId=not-an-id", 400),
        ("lastEventId=1-2%0Aevent:%20x", 400),
        ("lastEventId=" + "1" * 300, 400),
        ("topics=secret-plans", 403),
        ("topics=ok,secret-plans", 403),
    ],
)
def test_bad_connect_requests_get_a_json_error_and_leave_no_state(
    server: Server, query: str, status: int
) -> None:
    before = server.state()
    got, body = http_request("GET", server.url("/_sse/connect?" + query))
    assert got == status
    assert json.loads(body)["error"]
    after = server.state()
    assert after["clients"] == before["clients"]
    assert after["connections"] == before["connections"]
    assert after["topics"] == before["topics"]


def test_bad_last_event_id_header_is_refused(server: Server) -> None:
    got, body = http_request("GET", server.url("/_sse/connect"), headers={"Last-Event-ID": "nonsense"})
    assert got == 400
    assert "last event id" in json.loads(body)["error"]


@pytest.fixture
def live_client(server: Server) -> t.Iterator[tuple[EventReader, dict[str, t.Any]]]:
    reader = EventReader(connect_url(server))
    hello = reader.connected()
    yield reader, hello
    reader.close()


def test_subscribe_and_unsubscribe_over_http(server: Server, live_client: t.Any) -> None:
    reader, hello = live_client
    status, body = http_request(
        "POST", server.url("/_sse/subscribe"), {"token": hello["token"], "topics": ["x", "y"]}
    )
    assert (status, json.loads(body)) == (200, {"topics": ["x", "y"]})
    server.publish("x", 1)
    assert json.loads(reader.next().data) == 1
    status, body = http_request(
        "POST", server.url("/_sse/unsubscribe"), {"token": hello["token"], "topics": ["x"]}
    )
    assert (status, json.loads(body)) == (200, {"topics": ["y"]})
    server.publish("x", 2)
    server.publish("y", 3)
    assert json.loads(reader.next().data) == 3


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"[]", {"Content-Type": "application/json"}, 400),
        (b'{"topics": ["a"]}', {"Content-Type": "application/json"}, 400),
        (b'{"token": "TOKEN", "topics": "a"}', {"Content-Type": "application/json"}, 400),
        (b'{"token": "TOKEN", "topics": [1]}', {"Content-Type": "application/json"}, 400),
        (
            b'{"token": "TOKEN", "topics": ["' + LONG.encode() + b'"]}',
            {"Content-Type": "application/json"},
            400,
        ),
        (b'{"token": "TOKEN", "topics": ["a\\nb"]}', {"Content-Type": "application/json"}, 400),
        (
            b'{"token": "TOKEN", "topics": ["a","b","c","d","e","f"]}',
            {"Content-Type": "application/json"},
            400,
        ),
        (b'{"token": "TOKEN", "topics": ["a"]}', {"Content-Type": "text/plain"}, 415),
        (b'{"token": "TOKEN", "topics": ["a"]}', {}, 415),
        (b'{"token": "forged.sig", "topics": ["a"]}', {"Content-Type": "application/json"}, 403),
        (b'{"token": "TOKEN", "topics": ["secret-x"]}', {"Content-Type": "application/json"}, 403),
        (
            b'{"token": "TOKEN", "topics": ["' + b"a" * 70_000 + b'"]}',
            {"Content-Type": "application/json"},
            413,
        ),
    ],
)
def test_bad_subscribe_requests_get_their_status(
    server: Server, live_client: t.Any, body: bytes, headers: dict[str, str], status: int
) -> None:
    _, hello = live_client
    before = server.state()
    got, answer = http_request(
        "POST",
        server.url("/_sse/subscribe"),
        raw=body.replace(b"TOKEN", hello["token"].encode()),
        headers=headers,
    )
    assert got == status, answer
    assert json.loads(answer)["error"]
    # Nothing was subscribed. (Compared as "no topic appeared": a client of an
    # earlier test may be released meanwhile, and its topics vanish.)
    assert set(server.state()["topics"]) <= set(before["topics"])


def test_subscribe_for_a_client_that_is_gone_is_404(server: Server) -> None:
    reader = EventReader(connect_url(server))
    hello = reader.connected()
    reader.close()
    wait_for(lambda: hello["clientId"] not in server.state()["clients"], 5, what="release")
    status, body = http_request(
        "POST", server.url("/_sse/subscribe"), {"token": hello["token"], "topics": ["a"]}
    )
    assert status == 404
    assert json.loads(body)["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/_sse/connect", 405),
        ("GET", "/_sse/subscribe", 405),
        ("DELETE", "/_sse/unsubscribe", 405),
        ("GET", "/_sse/no-such-route", 404),
    ],
)
def test_routing_errors_under_the_prefix_are_json_errors(
    server: Server, method: str, path: str, status: int
) -> None:
    got, headers, body = _request_with_headers(method, server.url(path))
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": json.loads(body)["error"], "status": status}
    if status == 405:
        assert method not in headers["Allow"]


def test_stats_when_enabled(server: Server) -> None:
    status, body = http_request("GET", server.url("/_sse/stats"))
    assert status == 200
    assert {"clients", "connections", "published", "dropped"} <= set(json.loads(body))


# -- per-configuration servers (Werkzeug and gevent: the two process models) ---


@pytest.mark.parametrize("kind", ["werkzeug", "gevent"])
def test_over_max_connections_is_503_with_retry_after(make_server: t.Any, kind: str) -> None:
    srv = make_server(kind, config={"SSE_MAX_CONNECTIONS": 1})
    with EventReader(connect_url(srv)) as first:
        first.connected()
        status, headers, body = _get_with_headers(srv.url("/_sse/connect"))
        assert status == 503
        assert int(headers["Retry-After"]) > 0
        assert json.loads(body)["error"]


def _get_with_headers(url: str) -> tuple[int, t.Any, bytes]:
    return _request_with_headers("GET", url)


def _request_with_headers(method: str, url: str) -> tuple[int, t.Any, bytes]:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, parts.path)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_stats_are_404_unless_enabled(make_server: t.Any) -> None:
    srv = make_server("werkzeug", config={"SSE_STATS": None})
    status, _body = http_request("GET", srv.url("/_sse/stats"))
    assert status == 404


def test_identify_binds_tokens_to_the_user(make_server: t.Any) -> None:
    srv = make_server("werkzeug", env={"SSE_TEST_IDENTIFY": "1"})
    with EventReader(connect_url(srv), headers={"X-User": "alice"}) as alice:
        hello = alice.connected()
        assert hello["clientId"] == "alice"
        status, _ = http_request(
            "GET", srv.url("/_sse/connect?token=" + hello["token"]), headers={"X-User": "mallory"}
        )
        assert status == 403
        status, _ = http_request(
            "POST",
            srv.url("/_sse/subscribe"),
            {"token": hello["token"], "topics": ["a"]},
            headers={"X-User": "mallory"},
        )
        assert status == 403
        status, _ = http_request(
            "POST",
            srv.url("/_sse/subscribe"),
            {"token": hello["token"], "topics": ["a"]},
            headers={"X-User": "alice"},
        )
        assert status == 200


# -- guarantee 6: clean shutdown ----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "args"), [("gthread", ()), ("gevent", ()), ("werkzeug", ()), ("gevent", ("--preload",))]
)
def test_sigterm_ends_every_stream_promptly(make_server: t.Any, kind: str, args: tuple[str, ...]) -> None:
    # With --preload the app is imported in the arbiter, before the fork and
    # before gunicorn sets the worker's own handler: the broker installs its
    # handler again when the worker opens its first stream.
    srv = make_server(kind, gunicorn_args=args)
    readers = [EventReader(connect_url(srv)) for _ in range(3)]
    for reader in readers:
        reader.connected()
    start = time.monotonic()
    srv.signal(signal.SIGTERM)
    for reader in readers:
        assert reader.wait_ended(10), "stream still open after SIGTERM"
        assert reader.retry is not None and reader.retry >= 3000
    assert srv.proc.wait(15) in (0, -signal.SIGTERM)
    assert time.monotonic() - start < 10, "ended by the graceful timeout, not the broker"
    assert "graceful timeout" not in srv.log().lower()


# -- thousands of streams under gevent -----------------------------------------


def test_1000_concurrent_streams_in_one_gevent_worker(make_server: t.Any) -> None:
    import asyncio

    from flask_sse_broker._decoder import iter_events

    srv = make_server("gevent", config={"SSE_HEARTBEAT_INTERVAL": 5})
    count = 1000

    async def one(connected: asyncio.Queue[None]) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /_sse/connect?topics=crowd HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        try:
            while True:
                size = int((await reader.readline()).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                # The broker writes whole frames per chunk, so each chunk
                # decodes on its own.
                for event in iter_events([chunk[:-2]]):
                    if event.event == "connected":
                        connected.put_nowait(None)
                    elif event.event == "message":
                        return json.loads(event.data)  # type: ignore[no-any-return]
        finally:
            writer.close()

    async def main() -> list[str]:
        connected: asyncio.Queue[None] = asyncio.Queue()
        tasks = [asyncio.ensure_future(one(connected)) for _ in range(count)]
        for _ in range(count):
            await asyncio.wait_for(connected.get(), 60)
        queued = await asyncio.to_thread(srv.publish, "crowd", "hello crowd")
        assert queued == count
        return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    # In a thread of its own: the session's Playwright keeps an event loop
    # running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, main()).result(timeout=180) == ["hello crowd"] * count
