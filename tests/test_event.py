"""The wire format: SSEEvent encoding, checked against a spec-correct decoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_sse_broker import SSEEvent
from flask_sse_broker._decoder import ServerSentEvent, iter_events
from flask_sse_broker._wire import HEARTBEAT, parse_event_id


def decode(stream: bytes) -> list[ServerSentEvent]:
    return list(iter_events([stream]))


def decode_bytewise(stream: bytes) -> list[ServerSentEvent]:
    """Feed one byte at a time, so every line break straddles a chunk edge."""
    return list(iter_events(stream[i : i + 1] for i in range(len(stream))))


# Arbitrary unicode, including lone CRs, LFs, U+2028, NUL and emoji.
any_text = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(["\r", "\n", "\r\n", "\u2028", "\u2029", "\0", "\ufeff", "😀", ":", " "]),
    )
).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(data=json_values, name=any_text.filter(lambda s: "\r" not in s and "\n" not in s and s.isprintable()))
def test_json_data_round_trips_exactly(data: object, name: str) -> None:
    event = SSEEvent(data, event=name or None)
    decoded = decode(event.encode("1-1"))
    assert len(decoded) == 1
    assert json.loads(decoded[0].data) == data
    assert decoded[0].event == (name or "message")
    assert decoded[0].id == "1-1"


@settings(max_examples=300)
@given(text=any_text)
def test_raw_text_round_trips_with_line_breaks_normalised_to_lf(text: str) -> None:
    try:
        event = SSEEvent(text, raw=True)
    except ValueError:
        # Only text that UTF-8 cannot carry (a lone surrogate) is refused.
        with pytest.raises(UnicodeEncodeError):
            text.encode("utf-8")
        return
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    (decoded,) = decode(event.encode())
    assert decoded.data == expected


@settings(max_examples=200)
@given(payloads=st.lists(any_text, min_size=1, max_size=5))
def test_no_payload_can_start_a_second_event(payloads: list[str]) -> None:
    stream = b""
    for i, text in enumerate(payloads):
        try:
            stream += SSEEvent(text, raw=True, event="e").encode(f"1-{i}")
        except ValueError:
            stream += SSEEvent(text, event="e").encode(f"1-{i}")
    assert [e.id for e in decode(stream)] == [f"1-{i}" for i in range(len(payloads))]
    assert [e.id for e in decode_bytewise(stream)] == [f"1-{i}" for i in range(len(payloads))]


def test_json_keeps_strings_and_numbers_distinct() -> None:
    assert decode(SSEEvent("42").encode())[0].data == '"42"'
    assert decode(SSEEvent(42).encode())[0].data == "42"


def test_multiline_raw_data_gets_one_data_line_per_line() -> None:
    assert SSEEvent("a\r\nb\rc\nd", raw=True).encode() == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_raw_bytes_must_be_utf8() -> None:
    assert decode(SSEEvent("é".encode(), raw=True).encode())[0].data == "é"
    with pytest.raises(ValueError, match="UTF-8"):
        SSEEvent(b"\xff", raw=True)


def test_raw_refuses_non_text() -> None:
    with pytest.raises(TypeError):
        SSEEvent({"a": 1}, raw=True)


def test_lone_surrogate_in_json_round_trips() -> None:
    (decoded,) = decode(SSEEvent({"s": "\ud800"}).encode())
    assert json.loads(decoded.data) == {"s": "\ud800"}


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\r\nb", "\n"])
def test_event_name_with_line_break_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        SSEEvent(1, event=name)


def test_event_name_must_be_encodable() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        SSEEvent(1, event="\ud800")


@pytest.mark.parametrize("value", ["1\n2", "1\r2", "1\x002"])
def test_id_with_line_break_or_nul_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        SSEEvent(1, id=value)


@pytest.mark.parametrize("retry", [-1, 1.5, "10", True])
def test_retry_must_be_a_non_negative_int(retry: object) -> None:
    with pytest.raises(ValueError):
        SSEEvent(1, retry=retry)  # type: ignore[arg-type]


def test_retry_is_encoded() -> None:
    (decoded,) = decode(SSEEvent(1, retry=2500).encode())
    assert decoded.retry == 2500


def test_unserialisable_data_fails_when_the_event_is_made() -> None:
    with pytest.raises(TypeError):
        SSEEvent(object())
    with pytest.raises(ValueError):
        SSEEvent(float("nan"))


def test_heartbeat_is_a_named_event_with_data_and_no_id() -> None:
    (decoded,) = decode(HEARTBEAT)
    assert decoded.event == "heartbeat"
    assert decoded.data
    assert decoded.id == ""


def test_event_ids_parse_into_comparable_pairs() -> None:
    assert parse_event_id("17-3") == (17, 3)
    assert parse_event_id("17-3") < parse_event_id("17-10")  # type: ignore[operator]
    for bad in ["", "17", "a-1", "1-2-3", "-1-2", "1 -2", "1-2\n"]:
        assert parse_event_id(bad) is None
