"""Exceptions raised by the broker, each carrying the value that caused it."""

from __future__ import annotations


class SSEError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidTopic(SSEError, ValueError):
    """A topic name is empty, too long, or holds a control character."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"invalid topic {topic[:80]!r}: {reason}")
        self.topic = topic
        self.reason = reason


class TooManyTopics(SSEError, ValueError):
    """A client asked for more topics than ``max_topics_per_connection``."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} topics requested, at most {limit} allowed")
        self.count = count
        self.limit = limit


class EventTooLarge(SSEError, ValueError):
    """An encoded event is larger than ``max_event_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes encoded, at most {limit} allowed")
        self.size = size
        self.limit = limit


class InvalidEventId(SSEError, ValueError):
    """A ``Last-Event-ID`` is not an id this broker could have written."""

    def __init__(self, value: str) -> None:
        super().__init__(f"malformed last event id {value[:80]!r}")
        self.value = value


class ClientNotFound(SSEError, LookupError):
    """No client with this id is connected (or remembered) here."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"no client {client_id[:80]!r} is connected")
        self.client_id = client_id


class BrokerUnavailable(SSEError):
    """The broker takes no new connection: it is shutting down or full."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TooManyConnections(BrokerUnavailable, ValueError):
    """The broker already serves ``max_connections`` streams."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many connections (at most {limit})", retry_after=5)
        self.limit = limit


class BackendError(SSEError):
    """The backend (e.g. Redis) could not carry out an operation."""
