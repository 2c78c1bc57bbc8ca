"""Real servers of each kind: ``server`` (one per kind for the session) and
``make_server`` (a server of its own for one test)."""

from __future__ import annotations

import typing as t

import pytest

from ..support import SERVER_KINDS, Server

#: The configuration the shared servers run with: short heartbeats so dead
#: clients are found quickly, a history long enough for the replay tests.
SHARED_CONFIG = {
    "SSE_HEARTBEAT_INTERVAL": 0.5,
    "SSE_EVENT_BUFFER_SIZE": 100,
    "SSE_HISTORY_SIZE": 2000,
    "SSE_MAX_TOPICS_PER_CONNECTION": 5,
    "SSE_MAX_TOPIC_LENGTH": 50,
    "SSE_MAX_CONNECTIONS": 2000,
}


def servers_of(app: str | None = None, scope: t.Literal["session", "module"] = "session") -> t.Any:
    """A ``server`` fixture: ``app`` (``"module:factory()"``; default the test
    app) under each server model, with :data:`SHARED_CONFIG`, and
    ``authorize`` refusing topics that start with ``secret``. A test module
    assigns ``server = servers_of(APP, "module")`` to serve its own app."""

    @pytest.fixture(scope=scope, params=SERVER_KINDS)
    def server(request: pytest.FixtureRequest) -> t.Iterator[Server]:
        kwargs = {"app": app} if app is not None else {}
        srv = Server(request.param, config=SHARED_CONFIG, env={"SSE_TEST_AUTHZ": "secret"}, **kwargs)
        srv.start()
        yield srv
        srv.stop()

    return server


#: The test app under each server model, once per session.
server = servers_of()


@pytest.fixture
def make_server() -> t.Iterator[t.Callable[..., Server]]:
    """Start a server with its own configuration; stopped after the test."""
    started: list[Server] = []

    def make(kind: str, **kwargs: t.Any) -> Server:
        srv = Server(kind, **kwargs)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()
