"""What carries events between publishers and streams: in process, or through Redis.

:class:`Backend` documents the contract (``backends/base.py``). The Redis
backend is imported lazily, so ``redis`` is needed only when ``redis_url`` is
set.
"""

from __future__ import annotations

import typing as t

from .base import Backend, Replay
from .memory import MemoryBackend

if t.TYPE_CHECKING:
    from ..config import SSEConfig

__all__ = ["Backend", "MemoryBackend", "Replay", "backend_for"]


def backend_for(config: SSEConfig) -> Backend:
    """The backend ``config`` selects: Redis for a ``redis_url``, else in process."""
    if config.redis_url and config.redis_cluster:
        from ._redis_cluster import RedisClusterBackend

        return RedisClusterBackend(
            config.redis_url, history_size=config.history_size, prefix=config.redis_prefix
        )
    if config.redis_url:
        from .redis import RedisBackend

        return RedisBackend(config.redis_url, history_size=config.history_size, prefix=config.redis_prefix)
    return MemoryBackend(config.history_size)
