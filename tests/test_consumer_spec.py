"""The Python consumer against a scripted raw server, case by case.

Each test scripts the exact bytes a server sends (WHATWG HTML 9.2.6
"Interpreting an event stream", and the edge cases of web-platform-tests'
``eventsource/`` suite) and checks what :class:`EventSource` yields and what
its reconnects send, as a browser's EventSource would.
"""

from __future__ import annotations

import json
import threading
import typing as t

import pytest

from flask_sse_broker.client import EventSource, ServerSentEvent, SSEResponseError

from .raw_server import RawServer, status, stream

DONE = "data: done\n\n"


def source_for(url: str, **kwargs: t.Any) -> EventSource:
    source = EventSource(url, **kwargs)
    source.reconnect_delay = 0.01  # the scripts close streams; reconnect at once
    return source


def read_until_done(source: EventSource, timeout: float = 15.0) -> list[ServerSentEvent]:
    """Iterate ``source`` in a thread until an event whose data is ``done``."""
    events: list[ServerSentEvent] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for event in source:
                events.append(event)
                if event.data == "done":
                    return
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    source.close()
    thread.join(5)
    if errors:
        raise errors[0]
    assert events and events[-1].data == "done", f"no 'done' event in {events!r}"
    return events[:-1]


def first_error(source: EventSource, timeout: float = 15.0) -> BaseException:
    """Iterate ``source`` until it raises; return the exception."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in source:
                pass
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    source.close()
    thread.join(5)
    assert errors, "the consumer did not give up"
    return errors[0]


def hello(client_id: str, token: str) -> str:
    data = json.dumps({"clientId": client_id, "token": token, "topics": [], "heartbeat": 0})
    return f"event: connected\ndata: {data}\n\n"


# -- 1. an empty id clears the last event id ------------------------------------------


def test_an_empty_id_clears_the_last_event_id_of_the_reconnect() -> None:
    with RawServer([stream("id: 7\ndata: a\n\nid\ndata: b\n\n"), stream(DONE)]) as server:
        source = source_for(server.url())
        read_until_done(source)
        assert server.requests[1].header("Last-Event-ID") is None
        assert source.last_event_id == ""


def test_events_after_an_empty_id_carry_no_id_across_a_reconnect() -> None:
    with RawServer([stream("id: 7\ndata: a\n\nid:\ndata: b\n\n"), stream("data: c\n\n" + DONE)]) as server:
        events = read_until_done(source_for(server.url()))
        assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", ""), ("c", "")]


# -- 2. an id in a frame without data still moves the cursor --------------------------


def test_an_id_in_a_frame_without_data_moves_the_cursor() -> None:
    with RawServer([stream("id: 7\ndata: a\n\nid: 8\n\n"), stream(DONE)]) as server:
        source = source_for(server.url())
        read_until_done(source)
        assert server.requests[1].header("Last-Event-ID") == b"8"


def test_an_id_in_an_unfinished_frame_is_discarded() -> None:
    # The stream ends before the frame's blank line: the frame is never dispatched.
    with RawServer([stream("id: 7\ndata: a\n\nid: 8\n"), stream(DONE)]) as server:
        read_until_done(source_for(server.url()))
        assert server.requests[1].header("Last-Event-ID") == b"7"


# -- 3. ids are sent back as UTF-8 ---------------------------------------------------


@pytest.mark.parametrize("event_id", ["café", "✓", "1-\U0001f600"])
def test_a_non_ascii_id_is_sent_back_as_utf8(event_id: str) -> None:
    with RawServer([stream(f"id: {event_id}\ndata: a\n\n"), stream(DONE)]) as server:
        source = source_for(server.url())
        read_until_done(source)
        assert server.requests[1].header("Last-Event-ID") == event_id.encode("utf-8")


def test_a_non_ascii_initial_id_is_sent_as_utf8() -> None:
    with RawServer([stream(DONE)]) as server:
        read_until_done(source_for(server.url(), last_event_id="✓-1"))
        assert server.requests[0].header("Last-Event-ID") == "✓-1".encode()


# -- 4. retry: wherever it stands ----------------------------------------------------


def reconnect_wait(server: RawServer, index: int) -> float:
    request = server.requests[index]
    assert request.previous_closed is not None
    return request.arrived - request.previous_closed


def test_retry_in_a_frame_with_data_sets_the_reconnection_time() -> None:
    with RawServer([stream("retry: 1500\ndata: a\n\n"), stream(DONE)]) as server:
        read_until_done(source_for(server.url()))
        assert reconnect_wait(server, 1) >= 1.4


def test_retry_in_the_connected_frame_sets_the_reconnection_time() -> None:
    frame = hello("c1", "T").replace("event: connected\n", "event: connected\nretry: 1500\n")
    with RawServer([stream(frame), stream(DONE)]) as server:
        read_until_done(source_for(server.url()))
        assert reconnect_wait(server, 1) >= 1.4


def test_retry_with_non_digits_is_ignored() -> None:
    # The first retry stands; the malformed ones after it change nothing.
    body = "retry: 1500\n\nretry: 10x\ndata: a\n\nretry: -5\nretry: 1.5\ndata: b\n\n"
    with RawServer([stream(body), stream(DONE)]) as server:
        read_until_done(source_for(server.url()))
        assert reconnect_wait(server, 1) >= 1.4


# -- 5. the media type ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "Text/Event-Stream; Charset=UTF-8",
        "TEXT/EVENT-STREAM",
        "text/event-stream ; charset=utf-8",
        'text/event-stream;foo="a;b";charset=utf-8',
    ],
)
def test_the_media_type_is_matched_case_insensitively(content_type: str) -> None:
    with RawServer([stream("data: a\n\n" + DONE, content_type)]) as server:
        events = read_until_done(source_for(server.url()))
        assert [e.data for e in events] == ["a"]


@pytest.mark.parametrize("content_type", ["text/event-streams", "text/plain", "text/event-stream/x"])
def test_another_media_type_is_refused(content_type: str) -> None:
    with RawServer([stream("data: a\n\n", content_type)]) as server:
        error = first_error(source_for(server.url()))
        assert isinstance(error, SSEResponseError) and error.status == 200
        assert len(server.requests) == 1


# -- 6. redirects ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_followed(code: int) -> None:
    with RawServer(
        [status(code, headers={"Location": "/moved?x=1"}), stream("data: a\n\n" + DONE)]
    ) as server:
        events = read_until_done(source_for(server.url("/events")))
        assert [e.data for e in events] == ["a"]
        assert server.requests[1].target == "/moved?x=1"


def test_a_redirect_to_another_server_is_followed() -> None:
    there = RawServer([stream("data: there\n\n" + DONE)])
    with there, RawServer([status(307, headers={"Location": there.url("/x")})]) as here:
        events = read_until_done(source_for(here.url()))
        assert [e.data for e in events] == ["there"]
        assert there.requests[0].target == "/x"
        assert there.requests[0].header("Host") == f"127.0.0.1:{there.port}".encode()


def test_a_redirect_keeps_the_last_event_id() -> None:
    with RawServer([status(302, headers={"Location": "/b"}), stream(DONE)]) as server:
        read_until_done(source_for(server.url(), last_event_id="4-2"))
        assert server.requests[1].header("Last-Event-ID") == b"4-2"


def test_a_redirect_to_another_origin_drops_credentials() -> None:
    there = RawServer([stream(DONE)])
    with there, RawServer([status(307, headers={"Location": there.url("/x")})]) as here:
        headers = {"Authorization": "Bearer s3cret", "Cookie": "a=b", "X-Trace": "1"}
        read_until_done(source_for(here.url(), headers=headers))
        assert here.requests[0].header("Authorization") == b"Bearer s3cret"
        request = there.requests[0]
        assert request.header("Authorization") is None and request.header("Cookie") is None
        assert request.header("X-Trace") == b"1"


def test_a_reconnect_after_a_redirect_goes_to_the_original_url() -> None:
    scripts = [status(307, headers={"Location": "/moved"}), stream("id: 1\ndata: a\n\n"), stream(DONE)]
    with RawServer(scripts) as server:
        read_until_done(source_for(server.url("/events")))
        assert [r.target for r in server.requests] == ["/events", "/moved", "/events"]
        assert server.requests[2].header("Last-Event-ID") == b"1"


def test_redirects_are_bounded() -> None:
    loop = status(302, headers={"Location": "/again"})
    with RawServer([loop] * 30) as server:
        error = first_error(source_for(server.url()))
        assert isinstance(error, SSEResponseError) and "redirect" in error.message
        assert len(server.requests) == 1 + EventSource.max_redirects


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "file:///etc/passwd", "javascript:alert(1)"])
def test_a_redirect_to_a_non_http_url_is_refused(location: str) -> None:
    with RawServer([status(307, headers={"Location": location})]) as server:
        error = first_error(source_for(server.url()))
        assert isinstance(error, SSEResponseError) and error.status == 307
        assert len(server.requests) == 1


def test_a_redirect_without_location_is_refused() -> None:
    with RawServer([status(302)]) as server:
        error = first_error(source_for(server.url()))
        assert isinstance(error, SSEResponseError) and error.status == 302


# -- 8. a refused token: reconnect once as a new client --------------------------------


@pytest.mark.parametrize("code", [401, 403])
def test_a_refused_token_reconnects_once_as_a_new_client(code: int) -> None:
    refused = status(code, headers={"Content-Type": "application/json"}, body='{"error": "invalid token"}')
    scripts = [stream(hello("old", "T1") + "id: 5\ndata: a\n\n"), refused, stream(hello("new", "T2") + DONE)]
    with RawServer(scripts) as server:
        source = source_for(server.url())
        read_until_done(source)
        _, refused_request, new = server.requests
        assert "token=T1" in refused_request.target
        assert "token" not in new.target
        assert new.header("Last-Event-ID") == b"5"
        assert (source.client_id, source.token) == ("new", "T2")


def test_a_refusal_without_a_token_stops() -> None:
    with RawServer([status(403, body='{"error": "not authorised"}')]) as server:
        error = first_error(source_for(server.url()))
        assert isinstance(error, SSEResponseError) and error.status == 403
        assert len(server.requests) == 1


def test_a_refusal_of_the_new_client_too_stops() -> None:
    refused = status(403, body='{"error": "not authorised for topic"}')
    with RawServer([stream(hello("old", "T1")), refused, refused, stream(DONE)]) as server:
        error = first_error(source_for(server.url()))
        assert isinstance(error, SSEResponseError) and error.status == 403
        assert len(server.requests) == 3


# -- the parser's edge cases (web-platform-tests eventsource/format-*) ---------------


def decoded(body: str | bytes) -> list[ServerSentEvent]:
    raw = body.encode() if isinstance(body, str) else body
    with RawServer([stream(raw + DONE.encode())]) as server:
        return read_until_done(source_for(server.url()))


def test_a_leading_bom_is_skipped() -> None:
    assert [e.data for e in decoded(b"\xef\xbb\xbfdata: 1\n\n")] == ["1"]


def test_a_second_bom_is_not_skipped() -> None:
    # Only the stream's first BOM goes; later ones make the field name unknown.
    assert [e.data for e in decoded(b"\xef\xbb\xbfdata: 1\n\n\xef\xbb\xbfdata: 2\n\ndata: 3\n\n")] == [
        "1",
        "3",
    ]


def test_cr_only_line_endings() -> None:
    assert [e.data for e in decoded("data: 1\rdata: 2\r\rdata: 3\r\r")] == ["1\n2", "3"]


def test_crlf_line_endings() -> None:
    assert [e.data for e in decoded("data: 1\r\ndata: 2\r\n\r\n")] == ["1\n2"]


def test_data_without_a_colon_is_an_empty_line() -> None:
    assert [e.data for e in decoded("data\ndata\n\ndata\n\n")] == ["\n", ""]


def test_comments_are_ignored() -> None:
    assert [e.data for e in decoded(":hi\n: there\ndata: 1\n:\n\n")] == ["1"]


def test_a_field_without_a_value_is_empty() -> None:
    (event,) = decoded("event\ndata: x\n\n")
    assert (event.event, event.data) == ("message", "x")


def test_only_one_leading_space_is_stripped() -> None:
    assert [e.data for e in decoded("data:  two\ndata:none\n\n")] == [" two\nnone"]


def test_unknown_fields_are_ignored() -> None:
    assert [e.data for e in decoded("foo: bar\nData: no\ndata: yes\n\n")] == ["yes"]


def test_a_frame_without_data_is_not_dispatched() -> None:
    assert [e.event for e in decoded("event: ghost\n\nevent: real\ndata: 1\n\n")] == ["real"]


def test_multi_line_data_is_joined_with_lf() -> None:
    assert [e.data for e in decoded("data: a\ndata:\ndata: b\n\n")] == ["a\n\nb"]


def test_an_id_with_nul_is_ignored() -> None:
    with RawServer([stream("id: 3\ndata: a\n\nid: 4\x005\ndata: b\n\n"), stream(DONE)]) as server:
        source = source_for(server.url())
        events = read_until_done(source)
        assert [e.id for e in events] == ["3", "3"]
        assert server.requests[1].header("Last-Event-ID") == b"3"


def test_an_unfinished_frame_at_the_end_is_discarded() -> None:
    with RawServer([stream("data: a\n\ndata: lost"), stream(DONE)]) as server:
        events = read_until_done(source_for(server.url()))
        assert [e.data for e in events] == ["a"]


def test_invalid_utf8_is_replaced() -> None:
    assert [e.data for e in decoded(b"data: a\xffb\n\n")] == ["a\ufffdb"]
