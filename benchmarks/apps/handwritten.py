"""The reference a user writes by hand: one ``queue.Queue`` per client, no
history, no limits, a comment as heartbeat. Run under gunicorn gevent."""

from __future__ import annotations

import os
import queue

from flask import Flask, Response, request

HEARTBEAT = float(os.environ.get("BENCH_HEARTBEAT", "5"))
app = Flask(__name__)
subscribers: dict[str, set[queue.Queue[str]]] = {}


@app.get("/stream")
def stream() -> Response:
    topic = request.args["topic"]
    q: queue.Queue[str] = queue.Queue()
    subscribers.setdefault(topic, set()).add(q)

    def events():
        try:
            yield ": hello\n\n"
            while True:
                try:
                    data = q.get(timeout=HEARTBEAT)
                except queue.Empty:
                    yield ": ping\n\n"
                    continue
                yield f"data: {data}\n\n"
        finally:
            subscribers[topic].discard(q)

    return Response(events(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.post("/publish")
def publish() -> dict[str, int]:
    data = request.get_data(as_text=True)
    targets = list(subscribers.get(request.args["topic"], ()))
    for q in targets:
        q.put(data)
    return {"queued": len(targets)}
