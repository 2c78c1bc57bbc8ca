"""``POST /_sse/publish``: publishing over HTTP, for services that are not
this Flask app (curl, Node, Go, a cron job).

The body is hostile until proven otherwise: it is size-capped before it is
read, parsed with NaN/Infinity refused, and every event of a batch is checked
completely, and encoded, before the first one is published, so a bad event
anywhere publishes nothing (``400`` naming its index). Only a backend failure
(Redis unreachable: ``503``) can still stop a checked batch, and the Redis
backend ships a batch as one transaction, so then none of it is published
either.
"""

from __future__ import annotations

import hmac
import json
import math
import typing as t

from flask import Response, jsonify, request

from ._broker import SSEBroker
from ._requests import RequestError, json_body_bytes
from ._wire import MAX_ID_LENGTH, Audience
from .event import SSEEvent
from .exceptions import SSEError

ALL, TOPIC, CLIENT = Audience.ALL, Audience.TOPIC, Audience.CLIENT

#: Most events in one batch, and most publishes one request may make
#: (``"topics": [...]`` publishes one event per topic).
MAX_BATCH = 1000

#: The keys an event object may have. Any other key is refused rather than
#: ignored: a typo (``"evnet"``) or a field this version does not know
#: (``"id"``, which the broker assigns) must not publish something else
#: than what the sender meant.
_TARGETS = ("topic", "topics", "client", "all")
_EVENT_KEYS = frozenset((*_TARGETS, "data", "event", "retry"))

#: One checked publish: ``(audience, target, event)``.
Item = tuple[Audience, str | None, SSEEvent]


class PublishError(RequestError):
    """A publish request refused, answered as ``{"error", "status"}`` plus
    ``"index"`` for an event of a batch, and with its own headers
    (``WWW-Authenticate`` on a 401)."""

    def __init__(
        self, status: int, message: str, index: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, message)
        self.message = message
        self.index = index
        self.headers = headers or {}

    def response(self) -> Response:
        body: dict[str, t.Any] = {"error": self.message, "status": self.status}
        if self.index is not None:
            body["index"] = self.index
        resp = jsonify(body)
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


def publish(broker: SSEBroker) -> list[str]:
    """Serve one ``POST /publish``: check access, parse and check every
    event, publish them; return their ids.

    :raises PublishError: refused, nothing published.
    :raises BackendError: the backend did not take the events (a 503).
    """
    _check_access(broker)
    items = parse_body(json_body_bytes(broker.config.max_publish_bytes), broker)
    return broker._publish_events(items)


def _check_access(broker: SSEBroker) -> None:
    """404 while publishing is off; then the key (401) and the hook (403)."""
    key = broker.config.publish_key
    hook = broker.config.can_publish
    if key is None and hook is None:
        raise PublishError(404, "not found")
    if key is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Both sides as bytes: compare_digest refuses non-ASCII str, and a
        # header may hold anything. The length of the key may leak; its
        # content does not.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), key.encode("utf-8")
        ):
            raise PublishError(
                401,
                "a valid 'Authorization: Bearer <key>' header is required",
                headers={"WWW-Authenticate": 'Bearer realm="sse-publish"'},
            )
    if hook is not None and not hook(request):
        raise PublishError(403, "not allowed to publish")


def _refuse_constant(name: str) -> t.NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: JSON has no infinity, and JSON.parse would choke
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def loads(raw: bytes) -> t.Any:
    """Parse a body as strict JSON: no NaN/Infinity, no number that overflows
    a float, no integer longer than Python's digit limit."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise PublishError(400, "the body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, the checks above
        raise PublishError(400, f"the body is not valid JSON: {str(e)[:200]}") from None


def parse_body(raw: bytes, broker: SSEBroker) -> list[Item]:
    """Turn a body into the publishes it asks for, all checked; or raise
    :exc:`PublishError` (``400``, with ``index`` for an event of a batch)."""
    body = loads(raw)
    if not isinstance(body, dict):
        raise PublishError(400, 'the body must be a JSON object: one event, or {"events": [...]}')
    if "events" not in body:
        single = parse_event(body, broker)
        if len(single) > MAX_BATCH:
            raise PublishError(400, f"at most {MAX_BATCH} publishes per request")
        return single
    if len(body) != 1:
        extra = sorted(k for k in body if k != "events")
        raise PublishError(400, f'a batch holds only "events"; unexpected {_names(extra)}')
    events = body["events"]
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        raise PublishError(400, f'"events" must be a list of 1 to {MAX_BATCH} events')
    items: list[Item] = []
    for index, event in enumerate(events):
        try:
            items.extend(parse_event(event, broker))
        except PublishError as e:
            raise PublishError(400, f"events[{index}]: {e.message}", index=index) from None
        if len(items) > MAX_BATCH:
            raise PublishError(
                400, f"events[{index}]: more than {MAX_BATCH} publishes in one request", index=index
            )
    return items


def parse_event(obj: t.Any, broker: SSEBroker) -> list[Item]:
    """One event object: exactly one target, ``data``, optional ``event``
    and ``retry``. ``"topics"`` expands to one publish per topic, in order."""
    if not isinstance(obj, dict):
        raise PublishError(400, "an event must be a JSON object")
    unknown = sorted(k for k in obj if k not in _EVENT_KEYS)
    if unknown:
        raise PublishError(400, f"unknown {_names(unknown)} (allowed: {_names(sorted(_EVENT_KEYS))})")
    targets = [k for k in _TARGETS if k in obj]
    if len(targets) != 1:
        raise PublishError(400, 'exactly one of "topic", "topics", "client" or "all" is required')
    event = _event(obj, broker.config.max_event_bytes)
    return [(audience, target, event) for audience, target in _targets(targets[0], obj[targets[0]], broker)]


def _event(obj: dict[str, t.Any], limit: int) -> SSEEvent:
    """The event's fields, checked and encoded (within ``limit`` bytes)."""
    if "data" not in obj:
        raise PublishError(400, '"data" is required (null is a valid value)')
    name = obj.get("event")
    if name is not None and (not isinstance(name, str) or not name):
        raise PublishError(400, '"event" must be a non-empty string')
    retry = obj.get("retry")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int) or retry < 0):
        raise PublishError(400, '"retry" must be a non-negative integer (milliseconds)')
    try:
        event = SSEEvent(obj["data"], event=name, retry=retry)
    except (ValueError, TypeError) as e:
        raise PublishError(400, str(e)[:300]) from None
    if len(event.body) > limit:
        raise PublishError(400, f"the event is {len(event.body)} bytes encoded, at most {limit} allowed")
    return event


def _targets(key: str, value: t.Any, broker: SSEBroker) -> list[tuple[Audience, str | None]]:
    """Who an event is for, from its one target key."""
    if key == "all":
        if value is not True:
            raise PublishError(400, '"all" must be true')
        return [(ALL, None)]
    if key == "client":
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
            raise PublishError(
                400, f'"client" must be a client id (printable, 1 to {MAX_ID_LENGTH} characters)'
            )
        return [(CLIENT, value)]
    if key == "topic":
        return [(TOPIC, _topic(value, broker))]
    if not isinstance(value, list) or not value:
        raise PublishError(400, '"topics" must be a non-empty list of topics')
    topics = [_topic(v, broker) for v in value]
    if len(set(topics)) != len(topics):
        raise PublishError(400, '"topics" lists a topic twice')
    return [(TOPIC, topic) for topic in topics]


def _topic(value: t.Any, broker: SSEBroker) -> str:
    if not isinstance(value, str):
        raise PublishError(400, "a topic must be a string")
    try:
        topic = broker.validate_topic(value)
    except (SSEError, ValueError) as e:
        raise PublishError(400, str(e)) from None
    if "*" in topic:
        # "*" makes a topic a pattern (or an invalid topic): subscribers may
        # hold patterns, an event goes to one concrete topic.
        raise PublishError(400, f"cannot publish to a pattern: {topic[:80]!r}")
    return topic


def _names(keys: t.Iterable[str]) -> str:
    return ", ".join(json.dumps(k[:40]) for k in list(keys)[:10])
