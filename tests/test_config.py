"""SSEConfig: defaults, range checks, and ``SSE_*`` keys."""

from __future__ import annotations

import typing as t

import pytest

from flask_sse_broker import SSEConfig


def test_defaults_are_those_of_the_spec() -> None:
    config = SSEConfig()
    assert (config.event_buffer_size, config.heartbeat_interval, config.retry) == (100, 15.0, 3000)
    assert (config.history_size, config.overflow, config.max_connections) == (1000, "disconnect", None)
    assert (config.max_topics_per_connection, config.max_topic_length) == (100, 200)
    assert config.max_event_bytes == 1024 * 1024
    assert config.redis_url is None and config.stats is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_buffer_size", 0),
        ("event_buffer_size", True),
        ("event_buffer_size", 1.5),
        ("retry", -1),
        ("history_size", -1),
        ("max_topics_per_connection", 0),
        ("max_topic_length", "200"),
        ("max_event_bytes", 0),
        ("max_connections", -1),
        ("heartbeat_interval", -1),
        ("heartbeat_interval", True),
        ("write_timeout", -0.5),
        ("session_ttl", -1),
        ("overflow", "block"),
    ],
)
def test_an_out_of_range_field_is_a_value_error(field: str, value: t.Any) -> None:
    with pytest.raises(ValueError, match=field):
        SSEConfig(**{field: value})


def test_heartbeat_seconds_is_zero_when_heartbeats_are_off() -> None:
    assert SSEConfig(heartbeat_interval=None).heartbeat_seconds == 0.0
    assert SSEConfig(heartbeat_interval=0).heartbeat_seconds == 0.0
    assert SSEConfig(heartbeat_interval=2).heartbeat_seconds == 2.0


def test_update_from_mapping_reads_prefixed_upper_case_keys_only() -> None:
    config = SSEConfig()
    config.update_from_mapping(
        {"SSE_RETRY": 10, "SSE_OVERFLOW": "drop_oldest", "RETRY": 99, "sse_history_size": 1}
    )
    assert (config.retry, config.overflow, config.history_size) == (10, "drop_oldest", 1000)


def test_update_from_mapping_validates_what_it_read() -> None:
    config = SSEConfig()
    with pytest.raises(ValueError, match="event_buffer_size"):
        config.update_from_mapping({"SSE_EVENT_BUFFER_SIZE": 0})


def test_trim_environ_must_be_a_bool() -> None:
    assert SSEConfig().trim_environ is True
    with pytest.raises(ValueError, match="trim_environ must be a bool"):
        SSEConfig(trim_environ="no")  # type: ignore[arg-type]
