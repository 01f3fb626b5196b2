"""Per-project token buckets for create rates (in memory: one API process owns its buckets)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hutch.services.clock import Clock


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBucket:
    """`rate_per_minute` tokens refill continuously; a burst of up to that many is allowed."""

    def __init__(self, rate_per_minute: int, clock: Clock) -> None:
        self.capacity = float(rate_per_minute)
        self.per_second = rate_per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """Spend one token for `key`: None if allowed, else seconds until one is available."""
        now = self.clock.monotonic()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = _Bucket(self.capacity, now)
            b.tokens = min(self.capacity, b.tokens + (now - b.at) * self.per_second)
            b.at = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return None
            return (1.0 - b.tokens) / self.per_second

    def give_back(self, key: str) -> None:
        """Return the token `take` spent for a request that will be taken again."""
        with self._lock:
            b = self._buckets.get(key)
            if b is not None:
                b.tokens = min(self.capacity, b.tokens + 1.0)
