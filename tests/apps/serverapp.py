"""The app every server model serves in the tests.

Configured through the environment so that one module serves the Werkzeug
server, gunicorn gthread and gunicorn gevent alike:

- ``SSE_TEST_CONFIG``: JSON of ``SSE_*`` Flask config keys.
- ``SSE_TEST_AUTHZ``: a topic prefix that ``authorize`` refuses.
- ``SSE_TEST_IDENTIFY``: when set, ``identify()`` returns the ``X-User`` header.
"""

from __future__ import annotations

import json
import os
import threading

from flask import Flask, jsonify, request

import flask_sse_broker
from flask_sse_broker import SSEBroker, SSEConfig, SSEEvent, create_blueprint


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test-secret"
    app.config.update(json.loads(os.environ.get("SSE_TEST_CONFIG", "{}")))
    config = SSEConfig(stats=True)
    refused = os.environ.get("SSE_TEST_AUTHZ")
    if refused:
        config.authorize = lambda topic: not topic.startswith(refused)
    if os.environ.get("SSE_TEST_IDENTIFY"):
        config.identify = lambda: request.headers.get("X-User")
    broker = SSEBroker(config)
    app.register_blueprint(create_blueprint(broker))

    def event_from(body: dict) -> SSEEvent:
        return SSEEvent(body.get("data"), event=body.get("event"))

    def publish(body: dict) -> int:
        kind = body.get("kind", "topic")
        event = event_from(body)
        if kind == "topic":
            return broker.broadcast_to_topic(body["topic"], event)
        if kind == "client":
            return broker.send(body["client_id"], event)
        return broker.broadcast(event)

    @app.post("/test/publish")
    def publish_view():
        """Publish from a request handler; ``count`` publishes data 0..count-1."""
        body = request.get_json()
        count = body.get("count")
        if count is None:
            return jsonify(queued=publish(body), pid=os.getpid())
        queued = 0
        for i in range(count):
            data = {"n": i, "p": body.get("publisher", 0), "pad": "x" * body.get("pad", 0)}
            queued += publish({**body, "data": data})
        return jsonify(queued=queued)

    @app.post("/test/publish-thread")
    def publish_thread():
        """Publish from a plain background thread (a greenlet under gevent)."""
        body = request.get_json()
        done = threading.Event()
        result = {}

        def run():
            result["queued"] = publish(body)
            done.set()

        threading.Thread(target=run).start()
        done.wait(10)
        return jsonify(result)

    @app.post("/test/publish-greenlet")
    def publish_greenlet():
        """Publish from a greenlet of its own (gevent only)."""
        import gevent

        body = request.get_json()
        return jsonify(queued=gevent.spawn(publish, body).get(timeout=10))

    @app.post("/test/subscribe")
    def server_subscribe():
        body = request.get_json()
        return jsonify(topics=sorted(broker.subscribe(body["client_id"], *body["topics"])))

    @app.post("/test/disconnect")
    def server_disconnect():
        return jsonify(closed=broker.disconnect(request.get_json()["client_id"]))

    @app.get("/test/state")
    def state():
        """The broker's internals, to prove state is released, not just counted."""
        state = broker._debug_state()
        state["sessions"] = sorted(state["sessions"])
        return jsonify(pid=os.getpid(), **state)

    @app.get("/test/last-event-id")
    def last_event_id():
        return jsonify(id=broker.last_event_id())

    @app.get("/test/package")
    def package():
        """Where this server imported the package from (CI asserts the installed wheel)."""
        return jsonify(file=flask_sse_broker.__file__)

    return app


if __name__ == "__main__":
    import sys

    create_app().run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True, use_reloader=False)
