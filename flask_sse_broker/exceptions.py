"""Exceptions raised by the broker, each carrying the value that caused it
and the HTTP status the routes answer it with (as Werkzeug's ``code``)."""

from __future__ import annotations


class SSEError(Exception):
    """Base class of every error this library raises on purpose."""

    #: The HTTP status of a request that failed with this error.
    status = 500
    #: Seconds after which the request may succeed (``Retry-After``), if any.
    retry_after: int | None = None


class InvalidTopic(SSEError, ValueError):
    """A topic name is empty, too long, or holds a control character."""

    status = 400

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"invalid topic {topic[:80]!r}: {reason}")
        self.topic = topic
        self.reason = reason


class TooManyTopics(SSEError, ValueError):
    """A client asked for more topics than ``max_topics_per_connection``."""

    status = 400

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} topics requested, at most {limit} allowed")
        self.count = count
        self.limit = limit


class EventTooLarge(SSEError, ValueError):
    """An encoded event is larger than ``max_event_bytes``."""

    status = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes encoded, at most {limit} allowed")
        self.size = size
        self.limit = limit


class InvalidEventId(SSEError, ValueError):
    """A ``Last-Event-ID`` is not an id this broker could have written."""

    status = 400

    def __init__(self, value: str) -> None:
        super().__init__(f"malformed last event id {value[:80]!r}")
        self.value = value


class ClientNotFound(SSEError, LookupError):
    """No client with this id is connected (or remembered) here."""

    status = 404

    def __init__(self, client_id: str) -> None:
        super().__init__(f"no client {client_id[:80]!r} is connected")
        self.client_id = client_id


class BrokerUnavailable(SSEError):
    """The broker takes no new connection now: it is shutting down, full, or
    its backend is unreachable. Retry after ``retry_after`` seconds."""

    status = 503

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TooManyConnections(BrokerUnavailable):
    """The broker already serves ``max_connections`` streams: a capacity
    condition (503, retry later), not a bad argument."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many connections (at most {limit})", retry_after=5)
        self.limit = limit


class BackendError(SSEError):
    """The backend (e.g. Redis) could not carry out an operation; it may
    succeed later.

    Raised by a publish, the event *may* have been stored (Redis took the
    command but its reply timed out, say) and then it is delivered. Publish
    it again with ``idempotency_key=error.idempotency_key``: it is then
    stored and delivered once in all, whichever attempt got through.
    """

    status = 503
    retry_after = 5
    #: The idempotency key of the publish that failed (``None`` for other
    #: operations, and for backends that store nothing before failing).
    idempotency_key: str | None = None
