"""Broker configuration: :class:`SSEConfig`, also read from ``SSE_*`` Flask config keys."""

from __future__ import annotations

import dataclasses
import typing as t
from dataclasses import dataclass

if t.TYPE_CHECKING:
    from ._connection import SSEClient

_OVERFLOW_POLICIES = ("disconnect", "drop_oldest")


@dataclass
class SSEConfig:
    """Every tunable of a broker, each with a default.

    When the blueprint is registered, any ``SSE_<FIELD>`` key in ``app.config``
    (``SSE_HEARTBEAT_INTERVAL``, ``SSE_REDIS_URL``, ...) overrides the field.
    """

    #: How many events one connection may have waiting to be written. A client
    #: that reads slower than events arrive hits this bound and the ``overflow``
    #: policy applies; memory per connection never grows past it.
    event_buffer_size: int = 100
    #: Seconds between heartbeats; ``0`` or ``None`` disables them. Heartbeats
    #: keep proxies from closing idle streams and are how a dead socket is found
    #: under WSGI: only a write tells.
    heartbeat_interval: float | None = 15.0
    #: Reconnection delay (ms) sent as ``retry:`` when a stream opens.
    retry: int = 3000
    #: How many recent events are kept for replay to reconnecting clients;
    #: ``0`` disables replay.
    history_size: int = 1000
    #: What to do when a connection's buffer is full: ``"disconnect"`` ends the
    #: stream, so the client reconnects and replays what it missed from history;
    #: ``"drop_oldest"`` discards the oldest waiting event. Both are counted and
    #: signalled through :data:`~flask_sse_broker.event_dropped`.
    overflow: str = "disconnect"
    #: Live connections allowed per broker; ``None`` means no limit. Over it,
    #: ``GET /connect`` answers 503 with ``Retry-After``.
    max_connections: int | None = None
    max_topics_per_connection: int = 100
    max_topic_length: int = 200
    #: Largest encoded event (fields and data) a publisher may send.
    max_event_bytes: int = 1024 * 1024
    #: Seconds a client may leave written data unacknowledged (a vanished
    #: peer, or one that stopped reading) before the kernel drops its
    #: connection (``TCP_USER_TIMEOUT``, where the server exposes the socket).
    #: Without it a stalled reader holds its thread or greenlet indefinitely.
    #: ``0`` or ``None`` leaves the OS default.
    write_timeout: float | None = 30.0
    #: Seconds a client id's subscriptions outlive its last connection, so a
    #: reconnect with the client's token finds them again.
    session_ttl: float = 60.0
    #: Sessions (subscriptions of ended clients, kept for ``session_ttl``) a
    #: process remembers at most; past it the oldest is forgotten first and
    #: counted as ``sessions_evicted`` in ``stats()``. ``None``: no limit.
    max_sessions: int | None = 10_000
    #: Bytes of client ids and topic names (UTF-8) the remembered sessions may
    #: hold together; past it the oldest are forgotten first, and a session
    #: larger than this on its own is not kept. Bounds what a client looping
    #: through connects with many long topics can make a worker hold.
    #: ``None``: no limit.
    max_session_bytes: int | None = 16 * 1024 * 1024
    #: Called with the :class:`SSEClient` when a client id's first connection opens.
    on_connect: t.Callable[[SSEClient], None] | None = None
    #: Called with the :class:`SSEClient` when a client id's last connection ends.
    on_disconnect: t.Callable[[SSEClient], None] | None = None
    #: Called in the request context of a connect/subscribe request; returns the
    #: client id (e.g. the logged-in user's id). ``None`` (the default, or as a
    #: return value) means a random, unguessable id per client.
    identify: t.Callable[[], str | None] | None = None
    #: Called in the request context for every topic a request asks for;
    #: ``False`` means 403. ``None`` allows every topic.
    authorize: t.Callable[[str], bool] | None = None
    #: ``None`` selects the in-process backend; a ``redis://`` URL the Redis one.
    redis_url: str | None = None
    #: Run on a Redis Cluster (Redis 7+; ``redis_url`` names any node): topics
    #: hash to history partitions spread over the shards, each with its own
    #: stream and sharded pub/sub channel. See docs/redis-cluster.rst.
    redis_cluster: bool = False
    #: Prefix of every Redis key and channel the Redis backend uses, so several
    #: apps (or test runs) can share one Redis without seeing each other's events.
    redis_prefix: str = "flask_sse"
    #: Guard for ``GET /stats``: a callable run in the request context (``True``
    #: admits). ``None`` or ``False`` keeps the route a 404.
    stats: t.Callable[[], bool] | bool | None = None
    #: Guard for ``GET /metrics`` (Prometheus text format), like ``stats``: a
    #: callable run in the request context, or ``True``. Anything but ``None``
    #: or ``False`` also turns on the bookkeeping behind the metrics (one clock
    #: read per publish and per stream write), so it needs the ``[metrics]``
    #: extra (``prometheus_client``).
    metrics: t.Callable[[], bool] | bool | None = None
    #: Bearer key that enables ``POST /publish``: requests must carry
    #: ``Authorization: Bearer <key>`` (compared in constant time).
    publish_key: str | None = None
    #: Hook that enables ``POST /publish``: called with the Flask request
    #: (typed ``Any`` so this module needs no Flask), ``False`` answers 403.
    #: With ``publish_key`` also set, both must admit.
    can_publish: t.Callable[[t.Any], bool] | None = None
    #: Largest ``POST /publish`` body: room for a batch of 1,000 events of
    #: about 4 KiB each. An event larger than ``max_event_bytes`` is refused
    #: whatever the body size.
    max_publish_bytes: int = 4 * 1024 * 1024
    #: End every stream when the process gets SIGTERM (chaining to the previous
    #: handler), so gunicorn's graceful shutdown is not spent waiting on them.
    handle_sigterm: bool = True
    #: Under gunicorn, once a stream has started, keep of its WSGI environ
    #: only what gunicorn's access log reads (the request line, the client's
    #: address, ``User-Agent``, ``Referer``, ``Authorization``): gunicorn
    #: holds the environ as long as the stream lasts, about 1.5 KB of an idle
    #: stream's ~15 KiB. ``False`` leaves it whole, for a ``post_request``
    #: hook or an access-log ``%({NAME}e)s`` atom that reads other keys.
    trim_environ: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :exc:`ValueError` for a field out of its range."""
        _positive_int("event_buffer_size", self.event_buffer_size)
        _non_negative_int("retry", self.retry)
        _non_negative_int("history_size", self.history_size)
        _positive_int("max_topics_per_connection", self.max_topics_per_connection)
        _positive_int("max_topic_length", self.max_topic_length)
        _positive_int("max_event_bytes", self.max_event_bytes)
        _positive_int("max_publish_bytes", self.max_publish_bytes)
        if self.publish_key is not None and (not isinstance(self.publish_key, str) or not self.publish_key):
            raise ValueError("publish_key must be a non-empty str or None")
        for name in ("max_connections", "max_sessions", "max_session_bytes"):  # None: no limit
            if getattr(self, name) is not None:
                _non_negative_int(name, getattr(self, name))
        if self.heartbeat_interval is not None and (
            isinstance(self.heartbeat_interval, bool)
            or not isinstance(self.heartbeat_interval, (int, float))
            or self.heartbeat_interval < 0
        ):
            raise ValueError(f"heartbeat_interval must be >= 0 or None: {self.heartbeat_interval!r}")
        if self.write_timeout is not None and (
            not isinstance(self.write_timeout, (int, float)) or self.write_timeout < 0
        ):
            raise ValueError(f"write_timeout must be >= 0 or None: {self.write_timeout!r}")
        if not isinstance(self.session_ttl, (int, float)) or self.session_ttl < 0:
            raise ValueError(f"session_ttl must be >= 0: {self.session_ttl!r}")
        for name in ("redis_cluster", "trim_environ"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool: {getattr(self, name)!r}")
        if self.redis_cluster and not self.redis_url:
            raise ValueError("redis_cluster needs redis_url (the URL of any node of the cluster)")
        if self.overflow not in _OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {_OVERFLOW_POLICIES}: {self.overflow!r}")

    @property
    def heartbeat_seconds(self) -> float:
        """The heartbeat interval, ``0.0`` when heartbeats are off."""
        return float(self.heartbeat_interval or 0.0)

    def update_from_mapping(self, mapping: t.Mapping[str, t.Any], prefix: str = "SSE_") -> None:
        """Set every field named by a ``<prefix><FIELD>`` key in ``mapping``."""
        for f in dataclasses.fields(self):
            key = prefix + f.name.upper()
            if key in mapping:
                setattr(self, f.name, mapping[key])
        self.validate()


def _positive_int(name: str, value: t.Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int: {value!r}")


def _non_negative_int(name: str, value: t.Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int: {value!r}")
