"""The Flask integration: the routes of the HTTP contract, as a blueprint.

Every query parameter, header and body here comes from the network and is
treated as hostile: each is checked before it touches the broker, and a
request that fails a check leaves no state behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing as t

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory

from ._broker import SSEBroker, new_client_id
from ._process import install_sigterm_handler
from ._socket import limit_write_stall
from .exceptions import BackendError, BrokerUnavailable, ClientNotFound, SSEError
from .tokens import load_token, make_token

#: Largest JSON body accepted by ``/subscribe`` and ``/unsubscribe``.
MAX_BODY_BYTES = 64 * 1024
#: Where the browser client lives.
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")

_STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


class RequestError(Exception):
    """A request the routes refuse, answered as JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        resp = jsonify(error=self.message, status=self.status)
        resp.status_code = self.status
        resp.headers.update(self.headers)
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

    @bp.errorhandler(RequestError)
    def request_error(error: RequestError) -> Response:
        return error.response()

    @bp.errorhandler(BackendError)
    def backend_error(error: BackendError) -> Response:
        # The backend (Redis) is unreachable: the request may succeed later.
        return RequestError(
            503, f"the event backend is unavailable: {error}", {"Retry-After": "5"}
        ).response()

    @bp.get("/connect")
    def connect() -> Response:
        if broker.closing:
            raise RequestError(503, "the server is shutting down", {"Retry-After": "5"})
        topics = _query_topics()
        last_event_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId") or None
        client_id = _client_id_for(request.args.get("token")) or new_client_id()
        _authorize(topics)
        try:
            conn = broker.open_stream(
                client_id,
                topics=topics,
                last_event_id=last_event_id,
                metadata={"remote_addr": request.remote_addr},
                token=make_token(client_id),
            )
        except BrokerUnavailable as e:
            raise RequestError(503, e.reason, {"Retry-After": str(e.retry_after)}) from None
        except BackendError:
            raise
        except (SSEError, ValueError, TypeError) as e:
            raise RequestError(400, str(e)) from None
        conn._peer = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
        limit_write_stall(conn._peer, broker.config.write_timeout)
        return Response(
            conn,
            status=200,
            mimetype="text/event-stream",
            headers=_STREAM_HEADERS,
            direct_passthrough=True,
        )

    def change_topics(subscribe: bool) -> Response:
        token, topics = _topics_body()
        try:
            topic_set = broker.validate_topics(topics)
        except (SSEError, ValueError, TypeError) as e:
            raise RequestError(400, str(e)) from None
        client_id = t.cast(str, _client_id_for(token))
        _authorize(topic_set)
        if not broker.is_connected(client_id):
            raise RequestError(404, "the client is not connected")
        try:
            if subscribe:
                now = broker.subscribe(client_id, *topic_set)
            else:
                now = broker.unsubscribe(client_id, *topic_set)
        except ClientNotFound:
            raise RequestError(404, "the client is not connected") from None
        except BackendError:
            raise
        except (SSEError, ValueError) as e:
            raise RequestError(400, str(e)) from None
        return jsonify(topics=sorted(now))

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

    @bp.get("/client.js")
    def client_js() -> Response:
        return _static("client.js", "text/javascript")

    @bp.get("/client.d.ts")
    def client_dts() -> Response:
        return _static("client.d.ts", "application/typescript")

    def _client_id_for(token: str | None) -> str | None:
        """The client id a request acts as: the token's (which ``identify``
        must agree with), else the identified user's, else ``None``."""
        identified = _identify()
        if token is None:
            return identified
        client_id = load_token(token)
        if client_id is None:
            raise RequestError(403, "invalid token")
        if identified is not None and identified != client_id:
            raise RequestError(403, "the token belongs to another client")
        return client_id

    def _identify() -> str | None:
        identify = broker.config.identify
        if identify is None:
            return None
        client_id = identify()
        return None if client_id is None else str(client_id)

    def _authorize(topics: t.Iterable[str]) -> None:
        authorize = broker.config.authorize
        if authorize is None:
            return
        for topic in topics:
            if not authorize(topic):
                raise RequestError(403, f"not authorised for topic {topic[:80]!r}")

    def _query_topics() -> frozenset[str]:
        names = [name.strip() for value in request.args.getlist("topics") for name in value.split(",")]
        try:
            return broker.validate_topics(name for name in names if name)
        except (SSEError, ValueError) as e:
            raise RequestError(400, str(e)) from None

    from . import cli

    cli.register(bp, broker)
    return bp


def _topics_body() -> tuple[str, list[t.Any]]:
    """Parse ``{"token": ..., "topics": [...]}``: 415, 413 or 400 on failure."""
    if request.mimetype != "application/json":
        raise RequestError(415, "the body must be application/json")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise RequestError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, 'the body must be a JSON object {"token": ..., "topics": [...]}')
    token = body.get("token")
    topics = body.get("topics")
    if not isinstance(token, str):
        raise RequestError(400, '"token" must be a string')
    if not isinstance(topics, list):
        raise RequestError(400, '"topics" must be a list of strings')
    return token, topics


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
