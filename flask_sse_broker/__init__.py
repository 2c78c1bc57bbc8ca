"""Server-Sent Events for synchronous Flask apps.

Publish from any sync code with ``broker.broadcast_to_topic("orders", data)``;
browsers connected through ``sse_bp`` receive it within milliseconds, and
replay what they missed when they reconnect.
"""

from __future__ import annotations

from ._broker import SSEBroker
from ._connection import SSEClient, SSEConnection
from .blueprint import broker, create_blueprint, setup_sse, sse_bp
from .config import SSEConfig
from .event import SSEEvent
from .exceptions import (
    BackendError,
    BrokerUnavailable,
    ClientNotFound,
    EventTooLarge,
    InvalidEventId,
    InvalidTopic,
    SSEError,
    TooManyConnections,
    TooManyTopics,
)
from .helper import SSEHelper
from .signals import (
    client_connected,
    client_disconnected,
    event_dropped,
    event_published,
    topic_revoked,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BrokerUnavailable",
    "ClientNotFound",
    "EventTooLarge",
    "InvalidEventId",
    "InvalidTopic",
    "SSEBroker",
    "SSEClient",
    "SSEConfig",
    "SSEConnection",
    "SSEError",
    "SSEEvent",
    "SSEHelper",
    "TooManyConnections",
    "TooManyTopics",
    "broker",
    "client_connected",
    "client_disconnected",
    "create_blueprint",
    "event_dropped",
    "event_published",
    "setup_sse",
    "sse_bp",
    "topic_revoked",
]
