"""Browser fixtures: Debian's Chromium driven by Playwright, pages from real servers.

Import the fixtures into a test module (``from .browser_support import
browser, page``). Nothing is downloaded: Playwright drives the system's
``/usr/bin/chromium``; without it (or without the ``playwright`` package) the
browser tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import typing as t

import pytest

CHROMIUM = os.environ.get("SSE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: What Chromium needs to run headless as root in a container, and nothing that
#: would make it talk to anything but 127.0.0.1.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds a page may take to show what a test waits for. Generous: the
#: machine is small and shared.
WAIT_MS = 15_000


@pytest.fixture(scope="session")
def browser() -> t.Iterator[t.Any]:
    """One headless Chromium for the session."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: t.Any) -> t.Iterator[t.Any]:
    """A fresh page in a fresh context (own cookies, own connection pool).

    Console errors of the page are kept in ``page.console_errors``.
    """
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    new_page = context.new_page()
    new_page.console_errors = []
    new_page.on(
        "console", lambda msg: new_page.console_errors.append(msg.text) if msg.type == "error" else None
    )
    new_page.on("pageerror", lambda exc: new_page.console_errors.append(str(exc)))
    yield new_page
    context.close()


def open_page(page: t.Any, url: str) -> t.Any:
    """Load the test page of :mod:`tests.apps.browserapp` and wait for its module."""
    page.goto(url)
    page.wait_for_function("() => window.ready === true")
    return page


def wait_js(page: t.Any, expression: str, arg: t.Any = None, timeout: float = WAIT_MS) -> t.Any:
    """Wait until the JS function ``expression`` returns a truthy value; return it."""
    return page.wait_for_function(expression, arg=arg, timeout=timeout).json_value()


class Outage:
    """A TCP relay in front of a server, for a network outage on demand.

    Pages load through :meth:`url`; :meth:`cut` drops every relayed
    connection (both ends see it end, as after a cable pull the server finds
    out at its next heartbeat) and refuses new ones until :meth:`restore`.
    :meth:`stall` holds new connections instead (a request on its way);
    :meth:`restore` then relays those whose client is still there, and loses
    those it has closed meanwhile, as a network loses an aborted request.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self._down = False
        self._open = threading.Event()
        self._open.set()
        #: Held connections their client closed before the restore.
        self.lost = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down:
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        first = b""
        if not self._open.is_set():
            # Held: keep what the client sends; if it closes before the
            # restore, its request is lost (counted in ``lost``).
            client.setblocking(False)
            while True:
                released = self._open.wait(0.05)
                try:
                    while chunk := client.recv(65536):
                        first += chunk
                except BlockingIOError:
                    if released:
                        break
                    continue
                except OSError:
                    pass
                client.close()
                with self._lock:
                    self.lost += 1
                return
            client.setblocking(True)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
            upstream.sendall(first)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.update((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def stall(self) -> None:
        self._down = False
        self._open.clear()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for sock in (src, dst):
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._sockets.discard(sock)

    def cut(self) -> None:
        self._down = True
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._drop(sock)

    def restore(self) -> None:
        self._down = False
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()
