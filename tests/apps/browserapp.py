"""The app the browser tests load: :mod:`tests.apps.serverapp` plus a test page.

Besides :mod:`tests.apps.serverapp`'s routes: ``SSE_TEST_SECRET_KEY`` replaces
the app's ``SECRET_KEY`` (a key rotation), ``GET /test/client/<id>`` counts a
client's connections, and ``POST /test/revoke`` calls
``broker.revoke(topic, client_id)``.

``GET /page`` is a page that imports the browser client from
``/_sse/client.js`` as a user's page would, embeds ``broker.last_event_id()``
as it was when the page was rendered, and offers ``window.track(client)``,
which records a client's events, states and errors for the test to read.
"""

from __future__ import annotations

import json
import os
import typing as t

from flask import Flask, current_app, jsonify, request

from tests.apps import serverapp

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><link rel="icon" href="data:,"><title>sse test page</title></head>
<body>
<script>window.LAST_EVENT_ID = %(last_event_id)s;</script>
<script type="module">
import * as sse from "/_sse/client.js";

window.sse = sse;
window.rec = {};
// Record what a client sees under rec[name]: events (wildcard and the names
// given), states, errors.
window.track = (client, name, types = []) => {
  const r = { events: [], states: [], errors: [], named: {} };
  window.rec[name] = r;
  client.on("*", (m) => r.events.push({ type: m.type, data: m.data, id: m.id }));
  for (const type of types) {
    r.named[type] = [];
    client.on(type, (m) => r.named[type].push(m.data));
  }
  client.onStateChange((state) => r.states.push(state));
  client.onError((e) => r.errors.push(e));
  return client;
};
window.ready = true;
</script>
</body>
</html>
"""


def create_app() -> Flask:
    app = serverapp.create_app()
    if os.environ.get("SSE_TEST_SECRET_KEY"):
        app.config["SECRET_KEY"] = os.environ["SSE_TEST_SECRET_KEY"]

    @app.get("/page")
    def page() -> tuple[str, int, dict[str, str]]:
        broker = current_app.extensions["sse"]
        html = PAGE % {"last_event_id": json.dumps(broker.last_event_id())}
        return html, 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/test/client/<client_id>")
    def client_state(client_id: str) -> t.Any:
        """How many connections a client holds here (0 when none)."""
        client = current_app.extensions["sse"].get_client(client_id)
        return jsonify(connections=0 if client is None else len(client.connections))

    @app.post("/test/revoke")
    def revoke() -> t.Any:
        body = request.get_json()
        broker = current_app.extensions["sse"]
        return jsonify(affected=broker.revoke(body["topic"], body.get("client_id")))

    return app
