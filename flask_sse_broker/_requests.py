"""What the routes read from a request, each piece checked before it touches
the broker: topics from the query, the JSON body, the client a request acts
as, and the app's ``authorize`` hook.

Every query parameter, header and body comes from the network and is treated
as hostile; a request that fails a check raises :exc:`RequestError` (an
:exc:`SSEError` with its own status) and leaves no state behind.
"""

from __future__ import annotations

import json
import logging
import typing as t

from flask import request

from ._broker import SSEBroker
from ._wire import validate_client_id
from .exceptions import SSEError
from .tokens import load_token

logger = logging.getLogger("flask_sse_broker")

#: Largest JSON body accepted by ``/subscribe`` and ``/unsubscribe``.
MAX_BODY_BYTES = 64 * 1024


class RequestError(SSEError):
    """A request the routes refuse, with the status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def query_topics(broker: SSEBroker) -> frozenset[str]:
    """``?topics=a,b&topics=c``, validated (400)."""
    names = [name.strip() for value in request.args.getlist("topics") for name in value.split(",")]
    return broker.validate_topics(name for name in names if name)


def last_event_id() -> str | None:
    """The cursor to resume from; the ``Last-Event-ID`` header wins."""
    return request.headers.get("Last-Event-ID") or request.args.get("lastEventId") or None


def json_body_bytes(limit: int) -> bytes:
    """The raw body of a JSON request: 415 for another media type, 413 over
    ``limit`` bytes (declared or sent: a chunked body has no length)."""
    if request.mimetype != "application/json":
        raise RequestError(415, "the body must be application/json")
    if (request.content_length or 0) > limit:
        raise RequestError(413, f"the body is larger than {limit} bytes")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise RequestError(413, f"the body is larger than {limit} bytes")
    return raw


def topics_body() -> tuple[str, list[t.Any]]:
    """Parse ``{"token": ..., "topics": [...]}``: 415, 413 or 400 on failure."""
    raw = json_body_bytes(MAX_BODY_BYTES)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, 'the body must be a JSON object {"token": ..., "topics": [...]}')
    token = body.get("token")
    topics = body.get("topics")
    if not isinstance(token, str):
        raise RequestError(400, '"token" must be a string')
    if not isinstance(topics, list):
        raise RequestError(400, '"topics" must be a list of strings')
    return token, topics


def client_id_for(broker: SSEBroker, token: str | None) -> str | None:
    """The client id a request acts as: the token's (which ``identify`` must
    agree with), else the identified user's, else ``None``."""
    identified = _identify(broker)
    if token is None:
        return identified
    client_id = load_token(token)
    if client_id is None:
        raise RequestError(403, "invalid token")
    if identified is not None and identified != client_id:
        raise RequestError(403, "the token belongs to another client")
    return client_id


def stream_client_id(broker: SSEBroker, token: str | None) -> tuple[str | None, bool]:
    """The client id a stream opens for (``None``: a new one), and whether
    the token was stale.

    A token this app cannot verify (signed with a rotated or lost
    ``SECRET_KEY``, or garbage) is no reason to refuse the user: the stream
    opens as a new client instead. A token that verifies but belongs to
    another identified user is still refused (403), as in :func:`client_id_for`.
    """
    if token is not None and load_token(token) is None:
        logger.info("a stream presented a token this app did not sign: opening it as a new client")
        return _identify(broker), True
    return client_id_for(broker, token), False


def _identify(broker: SSEBroker) -> str | None:
    identify = broker.config.identify
    if identify is None:
        return None
    client_id = identify()
    if client_id is None:
        return None
    try:
        return validate_client_id(str(client_id))
    except ValueError as e:
        raise RequestError(400, str(e)) from None


def authorize(broker: SSEBroker, topics: t.Iterable[str]) -> None:
    """Run the app's ``authorize`` hook on every topic (403)."""
    hook = broker.config.authorize
    if hook is None:
        return
    for topic in topics:
        if not hook(topic):
            raise RequestError(403, f"not authorised for topic {topic[:80]!r}")


def stream_socket() -> t.Any:
    """The client's socket, where the server exposes it (Werkzeug, gunicorn)."""
    return request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
