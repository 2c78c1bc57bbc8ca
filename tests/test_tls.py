"""Streams over TLS (gunicorn ``--certfile``): a stream that writes its own
chunks must write them through the TLS socket, never the TCP socket beneath
it (gevent's ``SSLSocket`` keeps one in ``_sock``), heartbeats included."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import typing as t
from pathlib import Path

import pytest

from flask_sse_broker._decoder import iter_events

from .support import Server


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
    return context


class TLSServer(Server):
    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} server exited: {self.log()}")
        try:
            status, _ = self.request("GET", "/_sse/client.js")
        except OSError:
            return False
        return status < 500

    def request(self, method: str, path: str, body: t.Any = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=_context())
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("kind", ["gevent", "gthread"])
def test_events_and_heartbeats_reach_a_stream_over_tls_intact(
    kind: str, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = TLSServer(
        kind,
        config={"SSE_HEARTBEAT_INTERVAL": 0.2},
        gunicorn_args=["--certfile", str(cert), "--keyfile", str(key)],
    )
    with server:
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=_context())
        conn.request("GET", "/_sse/connect?topics=tls")
        response = conn.getresponse()
        assert response.status == 200
        events = iter_events(iter(lambda: response.read1(65536), b""))
        assert next(e for e in events if e.event).event == "connected"
        beats = 0
        for event in events:
            beats += event.event == "heartbeat"
            if beats == 3:
                break
        for i in range(3):
            status, _ = server.request("POST", "/test/publish", {"topic": "tls", "data": i})
            assert status == 200
        got: list[t.Any] = []
        for event in events:
            if event.event == "heartbeat":
                continue
            got.append(json.loads(event.data))
            if len(got) == 3:
                break
        assert got == [0, 1, 2]
        conn.close()
