"""The test app of :mod:`tests.apps.serverapp` with a ``can_publish`` hook: the
``X-Role: publisher`` header admits a publish request, anything else is 403."""

from __future__ import annotations

from flask import Flask, Request

from .serverapp import create_app as create_base_app


def create_app() -> Flask:
    app = create_base_app()

    def can_publish(request: Request) -> bool:
        return request.headers.get("X-Role") == "publisher"

    app.extensions["sse"].config.can_publish = can_publish
    return app
