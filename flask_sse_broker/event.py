"""The SSE wire format: :class:`SSEEvent` and its encoding.

Encoding follows the WHATWG HTML standard, section 9.2 "Server-sent events"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream).
A frame is a block of ``field: value`` lines ended by a blank line. The parser
splits lines on CR, LF *and* CRLF, so any of those inside a value would start a
new field or end the frame early; this module makes that impossible.
"""

from __future__ import annotations

import json
import re
import typing as t
from dataclasses import dataclass, field

#: Matches every line break the SSE parser recognises: CRLF, lone CR, lone LF.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: An event id as the broker writes it: ``<epoch or milliseconds>-<sequence>``,
#: the shape of a Redis stream id, so both backends share one format.
_EVENT_ID = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")


def _json_dumps(data: t.Any) -> str:
    """Compact JSON on one line (JSON escapes CR and LF inside strings)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8 encoded; ASCII escapes carry it intact
        # to ``JSON.parse`` on the other side.
        text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def _check_field(name: str, value: str, *, nul: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"SSE {name} must be a str, not {type(value).__name__}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name} must not contain CR or LF: {value!r}")
    if nul and "\0" in value:
        raise ValueError(f"SSE {name} must not contain NUL: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"SSE {name} must be encodable as UTF-8: {value!r}") from None
    return value


def check_event_id(value: str) -> str:
    """Return ``value`` if it is a valid ``id:`` field value, else raise
    :exc:`ValueError`. The standard ignores an id holding NUL and a line break
    would inject a field, so both are refused.
    """
    return _check_field("id", value, nul=True)


def parse_event_id(value: str) -> tuple[int, int] | None:
    """Parse a broker-assigned event id into a comparable pair, or return
    ``None`` when ``value`` does not have the broker's id shape.
    """
    match = _EVENT_ID.match(value)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event.

    ``data`` is always sent JSON-encoded, so ``"42"`` and ``42`` stay distinct
    on the client. To send text or bytes as they are, pass ``raw=True``: the
    payload is then split into one ``data:`` line per line, which the client
    joins back with LF (a CR or CRLF in raw data therefore arrives as LF, as the
    standard prescribes).

    The event is validated and encoded once, when it is created, so a bad event
    fails in the code that made it and a broadcast to thousands of connections
    encodes it only once.

    :param data: any JSON-serialisable value (``str`` or ``bytes`` with ``raw``).
    :param event: the event name; dispatched to ``addEventListener(event)``.
    :param id: an explicit id. The broker replaces it with its own id so replay
        works; it is kept when the event is encoded on its own.
    :param retry: reconnection delay hint for the browser, in milliseconds.
    :param raw: send ``data`` unencoded.
    :raises ValueError: a name or id with CR/LF (or NUL in the id), a negative
        ``retry``, or non-UTF-8 raw bytes.
    :raises TypeError: data that JSON cannot encode, or a field of the wrong type.
    """

    data: t.Any = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    raw: bool = False
    _body: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.event is not None:
            _check_field("event name", self.event)
        if self.id is not None:
            check_event_id(self.id)
        if self.retry is not None and (
            isinstance(self.retry, bool) or not isinstance(self.retry, int) or self.retry < 0
        ):
            raise ValueError(f"SSE retry must be a non-negative int: {self.retry!r}")
        object.__setattr__(self, "_body", self._encode_body())

    def _payload(self) -> str:
        if not self.raw:
            try:
                return _json_dumps(self.data)
            except ValueError as e:  # NaN or a circular reference
                raise ValueError(f"SSE data is not valid JSON: {e}") from None
        if isinstance(self.data, bytes):
            try:
                return self.data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"raw SSE data must be UTF-8: {e}") from None
        if isinstance(self.data, str):
            return self.data
        raise TypeError(f"raw SSE data must be str or bytes, not {type(self.data).__name__}")

    def _encode_body(self) -> bytes:
        lines = []
        if self.retry is not None:
            lines.append(f"retry: {self.retry}\n")
        if self.event:
            lines.append(f"event: {self.event}\n")
        # One data line per payload line; the parser joins them back with LF.
        for line in _LINE_BREAK.split(self._payload()):
            lines.append(f"data: {line}\n")
        try:
            return "".join(lines).encode("utf-8")
        except UnicodeEncodeError as e:  # only raw data can still hold a lone surrogate
            raise ValueError(f"raw SSE data must be encodable as UTF-8: {e}") from None

    @property
    def body(self) -> bytes:
        """The encoded fields without ``id:`` and without the frame's blank line."""
        return self._body

    def encode(self, id: str | None = None) -> bytes:
        """Return the complete frame, with ``id`` (or the event's own id)."""
        return frame(self._body, id if id is not None else self.id)


def frame(body: bytes, id: str | None) -> bytes:
    """Close an encoded body into a frame, adding the ``id:`` line if any."""
    if id is None:
        return body + b"\n"
    return b"%sid: %s\n\n" % (body, id.encode("utf-8"))


#: Sent every heartbeat interval. It is a named event with data, not a comment:
#: a browser shows no comment to scripts and dispatches no event without data,
#: and the client's watchdog must see it. It has no id, so it moves no cursor.
HEARTBEAT = b"event: heartbeat\ndata: {}\n\n"


def control_frame(event: str, data: t.Any, *, id: str | None = None, retry: int | None = None) -> bytes:
    """Encode a broker-generated event such as ``connected`` or ``reset``."""
    return SSEEvent(data, event=event, retry=retry).encode(id)
