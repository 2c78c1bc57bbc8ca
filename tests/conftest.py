"""Shared fixtures: a real server of each kind, started once per session."""

from __future__ import annotations

import os
import sysconfig
import typing as t
from pathlib import Path

import pytest

import flask_sse_broker

# The browser fixtures (headless Chromium through Playwright), shared by every module.
from .browser_support import browser, page  # noqa: F401
from .support import SERVER_KINDS, Server

#: The configuration the shared servers run with: short heartbeats so dead
#: clients are found quickly, a history long enough for the replay tests.
SHARED_CONFIG = {
    "SSE_HEARTBEAT_INTERVAL": 0.5,
    "SSE_EVENT_BUFFER_SIZE": 100,
    "SSE_HISTORY_SIZE": 2000,
    "SSE_MAX_TOPICS_PER_CONNECTION": 5,
    "SSE_MAX_TOPIC_LENGTH": 50,
    "SSE_MAX_CONNECTIONS": 2000,
}


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> t.Iterator[Server]:
    """The test app under each server model, with :data:`SHARED_CONFIG`."""
    srv = Server(request.param, config=SHARED_CONFIG, env={"SSE_TEST_AUTHZ": "secret"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server() -> t.Iterator[t.Callable[..., Server]]:
    """Start a server with its own configuration; stopped after the test."""
    started: list[Server] = []

    def make(kind: str, **kwargs: t.Any) -> Server:
        srv = Server(kind, **kwargs)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


# --- Which flask_sse_broker is under test -----------------------------------
#
# CI (``.ci/installed_tests.py``, run by tox and ``.ci/run``) sets
# SSE_TEST_INSTALLED=1 and runs a copy of tests/ outside the checkout against
# the wheel installed in a fresh venv. Then the run must fail at once if this
# process or any server process would import another flask_sse_broker (the
# checkout on sys.path shadows the installed package without a sound).
#: The endpoint of the test app that answers ``{"file": flask_sse_broker.__file__}``.
PACKAGE_ENDPOINT = "/test/package"
_package_report: list[str] = []


def _in_site_packages(file: str) -> bool:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    return Path(file).resolve().is_relative_to(site)


def _server_package_file(kind: str) -> str:
    with Server(kind) as srv:
        return srv.get_json(PACKAGE_ENDPOINT)["file"]  # type: ignore[no-any-return]


def pytest_sessionstart(session: pytest.Session) -> None:
    here = flask_sse_broker.__file__
    _package_report.append(f"flask_sse_broker {flask_sse_broker.__version__} from {here}")
    if not os.environ.get("SSE_TEST_INSTALLED"):
        return
    found = {"pytest": here} | {kind: _server_package_file(kind) for kind in SERVER_KINDS}
    wrong = {who: file for who, file in found.items() if not _in_site_packages(file)}
    if wrong:
        pytest.exit(
            "SSE_TEST_INSTALLED is set but flask_sse_broker is not the installed package "
            f"(site-packages: {sysconfig.get_paths()['purelib']}): {wrong}",
            returncode=3,
        )
    _package_report.append(f"installed package checked in pytest and in servers: {', '.join(SERVER_KINDS)}")


def pytest_report_header() -> list[str]:
    return _package_report
