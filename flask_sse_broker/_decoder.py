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
    """Turn lines into :class:`ServerSentEvent` objects, as a browser would."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str:
        return self._last_id

    def decode(self, line: str) -> ServerSentEvent | None:
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
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
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


def iter_events(chunks: t.Iterable[bytes]) -> t.Iterator[ServerSentEvent]:
    """Decode an iterable of byte chunks into events.

    A frame that only sets ``retry`` yields an event with ``event == ""`` so a
    consumer can honour the hint; a browser would dispatch nothing for it.
    """
    lines = LineDecoder()
    events = EventDecoder()
    for chunk in chunks:
        for line in lines.feed(chunk):
            event = events.decode(line)
            if event is not None:
                yield event
