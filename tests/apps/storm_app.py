"""The test app with a Redis command pool of ``SSE_TEST_REDIS_POOL`` connections,
so a storm meets a pool far smaller than the connections in flight."""

from __future__ import annotations

import os

from flask import Flask

from flask_sse_broker.backends.redis import RedisBackend

from .serverapp import create_app as _create_app


def create_app() -> Flask:
    RedisBackend.pool_size = int(os.environ.get("SSE_TEST_REDIS_POOL", RedisBackend.pool_size))
    return _create_app()
