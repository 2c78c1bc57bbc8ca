"""What carries events between publishers and streams: in process, or through Redis.

The Redis backend is imported lazily by the broker, so ``redis`` is needed only
when ``redis_url`` is set.
"""

from __future__ import annotations

from .base import Backend, Replay
from .memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend", "Replay"]
