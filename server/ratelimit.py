"""Per-key rate limits with the generic cell rate algorithm (GCRA).

Pure: the caller passes the time. GCRA keeps one number per key (the
theoretical arrival time), allows a burst of the whole per-window allowance,
and yields an exact Retry-After. Memory is bounded by `max_keys`: keys whose
allowance has fully recovered are dropped first, then the oldest.
"""

from __future__ import annotations

import math


class RateLimiter:
    """Allows at most `limit` events per `window_s` seconds per key."""

    __slots__ = ("_max_keys", "_tat", "_window")

    def __init__(self, *, window_s: float = 60.0, max_keys: int = 100_000) -> None:
        self._window = window_s
        self._max_keys = max_keys
        self._tat: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def acquire(self, key: str, limit: int, now: float) -> float | None:
        """Take one event for `key`: None if allowed, else seconds to wait."""
        interval = self._window / limit
        tat = max(self._tat.get(key, now), now)
        allow_at = tat + interval - self._window
        if now < allow_at:
            return max(1.0, math.ceil(allow_at - now))
        if key not in self._tat and len(self._tat) >= self._max_keys:
            self._evict(now)
        self._tat[key] = tat + interval
        return None

    def _evict(self, now: float) -> None:
        # Free a tenth of the table at once so a flood of new keys costs one
        # scan per max_keys/10 insertions, not one per insertion.
        target = self._max_keys - max(1, self._max_keys // 10)
        for k in [k for k, t in self._tat.items() if t <= now]:
            del self._tat[k]
        while len(self._tat) > target:
            del self._tat[next(iter(self._tat))]
