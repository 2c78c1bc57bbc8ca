"""The one public wire type: :class:`SSEEvent`, validated and encoded once.

The framing underneath (field checks, ``id:`` lines, event ids) lives in
:mod:`flask_sse_broker._wire`.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ._wire import check_event_id, check_field, encode_body, frame, json_dumps


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
            check_field("event name", self.event)
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
                return json_dumps(self.data)
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
        return encode_body(self._payload(), self.event, self.retry)

    @property
    def body(self) -> bytes:
        """The encoded fields without ``id:`` and without the frame's blank line."""
        return self._body

    def encode(self, id: str | None = None) -> bytes:
        """Return the complete frame, with ``id`` (or the event's own id)."""
        return frame(self._body, id if id is not None else self.id)
