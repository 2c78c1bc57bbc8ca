"""A stream under gunicorn keeps only what gunicorn's access log reads of its
WSGI environ once it has started (``SSEConfig.trim_environ``): gunicorn holds
the environ for the stream's whole life. Flask's teardown still sees the
whole request, the access log line is complete, and ``trim_environ=False``
(or a server other than gunicorn) leaves the environ alone."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from flask_sse_broker._response import KEPT_ENVIRON

from .support import EventReader, Server, connect_url, wait_for

APP = "tests.apps.environapp:create_app()"
#: Short heartbeats: a closed stream is found, and ends, soon after.
FAST = {"SSE_HEARTBEAT_INTERVAL": 0.5}
HEADERS = {"X-Probe": "probe-value", "User-Agent": "trim-test-agent/1.0"}


def _environ_after_connect(srv: Server) -> dict[str, t.Any]:
    with EventReader(connect_url(srv, topics="a,b"), headers=HEADERS) as reader:
        reader.connected()
        return srv.get_json("/test/environ")


@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_a_started_stream_keeps_only_what_the_access_log_reads(
    make_server: t.Callable[..., Server], tmp_path: Path, kind: str
) -> None:
    access_log = tmp_path / "access.log"
    srv = make_server(
        kind,
        app=APP,
        config=FAST,
        gunicorn_args=["--access-logfile", str(access_log)],
    )
    seen = _environ_after_connect(srv)
    assert "HTTP_X_PROBE" not in seen["keys"]
    assert "wsgi.input" not in seen["keys"]
    assert set(seen["keys"]) <= KEPT_ENVIRON
    assert {"REQUEST_METHOD", "RAW_URI", "SERVER_PROTOCOL", "REMOTE_ADDR"} <= set(seen["keys"])
    assert seen["query"] == "topics=a%2Cb"
    assert seen["agent"] == "trim-test-agent/1.0"
    # Flask's teardown ran before the trim: it saw the whole request.
    assert seen["probes"] == ["probe-value"]

    # gunicorn writes the stream's access-log line once the stream ends,
    # from the trimmed environ: the request line and the user agent are there.
    def logged() -> bool:
        return access_log.exists() and "/_sse/connect?topics=a%2Cb" in access_log.read_text()

    wait_for(logged, timeout=15, what="the stream's access-log line")
    line = next(x for x in access_log.read_text().splitlines() if "/_sse/connect" in x)
    assert '"GET /_sse/connect?topics=a%2Cb HTTP/1.1" 200' in line
    assert "trim-test-agent/1.0" in line


@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_trim_environ_false_leaves_the_environ_whole(make_server: t.Callable[..., Server], kind: str) -> None:
    srv = make_server(kind, app=APP, config={**FAST, "SSE_TRIM_ENVIRON": False})
    seen = _environ_after_connect(srv)
    assert "HTTP_X_PROBE" in seen["keys"]
    assert "wsgi.input" in seen["keys"]


def test_other_servers_keep_the_environ_whole(make_server: t.Callable[..., Server]) -> None:
    srv = make_server("werkzeug", app=APP, config=FAST)
    seen = _environ_after_connect(srv)
    assert "HTTP_X_PROBE" in seen["keys"]
