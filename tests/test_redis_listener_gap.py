"""The Redis listener away for longer than the history (SPEC §4.2, §6): when
events it never delivered were trimmed meanwhile, the local streams end, so
their clients resume with their last id and are told ``reset``; when the
history still holds everything, the listener delivers it and nothing ends."""

from __future__ import annotations

import pytest

from flask_sse_broker import SSEBroker

from .redis_support import Cluster, ConnectionReader, requires_redis

pytestmark = requires_redis

HISTORY = 5
#: Redis trims ``MAXLEN ~`` streams by whole nodes of 100 entries: this many
#: events push the listener's last one out of the stream.
PAST_THE_HISTORY = 350


def away(server: SSEBroker, publisher: SSEBroker, count: int) -> None:
    """Stop ``server``'s listener, broadcast ``count`` events, start it again."""
    listener = server.backend._listener  # type: ignore[attr-defined]
    listener.stop()
    for i in range(1, count + 1):
        publisher.broadcast(i)
    listener.start()


@pytest.mark.parametrize("delivered_before", [True, False], ids=["after-an-event", "from-the-start"])
def test_a_listener_away_past_the_history_ends_the_streams_and_the_client_is_reset(
    cluster: Cluster, delivered_before: bool
) -> None:
    server, publisher = cluster.broker(history_size=HISTORY), cluster.broker(history_size=HISTORY)
    reader = ConnectionReader(server.open_stream("alice"))
    cursor = reader.connected()["lastEventId"]
    if delivered_before:
        publisher.broadcast(0)
        assert reader.next().json() == 0
        cursor = reader.last_event_id
    away(server, publisher, PAST_THE_HISTORY)
    assert reader.ended.wait(10), "the stream did not end after events it missed were trimmed"
    resumed = ConnectionReader(server.open_stream("alice", last_event_id=cursor))
    resumed.connected()
    assert resumed.next().event == "reset"


def test_a_listener_away_within_the_history_delivers_everything(cluster: Cluster) -> None:
    server, publisher = cluster.broker(history_size=HISTORY), cluster.broker(history_size=HISTORY)
    reader = ConnectionReader(server.open_stream("alice"))
    reader.connected()
    publisher.broadcast(0)
    assert reader.next().json() == 0
    away(server, publisher, HISTORY)
    assert [e.json() for e in reader.take(HISTORY)] == list(range(1, HISTORY + 1))
    publisher.broadcast("live")
    assert reader.next().json() == "live"
    assert not reader.ended.is_set()
