"""Browser fixtures: Debian's Chromium driven by Playwright, pages from real servers.

Import the fixtures into a test module (``from .browser_support import
browser, page``). Nothing is downloaded: Playwright drives the system's
``/usr/bin/chromium``; without it (or without the ``playwright`` package) the
browser tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
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
