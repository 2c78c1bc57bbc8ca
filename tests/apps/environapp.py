"""The test app, plus a look at a stream's WSGI environ after it started
(``SSEConfig.trim_environ``): ``GET /test/environ`` answers the keys of the
last ``/connect`` request's environ as they are now, and the ``X-Probe``
header each ``teardown_request`` of a ``/connect`` saw."""

from __future__ import annotations

import typing as t

from flask import Flask, jsonify, request

from .serverapp import create_app as create_server_app


def create_app() -> Flask:
    app = create_server_app()
    last: list[dict[str, t.Any]] = []
    probes: list[str | None] = []

    @app.before_request
    def keep_environ() -> None:
        if request.path.endswith("/connect"):
            last[:] = [request.environ]

    @app.teardown_request
    def probe(exc: BaseException | None) -> None:
        if request.path.endswith("/connect"):
            probes.append(request.headers.get("X-Probe"))

    @app.get("/test/environ")
    def environ_now() -> t.Any:
        environ = last[0] if last else {}
        return jsonify(
            keys=sorted(environ),
            query=environ.get("QUERY_STRING"),
            agent=environ.get("HTTP_USER_AGENT"),
            probes=probes,
        )

    return app
