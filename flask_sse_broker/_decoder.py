"""A spec-correct SSE stream decoder, used by the Python consumer and the tests.

It follows the WHATWG HTML standard, 9.2.6 "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
Two small classes, one job each: :class:`LineDecoder` only splits bytes into
lines, :class:`EventDecoder` only turns lines into events.
"""

from __future__ import annotations

import codecs
import json
import typing as t
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    """An event as a browser's ``MessageEvent`` would show it."""

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None

    def json(self) -> t.Any:
        """The data, JSON-decoded (the server always JSON-encodes it)."""
        return json.loads(self.data)


class LineDecoder:
    """Split a byte stream into lines on CRLF, CR or LF, across chunk edges."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._trailing_cr = False
        self._first = True

    def feed(self, chunk: bytes) -> list[str]:
        text = self._text.decode(chunk)
        if self._first and text:
            # The standard strips one leading BOM from the stream.
            text = text.removeprefix("\ufeff")
            self._first = False
        if self._trailing_cr and text.startswith("\n"):
            # The LF of a CRLF split across two chunks ends no extra line.
            text = text[1:]
        self._trailing_cr = False
        lines = []
        start = 0
        i = 0
        n = len(text)
        buffer = self._buffer
        while i < n:
            ch = text[i]
            if ch == "\r" or ch == "\n":
                lines.append(buffer + text[start:i])
                buffer = ""
                if ch == "\r":
                    if i + 1 < n and text[i + 1] == "\n":
                        i += 1
                    elif i + 1 == n:
                        self._trailing_cr = True
                start = i + 1
            i += 1
        self._buffer = buffer + text[start:]
        return lines


class EventDecoder:
    """Turn lines into :class:`ServerSentEvent` objects, as a browser would.

    Besides the frame being read, it holds the two values that a browser keeps
    on the ``EventSource`` object and that outlive one stream, so a consumer
    keeps one decoder across its reconnects:

    * :attr:`last_event_id`, set when a frame is dispatched (a blank line),
      whether or not the frame carried data: the spec sets "the last event ID
      string" *before* it checks the data buffer, so ``id: 8`` followed by a
      blank line moves the cursor although no event is shown, and an empty
      ``id`` clears it;
    * :attr:`reconnection_time`, set by a valid ``retry:`` field wherever it
      stands, in a frame of its own or beside ``data``.

    Like Chromium's parser, a new stream starts from the last event id rather
    than from an empty buffer, so an event without ``id:`` after a reconnect
    reports the id the stream resumed from.

    :param last_event_id: the cursor to start from.
    """

    def __init__(self, last_event_id: str = "") -> None:
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self._last_id = self._id_buffer = _checked_id(last_event_id)
        #: The last valid ``retry:`` value in milliseconds; ``None`` until one came.
        self.reconnection_time: int | None = None

    @property
    def last_event_id(self) -> str:
        """The id of the last dispatched frame: what a reconnect sends back."""
        return self._last_id

    @last_event_id.setter
    def last_event_id(self, value: str) -> None:
        self._last_id = self._id_buffer = _checked_id(value)

    def decode(self, line: str) -> ServerSentEvent | None:
        """Process one line; return the event a blank line dispatches, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = self.reconnection_time = int(value)
        return None

    def end_of_stream(self) -> None:
        """Discard the frame being read: the spec drops an unfinished frame at
        the end of a stream, its ``id:`` included."""
        self._event = ""
        self._data = []
        self._retry = None
        self._id_buffer = self._last_id

    def _dispatch(self) -> ServerSentEvent | None:
        # https://html.spec.whatwg.org/multipage/server-sent-events.html#dispatchMessage
        # step 1 sets the last event id before step 2 looks at the data.
        self._last_id = self._id_buffer
        retry, self._retry = self._retry, None
        if not self._data:
            self._event = ""
            if retry is not None:
                return ServerSentEvent(event="", data="", id=self._last_id, retry=retry)
            return None
        event = ServerSentEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._last_id,
            retry=retry,
        )
        self._event = ""
        self._data = []
        return event


def _checked_id(value: str) -> str:
    # A decoded stream cannot produce these; a caller's cursor must not either,
    # since it goes back in a header.
    if "\0" in value or "\r" in value or "\n" in value:
        raise ValueError(f"an event id cannot contain NUL, CR or LF: {value!r}")
    return value


def iter_events(
    chunks: t.Iterable[bytes], decoder: EventDecoder | None = None
) -> t.Iterator[ServerSentEvent]:
    """Decode an iterable of byte chunks into events.

    A frame that only sets ``retry`` yields an event with ``event == ""`` so a
    consumer can honour the hint; a browser would dispatch nothing for it.

    :param decoder: the decoder to use, e.g. one kept across reconnects for its
        :attr:`~EventDecoder.last_event_id` and
        :attr:`~EventDecoder.reconnection_time`; a new one by default. When
        the chunks end (or the iteration is closed), its unfinished frame is
        discarded.
    """
    lines = LineDecoder()
    events = EventDecoder() if decoder is None else decoder
    try:
        for chunk in chunks:
            for line in lines.feed(chunk):
                event = events.decode(line)
                if event is not None:
                    yield event
    finally:
        events.end_of_stream()
