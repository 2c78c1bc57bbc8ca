"""A synchronous SSE consumer, for services, scripts and tests.

::

    from flask_sse_broker.client import EventSource

    with EventSource("http://127.0.0.1:5000/_sse/connect", topics=["orders"]) as source:
        for event in source:
            print(event.event, event.json())

It speaks the protocol of this library's server, and plain SSE to any other,
the way a browser's ``EventSource`` does (WHATWG HTML 9.2, "Server-sent
events"): events are decoded by the spec-correct
:mod:`flask_sse_broker._decoder`; redirects are followed; a lost stream is
reopened after the server's ``retry:`` time or a jittered exponential backoff,
whichever is longer, resuming from the last event id (``Last-Event-ID``
header, UTF-8) with the client's token (``token=``), so the server replays
what was published while the consumer was away. A stream that goes silent for
longer than the server's heartbeat allows is treated as lost, not waited on
forever.

Only the standard library is used (:mod:`http.client`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import typing as t
import urllib.parse

from ._backoff import EqualJitterBackoff
from ._decoder import EventDecoder, ServerSentEvent, iter_events
from .exceptions import SSEError

__all__ = ["EventSource", "RetriesExhausted", "SSEResponseError", "ServerSentEvent"]

logger = logging.getLogger("flask_sse_broker.client")

#: The statuses a browser's fetch follows as redirects (with a ``Location``).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Request headers that carry credentials: never sent on to another origin.
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


class SSEResponseError(SSEError):
    """The server answered something other than an event stream: a 4xx or 204
    status, a 200 that is not ``text/event-stream`` (the wrong URL), or a
    redirect that cannot be followed (no ``Location``, not http(s), too many).
    Retrying the same request cannot help, so it is raised, not retried.

    :param status: the HTTP status.
    :param content_type: the response's ``Content-Type``.
    :param message: the server's ``error`` message when it sent JSON, else the
        start of the body.
    """

    def __init__(self, url: str, status: int, content_type: str, message: str) -> None:
        super().__init__(f"{url} answered {status} ({content_type or 'no content type'}): {message}")
        self.url = url
        self.status = status
        self.content_type = content_type
        self.message = message


class RetriesExhausted(SSEError):
    """The stream could not be reopened within ``max_retries`` attempts.

    :param attempts: how many attempts were made.
    :param last_error: the error of the last attempt (also ``__cause__``).
    """

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last_error!r}")
        self.attempts = attempts
        self.last_error = last_error


class _Transient(Exception):
    """A failure worth retrying (5xx, a dropped stream); carries a minimum delay."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EventSource:
    """Iterate the events of one SSE URL, across reconnects.

    Iterating yields :class:`~flask_sse_broker._decoder.ServerSentEvent`
    objects (``.event``, ``.data``, ``.id``, ``.json()``) in order. Heartbeats
    and this server's ``connected`` event are consumed here (the latter sets
    :attr:`client_id`, :attr:`token`, :attr:`topics` and the read timeout);
    ``reset`` is yielded, because it tells the consumer that events were missed
    and its state should be reloaded.

    Iteration ends when :meth:`close` is called (from any thread) or, with
    ``reconnect=False``, when the stream ends.

    Where it follows a browser's ``EventSource``:

    * The last event id is the one of the last *dispatched frame*, with or
      without data; an empty ``id`` clears it, and then no ``Last-Event-ID``
      is sent. It goes back UTF-8 encoded, as the spec says.
    * ``retry:`` sets the reconnection time wherever it stands (the server's
      ``connected`` frame carries one). The wait before a reconnect is the
      longer of that time and the backoff, which grows with consecutive
      failures.
    * The media type is compared case-insensitively, parameters ignored.
    * 301, 302, 303, 307 and 308 with a ``Location`` are followed, at most
      :attr:`max_redirects` in a row, to http(s) URLs only; credentials
      (``Authorization``, ``Cookie``) are not sent on to another origin.
      Reconnects start again from the original URL, as a browser's do.

    Where it differs, on purpose: 5xx, 408, 425 and 429 are retried (honouring
    ``Retry-After``) instead of ending the stream, because a service should
    ride out a restart; and a 401 or 403 to a request that presented a token
    is retried once at once without the token, as a new client (the server's
    key may have changed), keeping the last event id. A 401 or 403 without a
    token raises :exc:`SSEResponseError`.

    :param url: the stream URL, e.g. ``http://host/_sse/connect``.
    :param topics: topics to subscribe to when connecting.
    :param last_event_id: where to resume from.
    :param token: a token from an earlier ``connected`` event, to be the same
        client again.
    :param headers: extra request headers (cookies, authorization).
    :param reconnect: reopen the stream when it ends or fails.
    :param max_retries: failed attempts in a row before :exc:`RetriesExhausted`;
        ``None`` retries forever.
    :param on_connect: called with the ``connected`` event's data each time a
        stream opens.
    :raises SSEResponseError: the URL does not serve an event stream.
    :raises RetriesExhausted: ``max_retries`` failed attempts in a row.
    """

    #: First backoff delay in seconds; doubles per failed attempt, jittered.
    reconnect_delay = 1.0
    #: Cap of the backoff delay in seconds.
    max_reconnect_delay = 30.0
    #: Seconds to wait for the connection and the response headers.
    connect_timeout = 10.0
    #: Read timeout when the server announces no heartbeat; ``None`` waits forever.
    read_timeout: float | None = None
    #: Silence allowed, in heartbeat periods, before the stream counts as lost.
    heartbeat_factor = 2.5
    #: Status codes that mean "later", not "never".
    retry_statuses = frozenset({408, 425, 429})
    #: Redirects followed in a row before giving up (a browser's fetch allows 20).
    max_redirects = 10

    def __init__(
        self,
        url: str,
        *,
        topics: t.Iterable[str] = (),
        last_event_id: str | None = None,
        token: str | None = None,
        headers: t.Mapping[str, str] | None = None,
        reconnect: bool = True,
        max_retries: int | None = None,
        on_connect: t.Callable[[dict[str, t.Any]], None] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._parts = parts
        # ``topics``, ``lastEventId`` and ``token`` may come in the URL too; they
        # change as the stream goes, so they are kept here, not in the URL.
        query = urllib.parse.parse_qs(parts.query)
        in_url = [name for value in query.get("topics", ()) for name in value.split(",") if name]
        self.topics: list[str] = list(dict.fromkeys([*in_url, *topics]))
        # One decoder for the source's life: it holds the last event id and the
        # reconnection time, which a browser keeps on the EventSource object.
        self._decoder = EventDecoder(last_event_id or query.get("lastEventId", [""])[-1])
        #: The capability that keeps the same client id across reconnects.
        self.token = token or query.get("token", [None])[-1]
        #: The client id the server assigned (``None`` until connected).
        self.client_id: str | None = None
        #: The server's heartbeat period in seconds (``0`` when it sends none).
        self.heartbeat: float | None = None
        self.headers = dict(headers or {})
        self.reconnect = reconnect
        self.max_retries = max_retries
        self.on_connect = on_connect
        self._closed = threading.Event()
        self._failures = 0
        self._conn: http.client.HTTPConnection | None = None
        self._sock: socket.socket | None = None
        self._conn_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<EventSource {self.url!r} last_event_id={self.last_event_id!r}>"

    @property
    def last_event_id(self) -> str:
        """The id of the last frame received: where a reconnect resumes."""
        return self._decoder.last_event_id

    @last_event_id.setter
    def last_event_id(self, value: str) -> None:
        self._decoder.last_event_id = value

    @property
    def reconnection_time(self) -> float | None:
        """The server's ``retry:`` in seconds, ``None`` until it sent one."""
        retry = self._decoder.reconnection_time
        return None if retry is None else retry / 1000

    # -- public ----------------------------------------------------------------

    def __iter__(self) -> t.Iterator[ServerSentEvent]:
        self._failures = 0
        while not self._closed.is_set():
            error: BaseException | None = None
            delay = 0.0
            try:
                for event in self._stream():
                    self._failures = 0
                    yield event
            except SSEResponseError as e:
                if e.status not in (401, 403) or self.token is None or self._closed.is_set():
                    raise
                # The server may have a new key (rotation, a restart without a
                # fixed SECRET_KEY): be a new client rather than give up. A
                # refusal without the token is final (e.g. a topic refused).
                logger.warning("%s refused the token (%s); reconnecting as a new client", self.url, e.status)
                self.token = None
                continue
            except _Transient as e:
                error, delay = e, e.retry_after
            except (OSError, http.client.HTTPException) as e:
                error = e
            finally:
                self._disconnect()
            if self._closed.is_set() or not self.reconnect:
                return
            if error is None:
                logger.info("the stream of %s ended; reconnecting", self.url)
            else:
                self._failures += 1
                if self.max_retries is not None and self._failures > self.max_retries:
                    raise RetriesExhausted(self._failures, error) from error
                logger.info("the stream of %s failed (%s); retry %d", self.url, error, self._failures)
            delay = max(delay, self.reconnection_time or 0.0, self._backoff(max(self._failures, 1)))
            self._closed.wait(delay)

    def close(self) -> None:
        """Stop iterating: the loop ends at once, even if blocked reading."""
        self._closed.set()
        self._disconnect()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one stream --------------------------------------------------------------

    def _stream(self) -> t.Iterator[ServerSentEvent]:
        """Open the stream and yield its events until it ends."""
        response = self._open()
        for event in iter_events(iter(lambda: response.read1(65536), b""), self._decoder):
            if not event.event or event.event == "heartbeat":
                # A frame of only ``retry:`` (the server is going away and says
                # when to come back), or the server's keep-alive.
                continue
            if event.event == "connected":
                self._on_connected(event)
                continue
            yield event

    def _open(self) -> http.client.HTTPResponse:
        """Send the request, following redirects; return the stream's response."""
        url = urllib.parse.urlunsplit(self._parts._replace(query=self._query(), fragment=""))
        headers: dict[str, str | bytes] = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        headers.update(self.headers)
        if self.last_event_id:
            # The spec sends it UTF-8 encoded; str would go out as Latin-1.
            headers["Last-Event-ID"] = self.last_event_id.encode("utf-8", "replace")
        for _ in range(self.max_redirects + 1):
            response = self._request(url, headers)
            if response.status not in _REDIRECTS or not response.headers.get("Location"):
                break
            url, headers = self._redirect(url, response, headers)
            self._disconnect()
        else:
            raise SSEResponseError(
                self.url,
                response.status,
                response.headers.get("Content-Type", ""),
                f"more than {self.max_redirects} redirects",
            )
        self._check(response)
        self._set_timeout(self.read_timeout)
        return response

    def _request(self, url: str, headers: t.Mapping[str, str | bytes]) -> http.client.HTTPResponse:
        parts = urllib.parse.urlsplit(url)
        conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(parts.hostname, parts.port, timeout=self.connect_timeout)  # type: ignore[arg-type]
        with self._conn_lock:
            if self._closed.is_set():
                raise _Transient("closed")
            self._conn = conn
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers)
        # Kept apart: once a response says it closes the connection, the
        # connection object forgets its socket, but close() must still reach it.
        self._sock = conn.sock
        return conn.getresponse()

    def _redirect(
        self, url: str, response: http.client.HTTPResponse, headers: dict[str, str | bytes]
    ) -> tuple[str, dict[str, str | bytes]]:
        """Where a redirect leads, and the headers to send there."""
        location = urllib.parse.urljoin(url, response.headers["Location"].strip())
        target = urllib.parse.urlsplit(location)
        if target.scheme not in ("http", "https") or not target.hostname:
            content_type = response.headers.get("Content-Type", "")
            raise SSEResponseError(self.url, response.status, content_type, f"redirect to {location[:200]!r}")
        source = urllib.parse.urlsplit(url)
        if (source.scheme, source.hostname, source.port) != (target.scheme, target.hostname, target.port):
            headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIALS}
        logger.info("%s redirects (%s) to %s", url, response.status, location)
        return urllib.parse.urlunsplit(target._replace(fragment="")), headers

    def _query(self) -> str:
        """The URL's query, with this client's topics and token."""
        query = [
            (k, v)
            for k, v in urllib.parse.parse_qsl(self._parts.query, keep_blank_values=True)
            if k not in ("topics", "token", "lastEventId")
        ]
        if self.topics:
            query.append(("topics", ",".join(self.topics)))
        if self.token:
            query.append(("token", self.token))
        return urllib.parse.urlencode(query)

    def _check(self, response: http.client.HTTPResponse) -> None:
        content_type = response.headers.get("Content-Type", "")
        status = response.status
        # get_content_type() parses the parameters and lowercases the type; a
        # missing or malformed header reads as text/plain.
        if status == 200 and response.headers.get_content_type() == "text/event-stream":
            return
        body = response.read(4096).decode("utf-8", "replace")
        message = body[:200].strip()
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = str(json.loads(body)["error"])
        if status >= 500 or status in self.retry_statuses:
            raise _Transient(f"{status}: {message}", _retry_after(response))
        raise SSEResponseError(self.url, status, content_type, message)

    def _on_connected(self, event: ServerSentEvent) -> None:
        try:
            hello = event.json()
        except ValueError:
            return
        if not isinstance(hello, dict):
            return
        self.client_id = hello.get("clientId", self.client_id)
        self.token = hello.get("token") or self.token
        if isinstance(hello.get("topics"), list):
            # Sent on reconnect, so the subscriptions survive a server restart.
            self.topics = [str(topic) for topic in hello["topics"]]
        self._failures = 0
        heartbeat = hello.get("heartbeat")
        if isinstance(heartbeat, (int, float)) and not isinstance(heartbeat, bool):
            self.heartbeat = heartbeat / 1000
            timeout = self.heartbeat * self.heartbeat_factor if heartbeat > 0 else self.read_timeout
            self._set_timeout(timeout)
        if self.on_connect is not None:
            self.on_connect(hello)

    def _set_timeout(self, timeout: float | None) -> None:
        sock = self._sock
        if sock is not None:
            sock.settimeout(timeout)

    def _disconnect(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
            sock, self._sock = self._sock, None
        if conn is None:
            return
        if sock is not None:
            # Wakes a read blocked in another thread; close() alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        conn.close()

    def _backoff(self, attempt: int) -> float:
        # Built per call: reconnect_delay and max_reconnect_delay may be changed
        # on the instance at any time.
        return EqualJitterBackoff(self.reconnect_delay, self.max_reconnect_delay).compute(attempt)


def _retry_after(response: http.client.HTTPResponse) -> float:
    value = str(response.headers.get("Retry-After", ""))
    try:
        return min(max(float(value), 0.0), 300.0)
    except ValueError:
        return 0.0
