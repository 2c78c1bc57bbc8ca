"""One stream for all tabs (SPEC §9.5): ``shared: true`` in a real Chromium.

Every test opens its pages in one browser context: a SharedWorker is shared
by the pages of one profile, as the tabs of one browser window are.
"""

from __future__ import annotations

import signal
import typing as t

import pytest

from .browser_support import WAIT_MS, open_page, wait_js
from .support import Server, wait_for
from .test_browser import APP, CONFIG, ENV

SHARED = {"shared": True, "reconnectDelay": 150, "maxReconnectDelay": 1000, "maxRetries": 0}


@pytest.fixture(scope="module")
def server() -> t.Iterator[Server]:
    with Server("werkzeug", app=APP, config=CONFIG, env=ENV) as srv:
        yield srv


@pytest.fixture
def own_server() -> t.Iterator[Server]:
    srv = Server("werkzeug", app=APP, config=CONFIG, env=ENV).start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.signal(signal.SIGCONT)
    srv.stop()


@pytest.fixture
def context(browser: t.Any) -> t.Iterator[t.Any]:
    """One browser profile: its pages share one SharedWorker and one socket pool."""
    ctx = browser.new_context()
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


def tabs(context: t.Any, srv: Server, count: int) -> list[t.Any]:
    pages = []
    for _ in range(count):
        page = context.new_page()
        page.console_errors = []
        page.on("pageerror", lambda exc, page=page: page.console_errors.append(str(exc)))
        pages.append(open_page(page, srv.url("/page")))
    return pages


def join(page: t.Any, topics: list[str], **config: t.Any) -> None:
    """Connect the page's shared client ``c`` (recorded as ``rec.c``); wait until connected."""
    page.evaluate(
        """(config) => {
            window.clients = { c: track(sse.createSSEClient(config), "c", ["revoked", "reset"]).connect() };
        }""",
        {**SHARED, "topics": topics, **config},
    )
    wait_js(page, "() => rec.c.states.includes('connected')")


def data(page: t.Any) -> list[t.Any]:
    return page.evaluate("() => rec.c.events.map((e) => e.data)")  # type: ignore[no-any-return]


def wait_count(page: t.Any, count: int) -> list[t.Any]:
    wait_js(page, "(count) => rec.c.events.length >= count", count)
    return data(page)


def connections(srv: Server, page: t.Any) -> int:
    """The connections the server holds for the client of ``page``."""
    client_id = page.evaluate("() => clients.c.clientId")
    return srv.get_json(f"/test/client/{client_id}")["connections"]  # type: ignore[no-any-return]


def test_eight_tabs_share_one_connection_and_each_gets_exactly_its_events(
    context: t.Any, server: Server
) -> None:
    pages = tabs(context, server, 8)
    for i, page in enumerate(pages):
        join(page, [f"eight-{i}"] + (["eight-even"] if i % 2 == 0 else []))
    assert len({page.evaluate("() => clients.c.clientId") for page in pages}) == 1
    assert connections(server, pages[0]) == 1
    assert all(page.evaluate("() => clients.c.shared") for page in pages)
    assert [page.evaluate("() => clients.c.topics") for page in pages[:2]] == [
        ["eight-0", "eight-even"],
        ["eight-1"],
    ]

    expected: list[list[t.Any]] = [[] for _ in pages]
    client_id = pages[0].evaluate("() => clients.c.clientId")
    for r in range(5):
        for i in range(8):
            server.publish(f"eight-{i}", {"r": r, "i": i})
            expected[i].append({"r": r, "i": i})
        server.publish("eight-even", {"r": r, "even": True})
        server.publish(None, {"r": r, "all": True}, kind="all")
        server.publish(None, {"r": r, "you": True}, kind="client", client_id=client_id)
        for i in range(8):
            if i % 2 == 0:
                expected[i].append({"r": r, "even": True})
            expected[i] += [{"r": r, "all": True}, {"r": r, "you": True}]
    # The last event every page expects is a direct send published last: once
    # it is in, everything published before it is in too (order).
    for page, want in zip(pages, expected, strict=True):
        assert wait_count(page, len(want)) == want
    assert all(page.console_errors == [] for page in pages)


def test_closing_the_tab_that_opened_the_stream_loses_nothing_for_the_others(
    context: t.Any, server: Server
) -> None:
    pages = tabs(context, server, 3)
    for i, page in enumerate(pages):
        join(page, ["close-common", f"close-{i}"])
    client_id = pages[0].evaluate("() => clients.c.clientId")
    pages[0].close()  # the page whose client opened the stream
    for n in range(20):
        server.publish("close-common", n)
    for page in pages[1:]:
        assert wait_count(page, 20) == list(range(20))
    # The topic only the closed tab held is released on the server.
    wait_for(lambda: "close-0" not in server.state()["topics"], 10, what="close-0 to be released")
    state = server.state()
    assert {"close-common", "close-1", "close-2"} <= set(state["topics"])
    assert client_id in state["clients"] and connections(server, pages[1]) == 1


def test_a_tab_subscribing_changes_what_the_server_delivers(context: t.Any, server: Server) -> None:
    first, second = tabs(context, server, 2)
    join(first, ["sub-base"])
    join(second, [])
    assert "sub-new" not in server.state()["topics"]
    assert second.evaluate("() => clients.c.subscribe('sub-new')") == ["sub-new"]
    assert "sub-new" in server.state()["topics"]
    server.publish("sub-new", "new")
    server.publish("sub-base", "base")
    assert wait_count(second, 1) == ["new"]
    assert wait_count(first, 1) == ["base"]
    assert second.evaluate("() => clients.c.unsubscribe('sub-new')") == []
    assert "sub-new" not in server.state()["topics"]
    server.publish("sub-new", "gone")
    server.publish(None, "marker", kind="all")
    assert wait_count(second, 2) == ["new", "marker"]


def test_a_tab_cannot_subscribe_to_a_forbidden_topic(context: t.Any, server: Server) -> None:
    first, second = tabs(context, server, 2)
    join(first, ["forbid-ok"])
    join(second, [])
    error = second.evaluate(
        "() => clients.c.subscribe('secret-z').then(() => null, (e) => [e.name, e.status])"
    )
    assert error == ["SSERequestError", 403]
    assert second.evaluate("() => [clients.c.topics, clients.c.state]") == [[], "connected"]
    server.publish("forbid-ok", "still")
    assert wait_count(first, 1) == ["still"]


def test_a_page_joining_a_running_stream_gets_what_was_published_since_its_render(
    context: t.Any, server: Server
) -> None:
    first, late = tabs(context, server, 2)  # both rendered now, embedding the cursor
    join(first, ["gap-s"])
    server.publish("gap-s", count=3)
    server.publish("gap-other", "not for the late page")
    assert len(wait_count(first, 3)) == 3
    join(late, ["gap-s"], lastEventId=late.evaluate("() => window.LAST_EVENT_ID"))
    server.publish("gap-s", "live")
    got = wait_count(late, 4)
    assert got == [{"n": i, "p": 0, "pad": ""} for i in range(3)] + ["live"]
    assert late.evaluate("() => rec.c.named.reset") == []


def test_shared_stream_reconnects_after_a_server_restart_and_resumes(
    context: t.Any, own_server: Server
) -> None:
    pages = tabs(context, own_server, 3)
    for page in pages:
        join(page, ["restart"])
    own_server.publish("restart", count=5)
    for page in pages:
        wait_count(page, 5)
    own_server.stop()
    for page in pages:
        wait_js(page, "() => rec.c.errors.length >= 2")  # attempts against a dead port
    new = Server("werkzeug", app=APP, config=CONFIG, env=ENV, port=own_server.port).start()
    try:
        new.publish("restart", count=5, publisher=1)  # before the stream is back: replayed
        got = [wait_count(page, 10) for page in pages]
        assert connections(new, pages[0]) == 1
        records = [page.evaluate("() => rec.c") for page in pages]
    finally:
        new.stop()
    want = [{"n": i, "p": p, "pad": ""} for p in (0, 1) for i in range(5)]
    assert got == [want] * 3
    for r in records:
        assert r["states"] == ["connecting", "connected", "connecting", "connected"]
        delays = [e["retryIn"] for e in r["errors"]]
        assert delays == sorted(delays) and not any(e["fatal"] for e in r["errors"])
        assert len(r["named"]["reset"]) == 1  # a new server life


def test_shared_streams_lift_the_six_connections_per_host_limit(browser: t.Any, server: Server) -> None:
    """Chromium opens at most six HTTP/1.1 connections per host and profile:
    shown first with plain streams (the seventh page cannot even load), then
    eight shared tabs load and receive, and a ninth page still loads."""
    plain = browser.new_context()
    try:
        pages = []
        for _ in range(6):
            page = open_page(plain.new_page(), server.url("/page"))
            join(page, ["limit"], shared=False)
            pages.append(page)
        seventh = plain.new_page()
        with pytest.raises(Exception, match="Timeout"):
            seventh.goto(server.url("/page"), timeout=3000)  # bounded: blocked behind six streams
    finally:
        plain.close()

    shared = browser.new_context()
    shared.set_default_timeout(WAIT_MS)
    try:
        pages = tabs(shared, server, 8)
        for page in pages:
            join(page, ["limit"])
        ninth = open_page(shared.new_page(), server.url("/page"))
        server.publish("limit", "all eight")
        for page in pages:
            assert wait_count(page, 1) == ["all eight"]
        assert ninth.evaluate("() => fetch('/test/last-event-id').then((r) => r.status)") == 200
    finally:
        shared.close()


def test_without_shared_worker_each_tab_has_its_own_stream(context: t.Any, server: Server) -> None:
    context.add_init_script("delete window.SharedWorker")
    pages = tabs(context, server, 2)
    for page in pages:
        join(page, ["fallback"])
    assert [page.evaluate("() => clients.c.shared") for page in pages] == [False, False]
    assert len({page.evaluate("() => clients.c.clientId") for page in pages}) == 2
    assert [connections(server, page) for page in pages] == [1, 1]
    server.publish("fallback", "each")
    assert [wait_count(page, 1) for page in pages] == [["each"], ["each"]]
    assert pages[0].evaluate("() => clients.c.subscribe('fallback-2')") == ["fallback", "fallback-2"]


def test_a_worker_that_cannot_load_falls_back_to_a_stream_per_tab(context: t.Any, server: Server) -> None:
    context.route("**/_sse/shared-worker.js", lambda route: route.fulfill(status=404, body="gone"))
    (page,) = tabs(context, server, 1)
    join(page, ["no-worker"])
    assert page.evaluate("() => clients.c.shared") is False
    server.publish("no-worker", "own stream")
    assert wait_count(page, 1) == ["own stream"]


def test_revoked_reaches_the_tabs_that_hold_the_topic(context: t.Any, server: Server) -> None:
    holder, other = tabs(context, server, 2)
    join(holder, ["rvs-gone", "rvs-keep"])
    join(other, ["rvs-keep"])
    client_id = holder.evaluate("() => clients.c.clientId")
    server.post("/test/revoke", {"topic": "rvs-gone", "client_id": client_id})
    wait_js(holder, "() => rec.c.named.revoked.length === 1")
    assert holder.evaluate("() => [rec.c.named.revoked, clients.c.topics]") == [
        [{"topics": ["rvs-gone"]}],
        ["rvs-keep"],
    ]
    server.publish(None, "marker", kind="all")
    assert wait_count(other, 1) == ["marker"]
    assert other.evaluate("() => rec.c.named.revoked") == []


def test_pattern_subscriptions_route_to_the_tabs_they_match(context: t.Any, server: Server) -> None:
    star, one, deep = tabs(context, server, 3)
    join(star, ["pat/*"])
    join(one, ["pat/x"])
    join(deep, ["pat/**"])
    for topic in ("pat/x", "pat/y", "pat/y/z", "pat"):
        server.publish(topic, topic)
    server.publish(None, "end", kind="all")
    assert wait_count(star, 3) == ["pat/x", "pat/y", "end"]
    assert wait_count(one, 2) == ["pat/x", "end"]
    assert wait_count(deep, 4) == ["pat/x", "pat/y", "pat/y/z", "end"]
