"""The app of the pattern and revoke tests: :mod:`tests.apps.serverapp` plus
routes to revoke, to read what ``authorize()`` was asked and to read sessions.

Served like the other test app, so every server model and the Redis backend
run it (``SSE_TEST_CONFIG`` and ``SSE_TEST_AUTHZ`` as there).
"""

from __future__ import annotations

import threading

from flask import Flask, jsonify, request

from flask_sse_broker import SSEBroker

from .serverapp import create_app as create_base_app


def create_app() -> Flask:
    app = create_base_app()
    broker: SSEBroker = app.extensions["sse"]
    asked: list[str] = []
    asked_lock = threading.Lock()
    refuse = broker.config.authorize

    def authorize(topic: str) -> bool:
        with asked_lock:
            asked.append(topic)
        return refuse(topic) if refuse is not None else True

    broker.config.authorize = authorize

    @app.post("/test/revoke")
    def revoke():  # type: ignore[no-untyped-def]
        body = request.get_json()
        return jsonify(affected=broker.revoke(body["topic"], body.get("client_id")))

    @app.get("/test/authorized")
    def authorized():  # type: ignore[no-untyped-def]
        with asked_lock:
            return jsonify(topics=list(asked))

    @app.get("/test/clients-by-topic")
    def clients_by_topic():  # type: ignore[no-untyped-def]
        return jsonify(clients=broker.clients_by_topic(request.args["topic"]))

    @app.get("/test/session/<client_id>")
    def session(client_id: str):  # type: ignore[no-untyped-def]
        return jsonify(topics=broker._debug_state()["sessions"].get(client_id))

    return app
