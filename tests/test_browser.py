"""The browser client (``/_sse/client.js``) in a real Chromium against a real server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import typing as t
from pathlib import Path

import pytest

from .browser_support import Outage, open_page, wait_js
from .support import ROOT, Server, http_request, wait_for

APP = "tests.apps.browserapp:create_app()"
CONFIG = {
    "SSE_HEARTBEAT_INTERVAL": 0.5,
    "SSE_HISTORY_SIZE": 2000,
}
ENV = {"SSE_TEST_AUTHZ": "secret"}


@pytest.fixture(scope="module")
def server() -> t.Iterator[Server]:
    """The browser test app on the threaded Werkzeug server, shared by the module."""
    with Server("werkzeug", app=APP, config=CONFIG, env=ENV) as srv:
        yield srv


@pytest.fixture
def own_server() -> t.Iterator[Server]:
    """A server this test may kill, freeze and restart (on the same port)."""
    srv = Server("werkzeug", app=APP, config=CONFIG, env=ENV).start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.signal(signal.SIGCONT)
    srv.stop()


def restart(srv: Server, **env: str) -> Server:
    srv.stop()
    return Server("werkzeug", app=APP, config=CONFIG, env={**ENV, **env}, port=srv.port).start()


def connect(page: t.Any, name: str, config: dict[str, t.Any], types: t.Sequence[str] = ()) -> None:
    """Make a client, track it as ``rec[name]`` and connect it; wait until connected."""
    page.evaluate(
        """([name, config, types]) => {
            window.clients = window.clients || {};
            window.clients[name] = track(sse.createSSEClient(config), name, types).connect();
        }""",
        [name, config, list(types)],
    )
    wait_js(page, "(name) => rec[name].states.includes('connected')", name)


def rec(page: t.Any, name: str) -> dict[str, t.Any]:
    return page.evaluate("(name) => rec[name]", name)  # type: ignore[no-any-return]


def wait_events(page: t.Any, name: str, count: int, timeout: float = 15_000) -> list[dict[str, t.Any]]:
    wait_js(page, "([name, count]) => rec[name].events.length >= count", [name, count], timeout)
    return rec(page, name)["events"]  # type: ignore[no-any-return]


def numbered(events: list[dict[str, t.Any]]) -> list[tuple[int, int]]:
    """``(n, publisher)`` of events published with ``count=`` by the test app."""
    return [(e["data"]["n"], e["data"]["p"]) for e in events]


# -- events ----------------------------------------------------------------------


def test_named_unnamed_and_custom_events_reach_their_handlers(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["news"]}, types=["message", "notification", "order-shipped"])
    server.publish("news", {"n": 1})
    server.publish("news", "42", event="notification")
    server.publish("news", 42, event="order-shipped")
    events = wait_events(page, "c", 3)
    assert [(e["type"], e["data"]) for e in events] == [
        ("message", {"n": 1}),
        ("notification", "42"),
        ("order-shipped", 42),
    ]
    named = rec(page, "c")["named"]
    assert named == {"message": [{"n": 1}], "notification": ["42"], "order-shipped": [42]}
    assert all(e["id"] for e in events)
    assert page.console_errors == []


def test_wildcard_sees_names_listed_in_config_events(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["wild"], "events": ["audit"]})
    server.publish("wild", {"a": 1}, event="audit")
    server.publish("wild", {"p": 50, "m": ""}, event="progress")
    events = wait_events(page, "c", 2)
    assert [e["type"] for e in events] == ["audit", "progress"]


def test_control_events_are_not_application_events(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["ctl"]})
    page.evaluate("() => { window.hb = 0; clients.c.on('heartbeat', () => window.hb++); }")
    # A name nobody listens to is not dispatched by the browser at all.
    server.publish("ctl", "unheard", event="nobody-listens")
    server.publish("ctl", "seen")
    wait_events(page, "c", 1)
    # Two heartbeat periods pass: no heartbeat reaches a handler, nor `connected` the wildcard.
    page.wait_for_timeout(1200)
    assert page.evaluate("() => window.hb") == 0
    assert [e["type"] for e in rec(page, "c")["events"]] == ["message"]


def test_unsubscribe_function_stops_the_handler(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["unsub"]})
    page.evaluate(
        """() => {
            window.got = [];
            window.off = clients.c.on("ping", (m) => got.push(m.data));
            clients.c.on("done", () => { window.done = true; });
        }"""
    )
    server.publish("unsub", 1, event="ping")
    wait_js(page, "() => got.length === 1")
    page.evaluate("() => off()")
    server.publish("unsub", 2, event="ping")
    server.publish("unsub", None, event="done")
    wait_js(page, "() => window.done")
    assert page.evaluate("() => got") == [1]


# -- states and reconnection -------------------------------------------------------


def test_state_sequence_on_connect_and_disconnect(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {})
    client = page.evaluate("() => [clients.c.state, clients.c.clientId]")
    assert client[0] == "connected" and client[1]
    page.evaluate("() => clients.c.disconnect()")
    assert rec(page, "c")["states"] == ["connecting", "connected", "disconnected"]
    # The server sees the stream end (at its next heartbeat write at the latest).
    wait_for(lambda: client[1] not in server.state()["clients"], what="the server to drop the client")


def test_server_restart_reconnects_with_backoff_and_loses_nothing(page: t.Any, own_server: Server) -> None:
    open_page(page, own_server.url("/page"))
    connect(page, "c", {"topics": ["orders"], "reconnectDelay": 150, "maxRetries": 0})
    own_server.publish("orders", count=10)
    wait_events(page, "c", 10)
    page.evaluate("() => { window.resets = 0; clients.c.on('reset', () => window.resets++); }")

    own_server.stop()
    wait_js(page, "() => rec.c.errors.length >= 2")  # a few attempts against a dead port
    new = Server("werkzeug", app=APP, config=CONFIG, env=ENV, port=own_server.port).start()
    try:
        # Published before the client is back: it gets them by replay.
        new.publish("orders", count=10, publisher=1)
        events = wait_events(page, "c", 20)
        new.publish("orders", {"n": "live"})
        events = wait_events(page, "c", 21)
        r = rec(page, "c")
    finally:
        new.stop()
    assert numbered(events[:20]) == [(i, 0) for i in range(10)] + [(i, 1) for i in range(10)]
    assert events[20]["data"] == {"n": "live"}
    assert r["states"] == ["connecting", "connected", "connecting", "connected"]
    delays = [e["retryIn"] for e in r["errors"]]
    assert all(not e["fatal"] for e in r["errors"])
    assert delays[0] <= 150
    assert delays == sorted(delays), delays  # the backoff grows
    # The new server's ids are a new epoch: the client was told to reload.
    assert page.evaluate("() => window.resets") == 1


def test_reconnect_resumes_from_last_event_id(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["resume"], "reconnectDelay": 1500})
    server.publish("resume", "before")
    wait_events(page, "c", 1)
    client_id = page.evaluate("() => clients.c.clientId")
    server.post("/test/disconnect", {"client_id": client_id})
    wait_js(page, "() => clients.c.state === 'connecting'")
    server.publish("resume", count=5)  # while the client waits to reconnect
    events = wait_events(page, "c", 6)
    assert events[0]["data"] == "before"
    assert numbered(events[1:]) == [(i, 0) for i in range(5)]
    assert page.evaluate("() => clients.c.clientId") == client_id  # the token kept the id
    assert rec(page, "c")["states"] == ["connecting", "connected", "connecting", "connected"]


def test_max_retries_spent_is_an_error_then_connect_recovers(page: t.Any, own_server: Server) -> None:
    open_page(page, own_server.url("/page"))
    connect(page, "c", {"topics": ["t"], "reconnectDelay": 100, "maxRetries": 2})
    own_server.stop()
    wait_js(page, "() => clients.c.state === 'error'")
    r = rec(page, "c")
    assert r["states"] == ["connecting", "connected", "connecting", "error"]
    assert [e["fatal"] for e in r["errors"]] == [False, False, True]
    assert "gave up after 2 retries" in r["errors"][-1]["message"]

    new = Server("werkzeug", app=APP, config=CONFIG, env=ENV, port=own_server.port).start()
    try:
        page.evaluate("() => clients.c.connect()")
        wait_js(page, "() => clients.c.state === 'connected'")
        new.publish("t", "back")
        assert wait_events(page, "c", 1)[0]["data"] == "back"
    finally:
        new.stop()


def test_forbidden_topic_stops_and_reports(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    page.evaluate(
        "() => { window.clients = { c: track(sse.createSSEClient({ topics: ['secret-x'] }), 'c') }; }"
    )
    page.evaluate("() => clients.c.connect()")
    wait_js(page, "() => clients.c.state === 'error'")
    r = rec(page, "c")
    assert r["states"] == ["connecting", "error"]
    assert len(r["errors"]) == 1
    assert r["errors"][0]["status"] == 403 and r["errors"][0]["fatal"]
    assert "not authorised" in r["errors"][0]["message"]
    # It stays stopped: no retry behind the page's back.
    page.wait_for_timeout(1500)
    assert rec(page, "c")["states"] == ["connecting", "error"]


def test_frozen_server_is_detected_by_the_watchdog(page: t.Any, own_server: Server) -> None:
    open_page(page, own_server.url("/page"))
    connect(page, "c", {"topics": ["f"], "reconnectDelay": 100, "maxRetries": 0})
    own_server.publish("f", "before")
    wait_events(page, "c", 1)
    own_server.signal(signal.SIGSTOP)  # the socket stays open; nothing is sent
    try:
        wait_js(page, "() => rec.c.errors.some((e) => e.message.startsWith('no event from the server'))")
    finally:
        own_server.signal(signal.SIGCONT)
    wait_js(page, "() => rec.c.states.filter((s) => s === 'connected').length === 2")
    own_server.publish("f", "after")
    events = wait_events(page, "c", 2)
    assert [e["data"] for e in events] == ["before", "after"]


def test_unsubscribe_while_the_stream_is_down_keeps_the_topic_out_of_the_replay(
    page: t.Any, server: Server
) -> None:
    outage = Outage(server.port)
    try:
        open_page(page, outage.url("/page"))
        config = {
            "topics": ["off-a", "off-rm"],
            "reconnectDelay": 200,
            "maxReconnectDelay": 400,
            "maxRetries": 0,
        }
        connect(page, "c", config)
        server.publish("off-a", "a-before")
        wait_events(page, "c", 1)
        client_id = page.evaluate("() => clients.c.clientId")
        outage.cut()
        wait_js(page, "() => clients.c.state === 'connecting'")
        # The server noticed and remembers the client's topics for its return.
        wait_for(
            lambda: client_id in server.state()["sessions"], 10, what="the server to remember the client"
        )
        assert page.evaluate("() => clients.c.unsubscribe('off-rm')") == ["off-a"]
        server.publish("off-rm", "rm-away")
        server.publish("off-a", "a-away")
        outage.restore()
        wait_js(page, "() => rec.c.states.filter((s) => s === 'connected').length === 2")
        server.publish("off-rm", "rm-after")
        server.publish("off-a", "a-after")  # in order: once this is in, rm-after would be too
        events = wait_events(page, "c", 3)
    finally:
        outage.close()
    assert [e["data"] for e in events] == ["a-before", "a-away", "a-after"]
    assert page.evaluate("() => [clients.c.clientId, clients.c.topics]") == [client_id, ["off-a"]]


def test_unsubscribe_during_a_reconnect_attempt_keeps_the_topic_out_of_the_replay(
    page: t.Any, server: Server
) -> None:
    outage = Outage(server.port)
    try:
        open_page(page, outage.url("/page"))
        config = {"topics": ["fly-a", "fly-rm"], "reconnectDelay": 200, "maxReconnectDelay": 400}
        connect(page, "c", {**config, "maxRetries": 0})
        client_id = page.evaluate("() => clients.c.clientId")
        outage.cut()
        wait_for(
            lambda: client_id in server.state()["sessions"], 10, what="the server to remember the client"
        )
        outage.stall()  # the next attempt stays on its way
        wait_js(page, "() => clients.c._source !== null")
        assert page.evaluate("() => clients.c.unsubscribe('fly-rm')") == ["fly-a"]
        # The attempt asking for the old topics is abandoned before it arrives.
        wait_for(lambda: outage.lost >= 1, 10, what="the abandoned attempt to close")
        server.publish("fly-rm", "rm-away")
        server.publish("fly-a", "a-away")
        outage.restore()
        wait_js(page, "() => rec.c.states.filter((s) => s === 'connected').length === 2")
        server.publish("fly-rm", "rm-after")
        server.publish("fly-a", "a-after")
        events = wait_events(page, "c", 2)
    finally:
        outage.close()
    assert [e["data"] for e in events] == ["a-away", "a-after"]


def test_key_rotation_makes_a_new_client_that_keeps_receiving(page: t.Any, own_server: Server) -> None:
    open_page(page, own_server.url("/page"))
    connect(page, "c", {"topics": ["rot"], "reconnectDelay": 150, "maxRetries": 0}, types=["reset"])
    own_server.publish("rot", "before")
    wait_events(page, "c", 1)
    old = page.evaluate("() => [clients.c.clientId, clients.c._token]")
    own_server.stop()
    wait_js(page, "() => clients.c.state === 'connecting'")
    # A topic change while the stream is down is applied by the new client.
    assert page.evaluate("() => clients.c.subscribe('rot-late')") == ["rot", "rot-late"]
    new = Server(
        "werkzeug",
        app=APP,
        config=CONFIG,
        env={**ENV, "SSE_TEST_SECRET_KEY": "rotated"},
        port=own_server.port,
    )
    new.start()
    try:
        wait_js(page, "() => rec.c.states.filter((s) => s === 'connected').length === 2")
        new.publish("rot", "after")
        new.publish("rot-late", "late")
        events = wait_events(page, "c", 3)
        now = page.evaluate("() => [clients.c.clientId, clients.c._token]")
        # Its topic changes go with the new token.
        assert page.evaluate("() => clients.c.subscribe('rot-more')") == ["rot", "rot-late", "rot-more"]
        new.publish("rot-more", "more")
        events = wait_events(page, "c", 4)
        r = rec(page, "c")
    finally:
        new.stop()
    assert [e["data"] for e in events] == ["before", "after", "late", "more"]
    assert now[0] != old[0] and now[1] != old[1]
    assert len(r["named"]["reset"]) == 1
    assert not any(e["fatal"] for e in r["errors"])
    assert r["states"][-1] == "connected"


def test_after_key_rotation_a_forbidden_topic_still_stops_the_client(page: t.Any, own_server: Server) -> None:
    open_page(page, own_server.url("/page"))
    connect(page, "c", {"topics": ["rot-x"], "reconnectDelay": 150, "maxRetries": 0})
    new = restart(own_server, SSE_TEST_SECRET_KEY="rotated", SSE_TEST_AUTHZ="rot-x")
    try:
        wait_js(page, "() => clients.c.state === 'error'")
        error = rec(page, "c")["errors"][-1]
    finally:
        new.stop()
    assert error["status"] == 403 and error["fatal"]
    assert "not authorised" in error["message"]


def test_a_topic_request_refused_for_an_old_token_is_retried_with_the_new_one(
    page: t.Any, server: Server
) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["tok-a"]})
    # The request leaves with a token the server refuses, and a `connected`
    # with a new token arrives while it is on its way (as after a key rotation).
    page.evaluate(
        """() => {
            const client = clients.c;
            const token = client._token;
            client._token = "stale." + token;
            const fetch = window.fetch;
            window.fetch = (url, init) => {
                client._token = token;
                window.fetch = fetch;
                return fetch(url, init);
            };
        }"""
    )
    assert page.evaluate("() => clients.c.subscribe('tok-b')") == ["tok-a", "tok-b"]
    server.publish("tok-b", "b")
    assert [e["data"] for e in wait_events(page, "c", 1)] == ["b"]


def test_revoked_topics_leave_the_client_and_its_reconnects(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["rv-keep", "rv-gone"], "reconnectDelay": 150}, types=["revoked"])
    client_id = page.evaluate("() => clients.c.clientId")
    server.post("/test/revoke", {"topic": "rv-gone", "client_id": client_id})
    wait_js(page, "() => rec.c.named.revoked.length === 1")
    assert rec(page, "c")["named"]["revoked"] == [{"topics": ["rv-gone"]}]
    assert page.evaluate("() => clients.c.topics") == ["rv-keep"]
    # A reconnect asks for what is left, not for the revoked topic.
    server.post("/test/disconnect", {"client_id": client_id})
    wait_js(page, "() => rec.c.states.filter((s) => s === 'connected').length === 2")
    server.publish("rv-gone", "no")
    server.publish("rv-keep", "yes")
    events = wait_events(page, "c", 1)
    assert [(e["type"], e["data"]) for e in events] == [("message", "yes")]  # "*" never saw `revoked`


# -- topics, managers, the embedded cursor ------------------------------------------


def test_subscribe_and_unsubscribe_change_what_arrives(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {"topics": ["base"]})
    server.publish("extra", "not yet")
    now = page.evaluate("() => clients.c.subscribe('extra', 'other')")
    assert now == ["base", "extra", "other"]
    server.publish("extra", "in")
    wait_events(page, "c", 1)
    assert page.evaluate("() => clients.c.unsubscribe('extra')") == ["base", "other"]
    server.publish("extra", "out")
    server.publish("base", "marker")
    events = wait_events(page, "c", 2)
    assert [e["data"] for e in events] == ["in", "marker"]
    assert page.evaluate("() => clients.c.topics") == ["base", "other"]


def test_topic_changes_made_before_connecting_apply_on_connect(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    page.evaluate(
        """async () => {
            const client = track(sse.createSSEClient({ topics: ["early", "dropped"] }), "c");
            window.clients = { c: client };
            await client.subscribe("late");
            await client.unsubscribe("dropped");
            client.connect();
        }"""
    )
    wait_js(page, "() => clients.c.state === 'connected'")
    assert page.evaluate("() => clients.c.topics") == ["early", "late"]
    for topic in ("dropped", "early", "late"):
        server.publish(topic, topic)
    assert [e["data"] for e in wait_events(page, "c", 2)] == ["early", "late"]


def test_subscribe_to_a_forbidden_topic_rejects(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    connect(page, "c", {})
    error = page.evaluate(
        "() => clients.c.subscribe('secret-y').then(() => null, (e) => [e.name, e.status, e.message])"
    )
    assert error[:2] == ["SSERequestError", 403]


def test_two_named_clients_from_one_manager(page: t.Any, server: Server) -> None:
    open_page(page, server.url("/page"))
    page.evaluate(
        """() => {
            const m = sse.getSSEManager();
            m.setDefaultConfig({ reconnectDelay: 200 });
            track(m.client("one", { topics: ["t-one"] }), "one");
            track(m.client("two", { topics: ["t-two"] }), "two");
            m.connect("one");
            sse.connectSSE("two");
        }"""
    )
    wait_js(page, "() => ['one', 'two'].every((n) => sse.getSSEManager().client(n).state === 'connected')")
    assert page.evaluate("() => sse.getSSEManager().getClientNames()") == ["one", "two"]
    assert page.evaluate("() => sse.getSSEManager().client('two').config.reconnectDelay") == 200
    server.publish("t-one", "for one")
    server.publish("t-two", "for two")
    assert [e["data"] for e in wait_events(page, "one", 1)] == ["for one"]
    assert [e["data"] for e in wait_events(page, "two", 1)] == ["for two"]
    names = page.evaluate(
        """() => {
            const m = sse.getSSEManager();
            const removed = m.remove("one");
            m.disconnectAll();
            return [removed, m.has("one"), m.getClientNames(), m.client("two").state];
        }"""
    )
    assert names == [True, False, ["two"], "disconnected"]


def test_page_embedding_last_event_id_gets_events_published_before_connect(
    page: t.Any, server: Server
) -> None:
    server.publish("gap", "old")  # the history has an id the page can embed
    open_page(page, server.url("/page"))
    embedded = page.evaluate("() => window.LAST_EVENT_ID")
    assert embedded == server.get_json("/test/last-event-id")["id"]
    server.publish("gap", count=3)  # between render and connect
    page.evaluate(
        """() => {
            const client = sse.createSSEClient({ topics: ["gap"], lastEventId: LAST_EVENT_ID });
            window.clients = { c: track(client, "c").connect() };
        }"""
    )
    events = wait_events(page, "c", 3)
    assert numbered(events) == [(i, 0) for i in range(3)]


# -- serving the client ---------------------------------------------------------------


def test_client_js_is_served_with_a_validator(server: Server) -> None:
    import urllib.request

    with urllib.request.urlopen(server.url("/_sse/client.js")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        etag = resp.headers["ETag"]
        assert etag and "max-age" in resp.headers["Cache-Control"]
        assert b"export function connectSSE" in resp.read()
    status, _ = http_request("GET", server.url("/_sse/client.js"), headers={"If-None-Match": etag})
    assert status == 304
    status, body = http_request("GET", server.url("/_sse/client.d.ts"))
    assert status == 200 and b"export declare class SSEClient" in body


def test_shared_worker_is_served_like_the_client(server: Server) -> None:
    import urllib.request

    with urllib.request.urlopen(server.url("/_sse/shared-worker.js")) as resp:
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert resp.headers["Cache-Control"] == "public, max-age=3600, must-revalidate"
        etag = resp.headers["ETag"]
        assert b'from "./client.js"' in resp.read()
    status, _ = http_request("GET", server.url("/_sse/shared-worker.js"), headers={"If-None-Match": etag})
    assert status == 304


def test_type_declarations_check_with_tsc() -> None:
    if shutil.which("node") is None or shutil.which("npx") is None:
        pytest.skip("Node.js is not installed (apt-get install nodejs npm)")
    ts_dir = ROOT / "tests" / "ts"
    if not (ts_dir / "node_modules" / "typescript").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=ts_dir, check=True, timeout=300
        )
    result = subprocess.run(
        ["npx", "--no-install", "tsc", "--noEmit", "-p", "."],
        cwd=ts_dir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_UPDATE_NOTIFIER": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_typescript_recipe_in_the_declarations_compiles() -> None:
    """The setup recipe at the top of client.d.ts, used as written, type-checks
    an import of "/_sse/client.js"."""
    tsc = ROOT / "tests" / "ts" / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        test_type_declarations_check_with_tsc()  # installs TypeScript (or skips)
    declarations = ROOT / "flask_sse_broker" / "static" / "client.d.ts"
    header = declarations.read_text().split("*/", 1)[0]
    found = re.search(r"BEGIN tsconfig.json\n(.*?)\n \* END tsconfig.json", header, re.S)
    assert found, "no recipe in client.d.ts"
    recipe = json.loads("\n".join(line.removeprefix(" *") for line in found.group(1).splitlines()))
    [(module, [target])] = recipe["compilerOptions"]["paths"].items()
    assert module == "/_sse/client.js"
    with tempfile.TemporaryDirectory(dir=ROOT / "tests" / "ts") as tmp:
        project = Path(tmp)
        (project / target).parent.mkdir(parents=True)
        (project / target).write_text(declarations.read_text())
        options = {"strict": True, "noEmit": True, "target": "ES2020", "module": "ES2020", "types": []}
        options.update({"moduleResolution": "bundler", "lib": ["ES2020", "DOM"]})
        options.update(recipe["compilerOptions"])
        (project / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": ["app.ts"]}))
        (project / "app.ts").write_text(
            'import { connectSSE, type SSEMessage } from "/_sse/client.js";\n'
            'const sse = connectSSE("main", { topics: ["orders"], shared: true });\n'
            'sse.on("connected", (m) => console.log(m.data.clientId));\n'
            'sse.on("*", (m: SSEMessage) => console.log(m.type));\n'
        )
        result = subprocess.run(
            [str(tsc), "--noEmit", "-p", "."], cwd=project, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stdout + result.stderr
