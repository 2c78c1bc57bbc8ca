"""_wire.py alone: event ids, frames, envelopes and who they reach."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flask_sse_broker._decoder import iter_events
from flask_sse_broker._wire import (
    HEARTBEAT_FRAME,
    Audience,
    Envelope,
    Frame,
    encode_body,
    format_event_id,
    parse_event_id,
)

# Ids are Redis stream ids: two 64-bit parts (_wire._MAX_PART).
_part = st.integers(min_value=0, max_value=2**64 - 1)


@given(_part, _part)
def test_an_event_id_formats_and_parses_back_to_its_seq(first: int, second: int) -> None:
    assert parse_event_id(format_event_id((first, second))) == (first, second)


@given(st.tuples(_part, _part), st.tuples(_part, _part))
def test_ids_order_as_their_seqs(a: tuple[int, int], b: tuple[int, int]) -> None:
    parsed_a = parse_event_id(format_event_id(a))
    parsed_b = parse_event_id(format_event_id(b))
    assert parsed_a is not None and parsed_b is not None
    assert (parsed_a < parsed_b) == (a < b)


def test_an_envelope_is_framed_once_with_its_id() -> None:
    envelope = Envelope.encode((7, 3), Audience.TOPIC, "t", encode_body('"hi"', event="greeting"))
    (event,) = iter_events([envelope.frame])
    assert (event.event, event.data, event.id) == ("greeting", '"hi"', "7-3")
    assert envelope.id == "7-3"


def test_an_envelope_reaches_its_audience_only() -> None:
    to_all = Envelope.encode((1, 1), Audience.ALL, None, b"data: 1\n")
    to_topic = Envelope.encode((1, 2), Audience.TOPIC, "t", b"data: 1\n")
    to_client = Envelope.encode((1, 3), Audience.CLIENT, "c", b"data: 1\n")
    assert to_all.reaches("anyone", set())
    assert to_topic.reaches("anyone", {"t"}) and not to_topic.reaches("anyone", {"u"})
    assert to_client.reaches("c", set()) and not to_client.reaches("d", {"c"})


def test_bare_frames_have_no_seq_and_the_heartbeat_no_id() -> None:
    assert Frame(b"retry: 5\n\n").seq is None
    assert HEARTBEAT_FRAME.seq is None
    (event,) = iter_events([HEARTBEAT_FRAME.frame])
    assert (event.event, event.id) == ("heartbeat", "")


def test_audience_crosses_process_boundaries_as_plain_strings() -> None:
    assert [a.value for a in Audience] == ["all", "topic", "client"]
    assert Audience("topic") is Audience.TOPIC
