"""The SSE wire format below :class:`~flask_sse_broker.event.SSEEvent`:
field checks, framing, event ids, and what a connection queues.

Encoding follows the WHATWG HTML standard, section 9.2 "Server-sent events"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream).
A frame is a block of ``field: value`` lines ended by a blank line. The parser
splits lines on CR, LF *and* CRLF, so any of those inside a value would start a
new field or end the frame early; this module makes that impossible.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import typing as t

#: Matches every line break the SSE parser recognises: CRLF, lone CR, lone LF.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: An event id as the broker writes it: ``<epoch or milliseconds>-<sequence>``,
#: the shape of a Redis stream id, so both backends share one format. ASCII
#: digits only: ``\d`` would also take "\uff11" or "\u0661", which ``int()``
#: reads but Redis refuses.
_EVENT_ID = re.compile(r"\A([0-9]{1,20})-([0-9]{1,20})\Z")
#: Both parts of an id are unsigned 64-bit integers, as in a Redis stream id.
_MAX_PART = 2**64 - 1

#: An event's place in the sequence: the parsed id, compared as a pair.
Seq = tuple[int, int]


def json_dumps(data: t.Any) -> str:
    """Compact JSON on one line (JSON escapes CR and LF inside strings)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8 encoded; ASCII escapes carry it intact
        # to ``JSON.parse`` on the other side.
        text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def check_field(name: str, value: str, *, nul: bool = False) -> str:
    """Return ``value`` if it can be a field value; raise otherwise.

    :raises TypeError: not a ``str``.
    :raises ValueError: CR or LF (a new field), NUL when ``nul``, or not UTF-8.
    """
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
    return check_field("id", value, nul=True)


def parse_event_id(value: str) -> Seq | None:
    """Parse a broker-assigned event id into a comparable pair, or return
    ``None`` when ``value`` does not have the broker's id shape: two runs of
    ASCII digits joined by ``-``, each at most ``2**64 - 1`` (the range of a
    Redis stream id's parts, and wider than the in-process backend's).
    """
    match = _EVENT_ID.match(value)
    if match is None:
        return None
    seq = int(match.group(1)), int(match.group(2))
    if seq[0] > _MAX_PART or seq[1] > _MAX_PART:
        return None
    return seq


def format_event_id(seq: Seq) -> str:
    """The id of an event at ``seq``: the inverse of :func:`parse_event_id`."""
    return f"{seq[0]}-{seq[1]}"


def encode_body(payload: str, event: str | None = None, retry: int | None = None) -> bytes:
    """The fields of a frame without ``id:`` and without its blank line.

    One ``data:`` line per payload line; the parser joins them back with LF.

    :raises ValueError: the payload holds a lone surrogate (only raw data can).
    """
    lines = []
    if retry is not None:
        lines.append(f"retry: {retry}\n")
    if event:
        lines.append(f"event: {event}\n")
    for line in _LINE_BREAK.split(payload):
        lines.append(f"data: {line}\n")
    try:
        return "".join(lines).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"raw SSE data must be encodable as UTF-8: {e}") from None


def frame(body: bytes, id: str | None) -> bytes:
    """Close an encoded body into a frame, adding the ``id:`` line if any."""
    if id is None:
        return body + b"\n"
    return b"%sid: %s\n\n" % (body, id.encode("utf-8"))


#: Sent every heartbeat interval. It is a named event with data, not a comment:
#: a browser shows no comment to scripts and dispatches no event without data,
#: and the client's watchdog must see it. It has no id, so it moves no cursor.
HEARTBEAT = b"event: heartbeat\ndata: {}\n\n"


class Audience(str, enum.Enum):
    """Who an event is for. A ``str`` so it crosses Redis and signals as
    ``"all"``, ``"topic"`` or ``"client"``."""

    ALL = "all"
    TOPIC = "topic"
    CLIENT = "client"


class Frame:
    """Bytes queued for a stream outside the event sequence: a heartbeat, or
    the ``retry:`` hint a stream ends with. It has no ``seq``, so it moves no
    cursor and a replay never skips it."""

    __slots__ = ("chunk", "frame")

    #: Always ``None``: lets a stream read ``seq`` of anything it dequeues.
    seq: Seq | None = None
    #: Always ``0.0``: not an event, so never timed.
    at = 0.0

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        #: ``frame`` as one HTTP/1.1 chunk, made by the first stream that
        #: writes it chunk-framed itself (:func:`chunk_of`), then shared.
        self.chunk: bytes | None = None

    def __repr__(self) -> str:
        return f"<Frame {self.frame[:30]!r}>"


class Envelope:
    """One published event, shared by every connection it is queued for.

    ``frame`` is the complete encoded frame, so the event is encoded once per
    publish however many connections receive it. ``seq`` is its parsed id:
    events are delivered, replayed and de-duplicated in ``seq`` order.
    """

    __slots__ = ("at", "audience", "chunk", "frame", "seq", "target")

    def __init__(self, seq: Seq, audience: Audience, target: str | None, frame: bytes) -> None:
        self.seq = seq
        self.audience = audience
        #: The topic (``TOPIC``) or the client id (``CLIENT``); ``None`` for ``ALL``.
        self.target = target
        self.frame = frame
        #: ``frame`` as one HTTP/1.1 chunk (:func:`chunk_of`): framed by the
        #: first recipient that needs it, shared by every other one.
        self.chunk: bytes | None = None
        #: When it was published (``time.time()``), for the delivery-delay
        #: metric; ``0.0`` unless metrics are on (or the backend knows it).
        self.at = 0.0

    @classmethod
    def encode(cls, seq: Seq, audience: Audience, target: str | None, body: bytes) -> Envelope:
        """Frame ``body`` (an event's encoded fields) with the id of ``seq``."""
        return cls(seq, audience, target, frame(body, format_event_id(seq)))

    @property
    def id(self) -> str:
        """The event id written on the wire."""
        return format_event_id(self.seq)

    def __repr__(self) -> str:
        return f"<Envelope {self.id} {self.audience.value}:{self.target}>"

    def reaches(self, client_id: str, topics: t.Container[str]) -> bool:
        """Whether a client with this id and these topics is a recipient."""
        if self.audience is Audience.ALL:
            return True
        if self.audience is Audience.TOPIC:
            return self.target in topics
        return self.target == client_id


#: Queued in place of an event when a connection is idle at a heartbeat tick.
HEARTBEAT_FRAME = Frame(HEARTBEAT)


def chunk_of(queued: Envelope | Frame) -> bytes:
    """The frame of ``queued`` as one chunk of the chunked transfer coding
    (RFC 9112, section 7.1): its size in hex, CRLF, the frame, CRLF.

    A stream that writes to its socket itself (:meth:`SSEConnection._write_to`)
    sends events as chunks the server would otherwise frame on every write;
    the chunk is made once per event and kept on it, so every recipient
    shares it, as it shares the frame.
    """
    chunk = queued.chunk
    if chunk is None:
        chunk = queued.chunk = as_chunk(queued.frame)
    return chunk


def as_chunk(data: bytes) -> bytes:
    """``data`` as one chunk (a frame of a single stream: not kept)."""
    return b"%X\r\n%s\r\n" % (len(data), data)


def shared_frame(queued: Envelope | Frame) -> bytes:
    """The frame of ``queued`` on a stream shared by a browser's tabs.

    Events do not name their topic on the wire, and a SharedWorker holding
    one stream for many tabs must hand each event only to the tabs holding
    its topic. So on such a stream every published event gains a first
    ``data:`` line: its topic JSON-encoded, or ``null`` for broadcasts and
    direct sends (every tab gets those). The line goes in front of the frame,
    so the event's own encoding is reused, not redone; SSE joins data lines in
    order, and the worker splits the data at its first line feed. Frames
    outside the event sequence (heartbeats, ``connected``, ``reset``, the
    shutdown frame) are left as they are.
    """
    if not isinstance(queued, Envelope):
        return queued.frame
    target = queued.target if queued.audience is Audience.TOPIC else None
    return b"data: %s\n%s" % (json.dumps(target).encode("ascii"), queued.frame)


#: The longest ``Last-Event-ID``, client id or idempotency key accepted.
MAX_ID_LENGTH = 256


def new_client_id() -> str:
    """A random, unguessable client id."""
    return secrets.token_urlsafe(16)


def validate_client_id(client_id: str) -> str:
    if not isinstance(client_id, str):
        raise TypeError(f"client_id must be a str, not {type(client_id).__name__}")
    if not client_id or len(client_id) > MAX_ID_LENGTH or not client_id.isprintable():
        raise ValueError(f"invalid client id {client_id[:80]!r}")
    return client_id
