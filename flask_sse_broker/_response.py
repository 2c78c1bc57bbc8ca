"""The response of an event stream, and whether its stream may write its own
chunks.

A WSGI server writes each ``bytes`` the stream yields; gunicorn frames each as
one chunk of the chunked transfer coding (size line, data, CRLF) and sends it
with gevent's ``sendall`` (which also asks the socket for its buffer size).
A stream that frames its chunks itself writes the same bytes with less: one
``send`` per batch, each event's chunk made once for all its recipients, and
under gevent no switch into the stream's greenlet at all
(:meth:`SSEConnection._write_to`).

That is only right where the server would have framed chunks exactly so:
gunicorn's own ``Response`` (not a subclass, which may frame otherwise), with
``chunked`` set when the response started (HTTP/1.1, no ``Content-Length``,
a body; never under ``--protocol uwsgi``). It is found from the
``start_response`` the server passed in: a bound method of that object. Behind
a middleware that wraps ``start_response``, or any other server, the stream
yields its bytes as before.
"""

from __future__ import annotations

import typing as t
from functools import partial

from flask import Response

from ._connection import SSEConnection


class StreamResponse(Response):
    """The response of ``/connect``: a :class:`flask.Response` whose body is
    an :class:`SSEConnection`, which it hands the server's chunked response
    object when there is one."""

    #: Trim the WSGI environ once the stream has started
    #: (``SSEConfig.trim_environ``; see :func:`trim_environ`).
    trim_environ = False

    def __call__(self, environ: t.Any, start_response: t.Any) -> t.Any:
        body = super().__call__(environ, start_response)
        if isinstance(body, SSEConnection):
            out = chunked_response(start_response)
            if out is not None:
                body._write_to(out)
                if self.trim_environ and type(environ) is dict:
                    body._after_head = partial(trim_environ, environ)
        return body


#: What :func:`trim_environ` keeps: every key gunicorn's access log reads
#: (its ``h``, ``u``, ``r``, ``m``, ``U``, ``q``, ``H``, ``f`` and ``a`` atoms)
#: and the rest of the request line.
KEPT_ENVIRON = frozenset(
    {
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "REQUEST_METHOD",
        "RAW_URI",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "SERVER_PROTOCOL",
        "HTTP_REFERER",
        "HTTP_USER_AGENT",
        "HTTP_AUTHORIZATION",
    }
)


def trim_environ(environ: dict[str, t.Any]) -> None:
    """Keep only :data:`KEPT_ENVIRON` of a stream's WSGI environ.

    gunicorn keeps a request's environ until the response ends (its access
    log and ``post_request`` hook get it then), so for an event stream, for
    hours: a dict of some thirty entries, a copy of every request header
    under its ``HTTP_`` name, the request body's reader and the early-hints
    callback, about 1.5 KB of the ~15 KiB an idle stream costs. PEP 3333
    lets the application change the environ; this runs once the stream's
    first chunk is out, after Flask's teardown and any middleware's return,
    and rebuilds the dict (a dict never shrinks its table on ``del``).
    """
    kept = {key: environ[key] for key in KEPT_ENVIRON if key in environ}
    environ.clear()
    environ.update(kept)


def chunked_response(start_response: t.Any) -> t.Any:
    """gunicorn's response object behind ``start_response`` when it frames
    the body in chunks, else ``None``."""
    out = getattr(start_response, "__self__", None)
    kind = type(out)
    if kind.__name__ != "Response" or kind.__module__ != "gunicorn.http.wsgi":
        return None
    if getattr(out, "chunked", False) is not True or getattr(out, "sock", None) is None:
        return None
    if not hasattr(out, "headers_sent") or not callable(getattr(out, "send_headers", None)):
        return None
    return out
