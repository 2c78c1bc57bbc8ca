"""The fixtures are plugins (``tests/plugins/``, ``tests/browser_support.py``),
so a test module names what it uses and the fixtures live beside their helpers."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

import flask_sse_broker

from .support import SERVER_KINDS, Server

pytest_plugins = (
    "tests.plugins.servers",
    "tests.plugins.redis_servers",
    "tests.browser_support",
)


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
