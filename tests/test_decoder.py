"""The decoder, :mod:`flask_sse_broker._decoder`, line by line against WHATWG HTML 9.2.6."""

from __future__ import annotations

import pytest

from flask_sse_broker._decoder import EventDecoder, LineDecoder, iter_events


def feed(decoder: EventDecoder, text: str) -> list[tuple[str, str, str]]:
    lines = LineDecoder().feed(text.encode())
    events = [decoder.decode(line) for line in lines]
    return [(e.event, e.data, e.id) for e in events if e is not None]


def test_a_blank_line_commits_the_id_of_a_frame_without_data() -> None:
    decoder = EventDecoder()
    assert feed(decoder, "id: 8\n\n") == []
    assert decoder.last_event_id == "8"


def test_an_id_is_not_committed_before_the_blank_line() -> None:
    decoder = EventDecoder("7")
    feed(decoder, "id: 8\n")
    assert decoder.last_event_id == "7"


def test_the_end_of_a_stream_discards_the_unfinished_frame() -> None:
    decoder = EventDecoder("7")
    feed(decoder, "id: 8\ndata: lost\n")
    decoder.end_of_stream()
    assert feed(decoder, "data: next\n\n") == [("message", "next", "7")]


def test_an_empty_id_clears_the_last_event_id() -> None:
    decoder = EventDecoder("7")
    assert feed(decoder, "id\ndata: a\n\n") == [("message", "a", "")]
    assert decoder.last_event_id == ""


def test_an_id_with_nul_is_ignored() -> None:
    decoder = EventDecoder("7")
    assert feed(decoder, "id: 8\x009\ndata: a\n\n") == [("message", "a", "7")]


def test_a_start_id_seeds_events_without_id() -> None:
    assert feed(EventDecoder("3-1"), "data: a\n\n") == [("message", "a", "3-1")]


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b"])
def test_a_start_id_that_no_stream_could_send_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        EventDecoder(value)


def test_retry_beside_data_sets_the_reconnection_time() -> None:
    decoder = EventDecoder()
    (event,) = [e for e in (decoder.decode(x) for x in ["retry: 2500", "data: a", ""]) if e]
    assert event.retry == 2500
    assert decoder.reconnection_time == 2500


def test_retry_is_set_before_the_frame_ends() -> None:
    decoder = EventDecoder()
    decoder.decode("retry: 10")
    assert decoder.reconnection_time == 10


@pytest.mark.parametrize("value", ["10x", "-5", "1.5", " 10", "", "\u0661\u0660"])
def test_retry_that_is_not_ascii_digits_is_ignored(value: str) -> None:
    decoder = EventDecoder()
    decoder.decode("retry: 100")
    decoder.decode(f"retry: {value}")
    assert decoder.reconnection_time == 100


def test_a_retry_only_frame_yields_a_nameless_event() -> None:
    assert [(e.event, e.retry) for e in iter_events([b"retry: 5\n\n"])] == [("", 5)]


def test_iter_events_discards_the_unfinished_frame_of_its_decoder() -> None:
    decoder = EventDecoder()
    assert [e.data for e in iter_events([b"id: 1\ndata: a\n\nid: 2\ndata: b"], decoder)] == ["a"]
    assert decoder.last_event_id == "1"
    assert [e.data for e in iter_events([b"data: c\n\n"], decoder)] == ["c"]


def test_line_decoder_handles_a_crlf_split_across_chunks() -> None:
    lines = LineDecoder()
    assert lines.feed(b"data: a\r") == ["data: a"]
    assert lines.feed(b"\n\r\n") == [""]


def test_line_decoder_strips_only_the_first_bom() -> None:
    lines = LineDecoder()
    assert lines.feed(b"\xef\xbb") == []
    assert lines.feed(b"\xbfa\n\xef\xbb\xbfb\n") == ["a", "\ufeffb"]
