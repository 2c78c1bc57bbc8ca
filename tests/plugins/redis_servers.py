"""Redis for a test: a key prefix of its own on the shared Redis (deleted
afterwards), brokers sharing it (``cluster``), or a private ``redis-server``
the test may stop, freeze and restart."""

from __future__ import annotations

import typing as t

import pytest

from ..redis_support import SHARED_URL, Cluster, RedisServer, delete_prefix, new_prefix


@pytest.fixture
def prefix() -> t.Iterator[str]:
    value = new_prefix()
    yield value
    delete_prefix(SHARED_URL, value)


@pytest.fixture
def cluster(prefix: str) -> t.Iterator[Cluster]:
    c = Cluster(SHARED_URL, prefix)
    yield c
    c.close()


@pytest.fixture
def private_redis() -> t.Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()
