"""The example dashboard, driven in a real browser under gunicorn gevent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

import pytest

from .support import ROOT, Server, free_port, http_request, wait_for

ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def dashboard() -> t.Iterator[Server]:
    """The dashboard exactly as its docstring runs it under gevent."""
    with Server("gevent", app="examples.dashboard.app:app", env={"DASHBOARD_JOB_STEP": "0.1"}) as srv:
        yield srv


def log_in(page: t.Any, srv: Server, user: str) -> None:
    page.goto(srv.url("/"))
    page.select_option("#login-user", user)
    page.click("#login")
    page.wait_for_selector(f"#user:text('{user}')")
    page.wait_for_selector("#state[data-state=connected]")


def test_one_command_starts_the_dashboard() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "examples/dashboard/app.py"],
        cwd=ROOT,
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def home() -> bool:
            try:
                return http_request("GET", f"http://127.0.0.1:{port}/", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(home, 30, 0.1, "the dashboard to answer")
    finally:
        proc.terminate()
        proc.wait(10)


def test_job_progress_reaches_100_and_a_toast_is_shown(page: t.Any, dashboard: Server) -> None:
    log_in(page, dashboard, "alice")
    page.click("#start-job")
    page.wait_for_selector("#progress[aria-valuenow='100']")
    page.wait_for_selector(".toast:has-text('Job finished')")
    assert page.text_content("#progress-text").startswith("100%")
    assert page.text_content("#client-id") == "alice"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert page.console_errors == []


def test_personal_messages_and_topic_toggles(browser: t.Any, page: t.Any, dashboard: Server) -> None:
    bob_context = browser.new_context()
    try:
        bob = bob_context.new_page()
        log_in(page, dashboard, "alice")
        log_in(bob, dashboard, "bob")

        # A message to bob reaches bob only.
        page.fill("#message-body", "lunch?")
        page.select_option("#message-to", "bob")
        page.click("#send-message")
        bob.wait_for_selector(".toast:has-text('Message from alice: lunch?')")

        # Bob switches alerts off: the next alert reaches alice only.
        bob.uncheck("input.topic[value=alerts]")
        bob.wait_for_function("() => !document.querySelector('input.topic[value=alerts]').disabled")
        page.click("#raise-alert")
        page.wait_for_selector("#alerts li")
        # News, published after the alert, reaches bob: had the alert reached him, it would be there.
        page.click("#publish-news")
        bob.wait_for_selector(".toast:has-text('News')")
        assert bob.locator("#alerts li").count() == 0
        assert page.locator(".toast:has-text('lunch?')").count() == 0
    finally:
        bob_context.close()


def test_only_the_dashboard_topics_are_allowed(dashboard: Server) -> None:
    status, body = http_request("GET", dashboard.url("/_sse/connect?topics=nope"))
    assert status == 403
    assert b"not authorised" in body


def test_tabs_of_one_browser_share_one_stream(browser: t.Any, page: t.Any) -> None:
    # A server of its own: no stream of another test lingers in its counts.
    dashboard = Server("gevent", app="examples.dashboard.app:app", env={"DASHBOARD_JOB_STEP": "0.1"})
    with dashboard:
        _tabs_share_one_stream(browser, page, dashboard)


def _tabs_share_one_stream(browser: t.Any, page: t.Any, dashboard: Server) -> None:
    def connections() -> int:
        return json.loads(http_request("GET", dashboard.url("/_sse/stats"))[1])["connections"]  # type: ignore[no-any-return]

    log_in(page, dashboard, "alice")
    before = connections()
    tabs = [page]
    for _ in range(3):
        tab = page.context.new_page()
        tab.goto(dashboard.url("/"))
        tab.wait_for_selector("#state[data-state=connected]")
        tabs.append(tab)
    assert all(tab.text_content("#stream") == "shared by this browser's tabs" for tab in tabs)
    # Three more tabs, no more streams (the anonymous page before the login may
    # still be counted in `before` until the server's next heartbeat).
    assert connections() <= before

    tabs[1].click("#start-job")
    for tab in tabs:
        tab.wait_for_selector("#progress[aria-valuenow='100']")
        tab.wait_for_selector(".toast:has-text('Job finished')")
    # A personal message to alice reaches every one of her tabs.
    bob_context = browser.new_context()
    try:
        bob = bob_context.new_page()
        log_in(bob, dashboard, "bob")
        bob.fill("#message-body", "all tabs?")
        bob.select_option("#message-to", "alice")
        bob.click("#send-message")
        for tab in tabs:
            tab.wait_for_selector(".toast:has-text('Message from bob: all tabs?')")
    finally:
        bob_context.close()
