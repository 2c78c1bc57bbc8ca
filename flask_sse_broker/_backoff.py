"""One reconnection backoff, shared by the Python consumer and the Redis listener.

Equal jitter, as redis-py's ``EqualJitterBackoff``: the ceiling doubles per
failed attempt up to a cap, and the delay is drawn from ``[ceiling / 2,
ceiling]``, so a crowd of clients that lost the same server spreads out while
none of them retries sooner than half the ceiling.
"""

from __future__ import annotations

import random


class EqualJitterBackoff:
    """Delays for attempt 1, 2, 3, ...: ``base * 2 ** (attempt - 1)`` capped, then jittered."""

    def __init__(self, base: float, cap: float) -> None:
        if base < 0 or cap < 0:
            raise ValueError("backoff base and cap must not be negative")
        #: First ceiling, in seconds.
        self.base = base
        #: Largest ceiling, in seconds.
        self.cap = cap

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before attempt ``attempt`` (1-based)."""
        # min() before the power would overflow for a long outage.
        return float(min(self.cap, self.base * 2 ** min(max(attempt, 1) - 1, 64)))

    def compute(self, attempt: int) -> float:
        """A random delay in ``[ceiling / 2, ceiling]``."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + random.random() * ceiling / 2
