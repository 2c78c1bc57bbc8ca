"""The Flask integration: the routes of the HTTP contract, as a blueprint, and
the module's default broker with its ready blueprint.

Routes only: what a request carries is read and checked in ``_requests.py``,
and every refusal is an :exc:`SSEError` carrying its status, answered by one
error handler as JSON ``{"error": message, "status": code}``.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from . import _publish, _requests
from ._broker import SSEBroker
from ._process import install_sigterm_handler
from ._requests import RequestError
from ._response import StreamResponse
from ._socket import limit_write_stall
from ._wire import new_client_id
from .exceptions import BrokerUnavailable, ClientNotFound, SSEError
from .tokens import make_token

__all__ = ["broker", "create_blueprint", "current_broker", "setup_sse", "sse_bp"]

#: Where the browser client lives.
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")

_STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def _error_response(error: SSEError) -> Response:
    """``{"error": message, "status": code}`` with the error's status, and
    ``Retry-After`` when it says when to retry."""
    resp = jsonify(error=str(error), status=error.status)
    resp.status_code = error.status
    if error.retry_after is not None:
        resp.headers["Retry-After"] = str(error.retry_after)
    return resp


def create_blueprint(
    broker: SSEBroker, name: str = "sse", url_prefix: str = "/_sse", import_name: str = __name__
) -> Blueprint:
    """Make a blueprint serving ``broker`` at ``url_prefix``.

    Registering it reads ``SSE_*`` keys from ``app.config`` into the broker's
    configuration, installs the SIGTERM handler that ends streams promptly, and
    puts the broker in ``app.extensions["sse"]``.
    """
    bp = Blueprint(name, import_name, url_prefix=url_prefix, cli_group="sse")
    bp.record_once(lambda state: _on_register(t.cast(Flask, state.app), broker))
    bp.record(lambda state: _prefixes(t.cast(Flask, state.app)).add(state.url_prefix or ""))
    bp.register_error_handler(SSEError, _error_response)
    bp.register_error_handler(_publish.PublishError, _publish.PublishError.response)
    bp.before_app_request(_json_routing_errors)

    @bp.get("/connect")
    def connect() -> Response:
        if broker.closing:
            raise BrokerUnavailable("the server is shutting down", retry_after=5)
        topics = _requests.query_topics(broker)
        cursor = _requests.last_event_id()
        known, stale = _requests.stream_client_id(broker, request.args.get("token"))
        client_id = known or new_client_id()
        _requests.authorize(broker, topics)
        # A stale token makes a new client, whose cursor cannot bring back
        # what was sent to the old id: it starts afresh, told to reload.
        reset = stale and cursor is not None
        if reset:
            broker.validate_event_id(t.cast(str, cursor))
        conn = broker.open_stream(
            client_id,
            topics=topics,
            last_event_id=None if stale else cursor,
            metadata={"remote_addr": request.remote_addr},
            token=make_token(client_id),
            reset=reset,
            shared=request.args.get("shared") == "1",
            # A client without a token or an identity is new: nobody remembers it.
            new_client=known is None,
        )
        conn._peer = _requests.stream_socket()
        limit_write_stall(conn._peer, broker.config.write_timeout)
        response = StreamResponse(
            conn,
            status=200,
            mimetype="text/event-stream",
            headers=_STREAM_HEADERS,
            direct_passthrough=True,
        )
        response.trim_environ = broker.config.trim_environ
        return response

    def change_topics(subscribe: bool) -> Response:
        token, topics = _requests.topics_body()
        topic_set = broker.validate_topics(topics)
        client_id = t.cast(str, _requests.client_id_for(broker, token))
        _requests.authorize(broker, topic_set)
        # An unsubscribe also applies to a client that is away but remembered
        # (its session), so a browser can drop a topic before it reconnects
        # and the replay leaves that topic out; the broker raises
        # ClientNotFound when the id is neither connected nor remembered.
        if subscribe and not broker.is_connected(client_id):
            raise ClientNotFound(client_id)
        change = broker.subscribe if subscribe else broker.unsubscribe
        return jsonify(topics=sorted(change(client_id, topic_set)))

    @bp.post("/subscribe")
    def subscribe() -> Response:
        return change_topics(True)

    @bp.post("/unsubscribe")
    def unsubscribe() -> Response:
        return change_topics(False)

    @bp.get("/stats")
    def stats() -> Response:
        guard = broker.config.stats
        admitted = guard() if callable(guard) else guard is True
        if not admitted:
            raise RequestError(404, "not found")
        return jsonify(broker.stats())

    @bp.post("/publish")
    def publish() -> Response:
        return jsonify(ids=_publish.publish(broker))

    @bp.get("/metrics")
    def metrics() -> Response:
        guard = broker.config.metrics
        admitted = guard() if callable(guard) else guard is True
        if not admitted or broker._metrics is None:
            raise RequestError(404, "not found")
        body, content_type = broker._metrics.render(request.headers.get("Accept", ""))
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

    @bp.get("/client.js")
    def client_js() -> Response:
        return _static("client.js", "text/javascript")

    @bp.get("/shared-worker.js")
    def shared_worker_js() -> Response:
        return _static("shared-worker.js", "text/javascript")

    @bp.get("/client.d.ts")
    def client_dts() -> Response:
        return _static("client.d.ts", "application/typescript")

    from . import cli

    cli.register(bp, broker)
    return bp


def _prefixes(app: Flask) -> set[str]:
    """The URL prefixes the blueprints of this module are registered at on ``app``."""
    return app.extensions.setdefault("sse_prefixes", set())  # type: ignore[no-any-return]


def _json_routing_errors() -> Response | None:
    """Answer a 404 or 405 under an SSE prefix as the routes answer errors.

    Routing fails before any blueprint is chosen, so a blueprint's error
    handler never sees it; an app-wide error handler would replace the app's
    own. Before-request functions run before the routing error is raised, and
    this one acts only on paths under a prefix of ours.
    """
    error = request.routing_exception
    if not isinstance(error, HTTPException) or error.code not in (404, 405):
        return None
    path = request.path
    ours = (prefix for prefix in _prefixes(current_app) if prefix)
    if not any(path == prefix or path.startswith(prefix + "/") for prefix in ours):
        return None
    message = "not found" if error.code == 404 else f"method {request.method} not allowed"
    resp = _error_response(RequestError(error.code, message))
    if error.code == 405:
        resp.headers["Allow"] = ", ".join(getattr(error, "valid_methods", None) or ())
    return resp


def _static(filename: str, mimetype: str) -> Response:
    resp = send_from_directory(STATIC_DIR, filename, mimetype=mimetype, conditional=True, max_age=3600)
    resp.headers["Cache-Control"] = "public, max-age=3600, must-revalidate"
    return resp


def _on_register(app: Flask, broker: SSEBroker) -> None:
    if any(key.startswith("SSE_") for key in app.config):
        config = dataclasses.replace(broker.config)
        config.update_from_mapping(app.config)
        if config != broker.config:
            broker.configure(config)
    app.extensions["sse"] = broker
    if broker.config.handle_sigterm:
        install_sigterm_handler()


def setup_sse(app: Flask, broker: SSEBroker | None = None, prefix: str = "/_sse") -> SSEBroker:
    """Serve ``broker`` (the module's default one when ``None``) under
    ``prefix`` on ``app``; return the broker."""
    broker = broker if broker is not None else _default_broker()
    name = "sse" if prefix == "/_sse" else "sse" + prefix.replace("/", "_").rstrip("_")
    app.register_blueprint(create_blueprint(broker, name=name, url_prefix=prefix))
    return broker


def _default_broker() -> SSEBroker:
    return broker


def current_broker() -> SSEBroker:
    """The broker registered on the current app."""
    return current_app.extensions["sse"]  # type: ignore[no-any-return]


#: The module's default broker, served by :data:`sse_bp`.
broker = SSEBroker()
#: A ready blueprint for :data:`broker` at ``/_sse``:
#: ``app.register_blueprint(sse_bp)``.
sse_bp = create_blueprint(broker)
