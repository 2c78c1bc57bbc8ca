"""Server-Sent Events for synchronous Flask apps.

Publish from any sync code with ``broker.broadcast_to_topic("orders", data)``;
browsers connected through ``sse_bp`` receive it within milliseconds, and
replay what they missed when they reconnect.
"""

from __future__ import annotations

from ._broker import SSEBroker, SSEClient, SSEConnection
from .blueprint import create_blueprint, setup_sse
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
from .signals import client_connected, client_disconnected, event_dropped, event_published

__version__ = "0.1.0"

#: The module's default broker, served by :data:`sse_bp`.
broker = SSEBroker()
#: A ready blueprint for :data:`broker` at ``/_sse``:
#: ``app.register_blueprint(sse_bp)``.
sse_bp = create_blueprint(broker)

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
]
