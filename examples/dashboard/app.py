"""A live dashboard: every feature of flask-sse-broker on one page.

Run it with one command, from the repository root::

    python examples/dashboard/app.py

and open http://127.0.0.1:5000 in two browsers (log in as alice in one, bob in
the other). The in-process broker needs no Redis. The same module runs
unchanged under gevent::

    gunicorn -k gevent -w 1 -b 127.0.0.1:5000 'examples.dashboard.app:create_app()'

(One worker: with the in-process backend each worker has its own broker, so a
job started in one worker would not reach streams held by another. Set
``SSE_REDIS_URL`` to run several.)
"""

from __future__ import annotations

import os
import threading
import time

from flask import Flask, redirect, render_template, request, session, url_for

from flask_sse_broker import SSEBroker, SSEConfig, SSEHelper, setup_sse

USERS = ("alice", "bob")
#: The topics a page may subscribe to; anything else is refused (403).
TOPICS = ("news", "alerts", "jobs")


def current_user() -> str | None:
    """The client id of a logged-in user is their name, so ``send("bob", ...)``
    reaches every tab bob has open. Anonymous visitors get a random id."""
    return session.get("user")


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dashboard-demo-secret")
    broker = SSEBroker(
        SSEConfig(
            identify=current_user,
            authorize=lambda topic: topic in TOPICS,
            # GET /_sse/stats, from this machine only.
            stats=lambda: request.remote_addr == "127.0.0.1",
        )
    )
    setup_sse(app, broker)
    sse = SSEHelper(broker)
    step_seconds = float(os.environ.get("DASHBOARD_JOB_STEP", "0.3"))

    def run_job(started_by: str) -> None:
        # A plain thread (a greenlet under gevent), publishing from sync code.
        for percent in range(0, 101, 10):
            sse.progress_topic("jobs", percent, f"step {percent // 10} of 10")
            time.sleep(step_seconds)
        sse.notify_topic("jobs", {"title": "Job finished", "body": f"started by {started_by}"})

    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html",
            user=current_user(),
            users=USERS,
            # Embedded so the page resumes from here: nothing published between
            # this render and the stream opening is missed.
            last_event_id=broker.last_event_id(),
        )

    @app.post("/login")
    def login():  # type: ignore[no-untyped-def]
        user = request.form.get("user")
        if user in USERS:
            session["user"] = user
        else:
            session.pop("user", None)
        return redirect(url_for("index"))

    @app.post("/jobs")
    def start_job() -> tuple[dict[str, str], int]:
        threading.Thread(target=run_job, args=(current_user() or "a visitor",), daemon=True).start()
        return {"status": "started"}, 202

    @app.post("/alerts")
    def raise_alert() -> tuple[dict[str, int], int]:
        level = request.form.get("level", "warning")
        queued = sse.alert_topic("alerts", level, request.form.get("message") or "Disk almost full")
        return {"queued": queued}, 200

    @app.post("/news")
    def publish_news() -> tuple[dict[str, int], int]:
        queued = sse.notify_topic("news", {"title": "News", "body": time.strftime("Published at %H:%M:%S")})
        return {"queued": queued}, 200

    @app.post("/messages")
    def send_message() -> tuple[dict[str, int], int]:
        to = request.form.get("to", "")
        if to not in USERS:
            return {"queued": 0}, 400
        body = request.form.get("body") or "Hello!"
        queued = sse.notify(to, {"title": f"Message from {current_user() or 'a visitor'}", "body": body})
        return {"queued": queued}, 200

    return app


app = create_app()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
