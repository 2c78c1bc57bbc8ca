"""The backend contract of ``backends/base.py``, seen from a backend written
only from it (``tests/backends/recording.py``): what the broker and the hub
call, in which order, and never under the hub's lock."""

from __future__ import annotations

import json
import typing as t

import pytest

from flask_sse_broker import SSEBroker, SSEConfig, SSEConnection
from flask_sse_broker._decoder import iter_events

from .backends.recording import RecordingBackend


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def broker(backend: RecordingBackend) -> t.Iterator[SSEBroker]:
    broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False), backend=backend)
    yield broker
    broker.shutdown(timeout=0)


def data(broker: SSEBroker, conn: SSEConnection) -> list[t.Any]:
    chunks = []
    while broker._debug_state(conn)["stream"]["queued"] or broker._debug_state(conn)["stream"]["head"]:
        chunks.append(next(conn))
    return [json.loads(e.data) for e in iter_events(chunks) if e.event == "message"]


def test_a_backend_from_the_docstrings_carries_events_and_replays(broker: SSEBroker) -> None:
    conn = broker.open_stream("c", topics=["t"])
    assert broker.broadcast_to_topic("t", 1) == 1
    assert data(broker, conn) == [1]
    cursor = broker.last_event_id()
    conn.close()
    broker.broadcast_to_topic("t", 2)
    again = broker.open_stream("c", topics=["t"], last_event_id=cursor)
    assert data(broker, again) == [2]


def test_the_lifecycle_is_bind_then_start_at_the_first_stream_then_close(
    broker: SSEBroker, backend: RecordingBackend
) -> None:
    assert backend.names() == ["bind"]
    broker.broadcast("nobody listens")  # publishing alone starts nothing
    assert "start" not in backend.names()
    broker.open_stream("c")
    broker.open_stream("d")
    assert backend.names().count("start") == 1
    broker.shutdown(timeout=0)
    assert backend.names()[-1] == "close"


def test_presence_hooks_follow_a_clients_first_and_last_connection(
    broker: SSEBroker, backend: RecordingBackend
) -> None:
    one = broker.open_stream("c", topics=["t"])
    two = broker.open_stream("c")
    one.close()
    two.close()
    hooks = [call for call in backend.calls if call.name.startswith("client_")]
    assert [(call.name, call.args) for call in hooks] == [
        ("client_opened", ("c",)),
        ("client_closed", ("c", frozenset({"t"}))),
    ]
    # The stream opened after its replay was prepared.
    assert backend.names().index("replay") < backend.names().index("client_opened")


def test_a_new_client_is_recalled_from_the_backend_only_when_unknown_here(
    broker: SSEBroker, backend: RecordingBackend
) -> None:
    broker.open_stream("c")
    broker.open_stream("c")
    assert [call.args for call in backend.calls if call.name == "recall"] == [("c",)]


def test_backplane_operations_go_through_the_backend(broker: SSEBroker, backend: RecordingBackend) -> None:
    broker.open_stream("c")
    assert broker.subscribe("c", "a", "b") == {"a", "b"}
    assert broker.unsubscribe("c", "a") == {"b"}
    assert broker.disconnect("c") == 1
    names = backend.names()
    assert names.index("subscribe") < names.index("unsubscribe") < names.index("disconnect")
    assert names[-1] == "client_closed"  # disconnect ends the client: presence hears of it


def test_no_backend_call_is_made_under_the_hubs_lock(broker: SSEBroker, backend: RecordingBackend) -> None:
    broker.config.event_buffer_size = 2
    conn = broker.open_stream("c", topics=["t"])
    for i in range(5):  # overflows: the hub ends the stream from inside a publish
        broker.broadcast_to_topic("t", i)
    assert conn.closed
    broker.open_stream("d")
    broker.shutdown(timeout=0)
    assert "client_closed" in backend.names()
    assert [call.name for call in backend.calls if call.lock_held] == []
