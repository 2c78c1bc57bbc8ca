"""The Flask integration: registration, configuration, static client, CLI."""

from __future__ import annotations

import json
import typing as t

import pytest
from flask import Flask

from flask_sse_broker import SSEBroker, SSEConfig, TooManyConnections, create_blueprint, setup_sse
from flask_sse_broker.blueprint import current_broker


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "k"
    return app


def test_setup_sse_serves_a_broker_at_a_prefix(app: Flask) -> None:
    broker = setup_sse(app, SSEBroker(SSEConfig(handle_sigterm=False)), "/events")
    with app.app_context():
        assert current_broker() is broker
    response = app.test_client().get("/events/connect?topics=a", buffered=False)
    try:
        assert response.status_code == 200
        first = next(response.response)  # type: ignore[call-overload]
        assert b"event: connected" in first
        assert broker.clients_by_topic("a")
    finally:
        response.close()
    assert broker.client_count() == 0


def test_sse_config_keys_configure_the_broker_at_registration(app: Flask) -> None:
    app.config.update(SSE_HEARTBEAT_INTERVAL=2.5, SSE_EVENT_BUFFER_SIZE=7, SSE_HANDLE_SIGTERM=False)
    broker = SSEBroker()
    app.register_blueprint(create_blueprint(broker))
    assert broker.config.heartbeat_interval == 2.5
    assert broker.config.event_buffer_size == 7


def test_invalid_sse_config_key_fails_registration(app: Flask) -> None:
    app.config["SSE_OVERFLOW"] = "explode"
    with pytest.raises(ValueError, match="overflow"):
        app.register_blueprint(create_blueprint(SSEBroker(SSEConfig(handle_sigterm=False))))


@pytest.mark.parametrize(("path", "mimetype"), [("client.js", "text/javascript"), ("client.d.ts", None)])
def test_browser_client_is_served_with_a_validator(app: Flask, path: str, mimetype: str | None) -> None:
    app.register_blueprint(create_blueprint(SSEBroker(SSEConfig(handle_sigterm=False))))
    client = app.test_client()
    first = client.get("/_sse/" + path)
    assert first.status_code == 200
    if mimetype:
        assert first.mimetype == mimetype
    assert first.headers["ETag"]
    assert "max-age" in first.headers["Cache-Control"]
    again = client.get("/_sse/" + path, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304


def test_cli_publish_refuses_without_a_shared_backend(app: Flask) -> None:
    app.register_blueprint(create_blueprint(SSEBroker(SSEConfig(handle_sigterm=False))))
    result = app.test_cli_runner().invoke(args=["sse", "publish", "orders", '{"id": 1}'])
    assert result.exit_code != 0
    assert "SSE_REDIS_URL" in result.output


def test_cli_stats_prints_json(app: Flask) -> None:
    broker = SSEBroker(SSEConfig(handle_sigterm=False, heartbeat_interval=0))
    app.register_blueprint(create_blueprint(broker))
    broker.open_stream("c", topics=["t"])
    result = app.test_cli_runner().invoke(args=["sse", "stats"])
    assert result.exit_code == 0, result.output
    stats: dict[str, t.Any] = json.loads(result.output)
    assert stats["clients"] == 1
    assert stats["cluster_clients"] == 1


def test_registering_on_another_app_reconfigures_a_running_broker(app: Flask) -> None:
    broker = SSEBroker(SSEConfig(handle_sigterm=False, heartbeat_interval=0))
    app.register_blueprint(create_blueprint(broker))
    conn = broker.open_stream("c")
    second = Flask(__name__)
    second.config.update(SSE_MAX_CONNECTIONS=1, SSE_HEARTBEAT_INTERVAL=0.05)
    second.register_blueprint(create_blueprint(broker))
    assert broker.config.max_connections == 1
    with pytest.raises(TooManyConnections, match="too many connections"):
        broker.open_stream()
    # Heartbeats turned on while running start the heartbeat thread.
    assert b"event: heartbeat" in next(conn) + next(conn)
    third = Flask(__name__)
    third.config["SSE_HISTORY_SIZE"] = 5
    with pytest.raises(RuntimeError, match="while streams are open"):
        third.register_blueprint(create_blueprint(broker))
    conn.close()
    fourth = Flask(__name__)
    fourth.config["SSE_HISTORY_SIZE"] = 5
    fourth.register_blueprint(create_blueprint(broker))
    assert broker.config.history_size == 5
    broker.shutdown(timeout=0)


def test_routing_errors_outside_the_prefix_keep_the_apps_own_handler(app: Flask) -> None:
    @app.errorhandler(404)
    def mine(error: t.Any) -> tuple[str, int]:
        return "the app's own page", 404

    setup_sse(app, SSEBroker(SSEConfig(handle_sigterm=False)), "/events")
    client = app.test_client()
    assert client.get("/elsewhere").get_data(as_text=True) == "the app's own page"
    assert client.get("/events-not-ours").get_data(as_text=True) == "the app's own page"
    answer = client.get("/events/elsewhere")
    assert (answer.status_code, answer.get_json()) == (404, {"error": "not found", "status": 404})
