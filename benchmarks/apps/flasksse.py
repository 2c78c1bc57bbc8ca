"""flask-sse (PyPI): a Redis pub/sub connection per stream. Run under gunicorn gevent."""

from __future__ import annotations

import os

from flask import Flask, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish() -> dict[str, int]:
    sse.publish(request.get_data(as_text=True), channel=request.args["topic"])
    return {"queued": -1}
