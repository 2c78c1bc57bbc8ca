"""flask-sse-broker under test: the blueprint plus a publish route."""

from __future__ import annotations

import os

from flask import Flask, request

from flask_sse_broker import SSEBroker, SSEConfig, create_blueprint

app = Flask(__name__)
app.config["SECRET_KEY"] = "bench"
broker = SSEBroker(
    SSEConfig(
        heartbeat_interval=float(os.environ.get("BENCH_HEARTBEAT", "5")),
        event_buffer_size=int(os.environ.get("BENCH_BUFFER", "100")),
        max_topics_per_connection=10,
        # The Redis mode (``ours-redis``): the same app, events through Redis.
        redis_url=os.environ.get("SSE_REDIS_URL") or None,
        redis_prefix=os.environ.get("SSE_REDIS_PREFIX", "flask_sse"),
    )
)
# Benchmarks of what an optimisation bought switch it off through its
# documented attribute (``ours-event``), never by patching internals.
broker.batched_wakeups = os.environ.get("BENCH_WAKE", "batched") == "batched"
# HTTP publish (``benchmarks.publish_http``) and metrics (``ours-metrics``),
# as Flask config so the app also runs a library without those settings.
if os.environ.get("BENCH_PUBLISH_KEY"):
    app.config["SSE_PUBLISH_KEY"] = os.environ["BENCH_PUBLISH_KEY"]
if os.environ.get("BENCH_METRICS"):
    app.config["SSE_METRICS"] = True
app.register_blueprint(create_blueprint(broker))


@app.post("/publish")
def publish() -> dict[str, int]:
    queued = broker.broadcast_to_topic(request.args["topic"], request.get_data(as_text=True))
    return {"queued": queued}
