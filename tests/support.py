"""Test infrastructure: real servers in subprocesses, real SSE readers.

Every server is a separate process listening on 127.0.0.1, started the way a
user would start it (``run_simple`` threaded, ``gunicorn -k gthread``,
``gunicorn -k gevent``); every stream is read over a real socket and decoded
with the spec-correct decoder of :mod:`flask_sse_broker._decoder`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.parse
from pathlib import Path

from flask_sse_broker._decoder import ServerSentEvent, iter_events

ROOT = Path(__file__).resolve().parent.parent
SERVER_KINDS = ("werkzeug", "gthread", "gevent")
DEFAULT_APP = "tests.apps.serverapp:create_app()"


#: The start of a script run in a subprocess under gevent: patched, the
#: broker imported, and ``Out``, what a stream reads of gunicorn's chunked
#: ``Response`` (``headers_sent``, ``send_headers``, ``sock``).
GEVENT_SCRIPT = r"""
import json, sys
from gevent import monkey
monkey.patch_all()
import gevent, greenlet, socket
from flask_sse_broker import SSEBroker, SSEConfig
from flask_sse_broker import _wake

class Out:
    headers_sent = False
    def __init__(self, sock):
        self.sock = sock
    def send_headers(self):
        self.headers_sent = True
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: t.Callable[[], t.Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> t.Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Server:
    """A real HTTP server process serving a Flask app factory.

    :param kind: ``"werkzeug"``, ``"gthread"`` or ``"gevent"``.
    :param app: ``"module:factory()"`` as gunicorn takes it.
    :param config: ``SSE_*`` Flask config keys for :mod:`tests.apps.serverapp`.
    """

    def __init__(
        self,
        kind: str,
        app: str = DEFAULT_APP,
        config: dict[str, t.Any] | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        port: int | None = None,
        gunicorn_args: t.Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.app = app
        self.port = port or free_port()
        self.workers = workers
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env["SSE_TEST_CONFIG"] = json.dumps(config or {})
        self.env.update(env or {})
        self.gunicorn_args = list(gunicorn_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ROOT / "tests" / "artifacts" / f"server-{kind}-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def command(self) -> list[str]:
        if self.kind == "werkzeug":
            return [sys.executable, "-m", "tests.apps.run_werkzeug", self.app, str(self.port)]
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(self.workers),
            "-b",
            f"127.0.0.1:{self.port}",
            "--limit-request-line",
            "0",
            "--graceful-timeout",
            "30",
            "--timeout",
            "120",
            "--log-level",
            "info",
        ]
        if self.kind == "gthread":
            cmd += ["-k", "gthread", "--threads", "200"]
        elif self.kind == "gevent":
            cmd += ["-k", "gevent", "--worker-connections", "10000"]
        else:
            raise ValueError(self.kind)
        return [*cmd, *self.gunicorn_args, self.app]

    def start(self, timeout: float = 30.0) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_for(self._ready, timeout, 0.05, f"{self.kind} server on {self.port}")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} server exited: {self.log()}")
        try:
            status, _ = http_request("GET", self.url("/_sse/client.js"), timeout=2)
        except OSError:
            return False
        return status < 500

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # conveniences for tests.apps.serverapp
    def post(self, path: str, body: t.Any) -> t.Any:
        status, data = http_request("POST", self.url(path), body)
        assert status == 200, (status, data)
        return json.loads(data)

    def get_json(self, path: str) -> t.Any:
        status, data = http_request("GET", self.url(path))
        assert status == 200, (status, data)
        return json.loads(data)

    def state(self) -> dict[str, t.Any]:
        return self.get_json("/test/state")  # type: ignore[no-any-return]

    def publish(self, topic: str | None = None, data: t.Any = None, **body: t.Any) -> int:
        if topic is not None:
            body["topic"] = topic
        return self.post("/test/publish", {"data": data, **body})["queued"]  # type: ignore[no-any-return]


def http_request(
    method: str,
    url: str,
    body: t.Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    raw: bytes | None = None,
) -> tuple[int, bytes]:
    """One plain HTTP request; JSON-encodes ``body`` unless ``raw`` is given."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        payload = raw
        if payload is None and body is not None:
            payload = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        path = parts.path + ("?" + parts.query if parts.query else "")
        conn.request(method, path, body=payload, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class QueuedEvents:
    """THE test reader: decodes a stream of chunks with
    :func:`flask_sse_broker._decoder.iter_events` in a background thread, into
    a queue a test awaits with a timeout. ``None`` in the queue marks the end
    of the stream. Heartbeats are counted and kept out of the queue unless
    ``keep_heartbeats``; ``retry`` remembers the last ``retry:`` hint.

    :class:`EventReader` reads an HTTP response with it,
    ``redis_support.ConnectionReader`` an in-process connection.
    """

    def __init__(self, keep_heartbeats: bool = False) -> None:
        self.events: queue.Queue[ServerSentEvent | None] = queue.Queue()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.keep_heartbeats = keep_heartbeats
        self.heartbeats = 0
        self.last_event_id = ""
        self.retry: int | None = None

    def _start(self, chunks: t.Iterable[bytes], errors: tuple[type[BaseException], ...] = ()) -> None:
        threading.Thread(target=self._read, args=(chunks, errors), daemon=True).start()

    def _read(self, chunks: t.Iterable[bytes], errors: tuple[type[BaseException], ...]) -> None:
        try:
            for event in iter_events(chunks):
                if event.retry is not None:
                    self.retry = event.retry
                if not event.event:
                    continue  # a retry-only frame; browsers dispatch nothing
                if event.event == "heartbeat":
                    self.heartbeats += 1
                    if not self.keep_heartbeats:
                        continue
                self.last_event_id = event.id
                self.events.put(event)
        except errors as e:
            self.error = e
        finally:
            self.ended.set()
            self.events.put(None)

    def next(self, timeout: float = 10.0) -> ServerSentEvent:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None
        if event is None:
            self.events.put(None)
            raise AssertionError(f"stream ended ({self.error!r})")
        return event

    def connected(self, timeout: float = 10.0) -> dict[str, t.Any]:
        event = self.next(timeout)
        assert event.event == "connected", event
        return json.loads(event.data)  # type: ignore[no-any-return]

    def take(self, count: int, timeout: float = 20.0) -> list[ServerSentEvent]:
        """The next ``count`` events, waiting at most ``timeout`` in total."""
        deadline = time.monotonic() + timeout
        return [self.next(max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def drain(self, quiet: float = 0.3) -> list[ServerSentEvent]:
        """Every event that arrives until none has for ``quiet`` seconds."""
        out = []
        while True:
            try:
                event = self.events.get(timeout=quiet)
            except queue.Empty:
                return out
            if event is None:
                self.events.put(None)
                return out
            out.append(event)

    def wait_ended(self, timeout: float = 10.0) -> bool:
        return self.ended.wait(timeout)


class EventReader(QueuedEvents):
    """Reads one event stream over a real socket, in a background thread."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        keep_heartbeats: bool = False,
        timeout: float = 30.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        path = parts.path + ("?" + parts.query if parts.query else "")
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        super().__init__(keep_heartbeats)
        self.status = self.response.status
        self.headers = self.response.headers
        self.body = b""
        if self.status == 200:
            response = self.response
            self._start(
                iter(lambda: response.read1(65536), b""),
                (OSError, ValueError, AttributeError, http.client.HTTPException),
            )
        else:
            self.body = self.response.read()
            self.ended.set()

    def close(self) -> None:
        """Close the socket abruptly, as a vanished browser would."""
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            # The reader thread holds the socket through the response's file:
            # let it see the end, then release the descriptor for real.
            self.ended.wait(5)
        self.response.close()
        if sock is not None:
            sock.close()
        self.conn.close()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_url(server: Server, **params: str) -> str:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return server.url("/_sse/connect" + ("?" + query if query else ""))


def worker_pids(srv: Server, count: int) -> list[int]:
    """The pids of the ``count`` workers of a gunicorn server, once all are up."""
    assert srv.proc is not None
    path = f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children"

    def children() -> list[int]:
        with open(path) as f:
            pids = [int(p) for p in f.read().split()]
        return pids if len(pids) == count else []

    return sorted(wait_for(children, 20, what=f"{count} gunicorn workers"))


@contextlib.contextmanager
def only_worker(pid: int, workers: list[int]) -> t.Iterator[None]:
    """Pause every other worker, so the next connection is accepted by ``pid``
    (a gevent worker accepts greedily: one would otherwise take them all)."""
    others = [w for w in workers if w != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)
