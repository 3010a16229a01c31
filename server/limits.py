"""Rate limits that hold for one process or for every process sharing a Redis.

Both limiters run the same GCRA as `ratelimit.RateLimiter` (a burst of the
whole allowance, then one event every `window_s / limit` seconds, and
Retry-After = max(1, ceil(wait))). `LocalLimiter` keeps it in memory, the
single-process default. `RedisLimiter` keeps each key's theoretical arrival
time in Redis and updates it in one Lua script, so N processes share one
allowance per key. It fails open per process: while Redis errs or is slow,
each process limits with its own local fallback, and no request fails
because of the limiter.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .ratelimit import RateLimiter

log = logging.getLogger("scoreboard.limits")


class Limiter(Protocol):
    """Per-key rate limits: at most `limit` events per window per key."""

    async def acquire(self, key: str, limit: int, now: float) -> float | None:
        """Take one event for `key` at `now` (seconds): None if allowed, else seconds to wait."""
        ...


class LocalLimiter:
    """The limits of this process alone, in memory (`ratelimit.RateLimiter`)."""

    __slots__ = ("_limiter",)

    def __init__(self, *, window_s: float = 60.0, max_keys: int = 100_000) -> None:
        self._limiter = RateLimiter(window_s=window_s, max_keys=max_keys)

    def __len__(self) -> int:
        return len(self._limiter)

    async def acquire(self, key: str, limit: int, now: float) -> float | None:
        """Take one event for `key`: None if allowed, else seconds to wait."""
        return self._limiter.acquire(key, limit, now)


# KEYS: the keys' theoretical arrival times (TAT), seconds as "%.17g" so a
# double survives the round trip (Lua's tostring keeps 14 digits).
# ARGV: window_s, TTL in ms, then per key its limit and its now ("": the Redis
# server's TIME, read once). Keys are taken in order, so a key twice in one
# batch is limited as two calls in a row. The arithmetic is
# ratelimit.RateLimiter.acquire's, step for step, so both give the same
# answers for the same arrivals. Writing after TIME needs effects
# replication, the default since Redis 5.
_GCRA = """
local window = tonumber(ARGV[1])
local server_now
local waits = {}
for i, key in ipairs(KEYS) do
  local interval = window / tonumber(ARGV[1 + 2 * i])
  local now = tonumber(ARGV[2 + 2 * i])
  if now == nil then
    if server_now == nil then
      local t = redis.call("TIME")
      server_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
    now = server_now
  end
  local tat = tonumber(redis.call("GET", key)) or now
  if tat < now then
    tat = now
  end
  local allow_at = tat + interval - window
  if now < allow_at then
    waits[i] = math.max(1, math.ceil(allow_at - now))
  else
    redis.call("SET", key, string.format("%.17g", tat + interval), "PX", ARGV[2])
    waits[i] = 0
  end
end
return waits
"""

# A waiter's answer when Redis could not be asked: use the local fallback.
_LOCAL = -1


class RedisLimiter:
    """Limits shared by every process using one Redis; a local fallback while it is out.

    Each key is one Redis string, `<prefix>:rl:<key>` (the key's UTF-8 bytes
    as they are: Redis keys are binary-safe), holding its theoretical
    arrival time. It expires `window_s` after its last allowed event, when
    its allowance has fully recovered anyway, so idle keys cost nothing.

    The time is the Redis server's (`TIME` inside the script), not the
    caller's `now`: processes whose clocks disagree still share one
    allowance, and a process with a clock that jumps cannot grant itself a
    fresh burst. `server_time=False` uses the caller's `now` instead (tests
    that compare with `ratelimit.RateLimiter` under a fake clock).

    Calls are coalesced: the keys asked for while one script call is out go
    together in the next (at most `max_batch` keys each), so a process has
    one call in flight, one pooled connection busy, and one round trip's
    client work per batch, however many requests arrive at once. The
    script's keys may hash to different slots: one Redis, not a Cluster.

    A Redis error or an answer slower than `timeout_s` falls back to
    `fallback` (the request is limited per process, never refused with a
    500); Redis is then left alone for `retry_s`, so an outage costs one
    timeout per `retry_s`, not one per request. `rate_limit_fallback` is
    logged once per outage, `rate_limit_shared_again` when it ends.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        fallback: LocalLimiter,
        window_s: float = 60.0,
        timeout_s: float = 0.25,
        retry_s: float = 1.0,
        max_batch: int = 256,
        server_time: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._script = client.register_script(_GCRA)
        self._prefix = f"{prefix}:rl:".encode()
        self._head = (repr(float(window_s)), str(math.ceil(window_s * 1000)))
        self._fallback = fallback
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._max_batch = max_batch
        self._server_time = server_time
        self._clock = clock
        self._down = False
        self._next_try = 0.0
        self._queue: list[tuple[bytes, int, str, asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.fallbacks = 0
        self.calls = 0

    @property
    def shared(self) -> bool:
        """Whether the last look at Redis succeeded (False during an outage)."""
        return not self._down

    async def acquire(self, key: str, limit: int, now: float) -> float | None:
        """Take one event for `key` from the shared allowance (the local one if Redis is out)."""
        if self._down:
            if self._clock() < self._next_try:
                return await self._local(key, limit, now)
            # One request probes Redis; the others keep to the fallback meanwhile.
            self._next_try = self._clock() + self._retry_s
        # surrogatepass: a key is never refused for its text, whatever it holds.
        name = self._prefix + key.encode("utf-8", "surrogatepass")
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((name, limit, "" if self._server_time else repr(float(now)), answer))
        if self._sender is None:
            # Its own context: the batch serves many requests, so its logs carry none's id.
            self._sender = asyncio.get_running_loop().create_task(self._send(), context=contextvars.Context())
        wait = await answer
        if wait == _LOCAL:
            return await self._local(key, limit, now)
        return None if wait == 0 else float(wait)

    async def _local(self, key: str, limit: int, now: float) -> float | None:
        self.fallbacks += 1
        return await self._fallback.acquire(key, limit, now)

    async def _send(self) -> None:
        """Run the queued keys through the script, a batch at a time, until none are left."""
        batch: list[tuple[bytes, int, str, asyncio.Future[int]]] = []
        failed = False
        try:
            while self._queue and not failed:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                args = [*self._head]
                for _, limit, now, _ in batch:
                    args += (str(limit), now)
                self.calls += 1
                try:
                    async with asyncio.timeout(self._timeout_s):
                        waits = await self._script(keys=[item[0] for item in batch], args=args)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._failed(exc)
                    failed = True
                    waits = [_LOCAL] * len(batch)
                else:
                    if self._down:
                        self._down = False
                        log.info("rate_limit_shared_again")
                for (_, _, _, answer), wait in zip(batch, waits, strict=True):
                    if not answer.done():
                        answer.set_result(int(wait))
                batch = []
        finally:
            # Redis failed (or this task was cancelled): whoever still waits
            # limits locally rather than wait for another timeout.
            for *_, answer in batch + self._queue:
                if not answer.done():
                    answer.set_result(_LOCAL)
            self._queue = []
            self._sender = None

    def _failed(self, exc: BaseException) -> None:
        self._next_try = self._clock() + self._retry_s
        if self._down:
            return
        self._down = True
        log.warning("rate_limit_fallback", extra={"fields": {"error": repr(exc)}})
