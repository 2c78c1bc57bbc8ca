"""The heartbeat pass in slices (issue 13): between slices it hands the hub
(and the lock) back, every idle stream of every slice still gets its
heartbeat, and a closed peer in a later slice is still found."""

from __future__ import annotations

import socket
import typing as t

import pytest

from flask_sse_broker import SSEBroker, SSEConfig, _heartbeat
from flask_sse_broker._wire import HEARTBEAT_FRAME


@pytest.fixture()
def broker() -> t.Iterator[SSEBroker]:
    b = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False))
    yield b
    b.shutdown(timeout=1)


def test_a_pass_pauses_between_slices_and_beats_every_idle_stream(
    broker: SSEBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_heartbeat, "SLICE", 2)
    conns = [broker.open_stream(topics=[f"t{i}"]) for i in range(5)]
    for conn in conns:
        next(conn)  # the head
    busy = conns[1]
    broker.broadcast_to_topic("t1", "x")
    pauses: list[float] = []

    def stopped(timeout: float) -> bool:
        pauses.append(timeout)
        return False

    assert _heartbeat.beat_in_slices(broker._hub, stopped) is False
    assert pauses == [_heartbeat.PAUSE, _heartbeat.PAUSE]  # 5 streams, slices of 2
    assert all(conn._queue == [HEARTBEAT_FRAME] for conn in conns if conn is not busy)
    assert HEARTBEAT_FRAME not in busy._queue  # it has an event to write


def test_a_closed_peer_in_a_later_slice_is_found_and_a_stop_ends_the_pass(
    broker: SSEBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_heartbeat, "SLICE", 2)
    conns = [broker.open_stream(topics=["t"]) for _ in range(4)]
    pairs = [socket.socketpair() for _ in conns]
    try:
        for conn, (ours, _) in zip(conns, pairs, strict=True):
            conn._peer = ours
        pairs[3][1].close()  # the last slice's client hangs up
        assert _heartbeat.beat_in_slices(broker._hub, lambda _: False) is False
        assert broker._hub.stats()["connections"] == 3
        assert conns[3]._released
        assert _heartbeat.beat_in_slices(broker._hub, lambda _: True) is True  # stopped after slice 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()
