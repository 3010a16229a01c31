"""Rate limits shared over a real Redis: the Lua GCRA, its fallback, and two servers.

The script is checked against `ratelimit.RateLimiter` answer for answer (the
caller's clock, `server_time=False`) and with Redis's own clock; outages are
real (`redis-server` killed, or a socket that never answers). The server
tests run two servers in this process over one PostgreSQL and one Redis.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from scoreboard.limits import LocalLimiter, RedisLimiter
from scoreboard.ratelimit import RateLimiter
from tests.conftest import StartServer
from tests.helpers import FakeClock, ServerHandle, bearer, ticket, token
from tests.redisserver import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway, empty redis-server."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of `redis_server`."""
    redis = Redis.from_url(redis_server.url)
    try:
        yield redis
    finally:
        await redis.aclose()


# -- the limiter alone ----------------------------------------------------------------


@pytest.mark.parametrize("window_s", [60.0, 7.5])
async def test_the_lua_gcra_answers_as_the_local_limiter_does(client: Redis, window_s: float) -> None:
    rng = random.Random(f"gcra-{window_s}")
    local = RateLimiter(window_s=window_s)
    shared = RedisLimiter(
        client,
        prefix="cmp",
        window_s=window_s,
        fallback=LocalLimiter(window_s=window_s),
        server_time=False,
    )
    # Any text is a key: \x00 separators, other scripts, emoji, a lone surrogate.
    limits = {"u\x00ann": 1, "t\x00José 🎲\x00coin": 3, "a\x00\udcff": 7, "u\x00bob": 60}
    now = 1_700_000_000.0
    answers: list[float | None] = []
    for _ in range(800):
        key = rng.choice(list(limits))
        limit = limits[key]
        now += rng.choice([0.0, 0.0, 0.001, 0.37, 1.0, window_s / limit, window_s / 3, window_s * 1.5])
        expected = local.acquire(key, limit, now)
        assert await shared.acquire(key, limit, now) == expected, (key, limit, now)
        answers.append(expected)
    assert shared.fallbacks == 0
    assert None in answers and any(a is not None and a > 1 for a in answers)


async def test_redis_time_decides_and_idle_keys_expire(client: Redis) -> None:
    limiter = RedisLimiter(client, prefix="sb", fallback=LocalLimiter())
    # The callers' clocks disagree by hours; the allowance is one.
    assert [await limiter.acquire("u\x00ann", 3, now) for now in (0.0, 1e9, 5.0)] == [None] * 3
    wait = await limiter.acquire("u\x00ann", 3, 2e9)
    assert wait is not None and 19 <= wait <= 20  # one slot frees every 60/3 s
    ttl = await client.pttl(b"sb:rl:u\x00ann")
    assert 0 < ttl <= 60_000
    assert await limiter.acquire("u\x00bob", 3, 0.0) is None
    assert limiter.fallbacks == 0


async def test_concurrent_calls_share_a_few_script_calls(client: Redis) -> None:
    limiter = RedisLimiter(client, prefix="sb", fallback=LocalLimiter(), max_batch=100)
    # More at once than the client's pool has connections (100): one call at a time.
    answers = await asyncio.gather(*(limiter.acquire(f"u\x00p{i % 700}", 1, 0.0) for i in range(1400)))
    assert limiter.fallbacks == 0
    assert 14 <= limiter.calls <= 16
    # Within a batch, a key's calls count in order, as one after another.
    assert answers[:700] == [None] * 700
    assert all(a is not None and 59 <= a <= 60 for a in answers[700:])


async def test_an_outage_falls_back_per_process_and_is_logged_once(
    redis_server: RedisServer, client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(0.0)
    limiter = RedisLimiter(
        client, prefix="sb", fallback=LocalLimiter(), timeout_s=0.5, retry_s=1.0, clock=clock
    )
    assert await limiter.acquire("k", 2, 0.0) is None
    redis_server.kill()
    with caplog.at_level(logging.INFO, logger="scoreboard.limits"):
        # The local allowance is this process's own: fresh, then spent.
        assert [await limiter.acquire("k", 2, 0.0) for _ in range(3)] == [None, None, 30]
        assert not limiter.shared
        redis_server.start()
        # Within retry_s Redis is left alone, even though it is back.
        assert await limiter.acquire("k", 2, 0.0) == 30
        assert not limiter.shared
        clock.advance(1.0)
        # Restarted empty: the shared allowance is whole again.
        assert await limiter.acquire("k", 2, 0.0) is None
        assert limiter.shared
    events = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "scoreboard.limits"]
    assert events == [("WARNING", "rate_limit_fallback"), ("INFO", "rate_limit_shared_again")]
    assert limiter.fallbacks == 4


async def test_a_redis_that_never_answers_costs_one_timeout_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        await reader.read()  # reads everything, answers nothing

    hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    limiter = RedisLimiter(redis, prefix="sb", fallback=LocalLimiter(), timeout_s=0.2, retry_s=60.0)
    try:
        with caplog.at_level(logging.INFO, logger="scoreboard.limits"):
            started = time.monotonic()
            assert await limiter.acquire("k", 1, 0.0) is None
            assert 0.15 < time.monotonic() - started < 1.0
            started = time.monotonic()
            assert await limiter.acquire("k", 1, 0.0) == 60  # local, at once
            assert time.monotonic() - started < 0.05
        assert [r.getMessage() for r in caplog.records if r.name == "scoreboard.limits"] == [
            "rate_limit_fallback"
        ]
    finally:
        await redis.aclose()
        for peer in peers:
            peer.close()
        hole.close()
        await hole.wait_closed()


# -- two servers, one PostgreSQL, one Redis -------------------------------------------------


async def update(server: ServerHandle, user: str) -> tuple[int, Any, str | None]:
    """A player's update with a fresh ticket: status, body and Retry-After."""
    async with server.session.post(
        server.url + "/scores/update", json=ticket(user, 1), headers=bearer(token(user))
    ) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def action(server: ServerHandle, user: str, kind: str) -> tuple[int, Any]:
    """A player starts an action of type `kind`."""
    return await server.post("/api/actions", {"type": kind}, token(user))


async def two_servers(
    start: StartServer, pg_url: str, redis_server: RedisServer, **overrides: Any
) -> tuple[ServerHandle, ServerHandle]:
    """Two servers sharing one database and one Redis."""
    first = await start(pg_url, redis_url=redis_server.url, **overrides)
    second = await start(pg_url, redis_url=redis_server.url, **overrides)
    for server in (first, second):
        assert isinstance(server.service.limiter, RedisLimiter)
    return first, second


async def test_a_players_update_limit_holds_across_servers(
    redis_server: RedisServer, start: StartServer, pg_url: str
) -> None:
    a, b = await two_servers(start, pg_url, redis_server, player_updates_per_min=5)
    for i in range(5):
        status, body, _ = await update(a if i % 2 == 0 else b, "spread")
        assert status == 200, (i, body)
    status, body, retry_after = await update(b, "spread")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert retry_after is not None and 1 <= int(retry_after) <= 12  # one update per 60/5 s
    assert body["error"]["retryAfter"] == int(retry_after)
    assert body["error"]["message"] == "At most 5 score updates per minute per player."
    async with a.session.ws_connect(a.ws_url, headers=bearer(token("spread"))) as ws:
        await ws.send_json({"type": "score.update", "id": "w6", **ticket("spread", 1)})
        refused = await ws.receive_json(timeout=5)
        assert (refused["id"], refused["error"]["code"]) == ("w6", "rate_limited")
        assert refused["error"]["retryAfter"] >= 1
    # Another player is not affected.
    assert (await update(a, "calm"))[0] == 200


async def test_an_action_types_max_per_minute_holds_across_servers(
    redis_server: RedisServer, start: StartServer, pg_url: str, catalog_file: Path
) -> None:
    a, b = await two_servers(start, pg_url, redis_server, actions_file=catalog_file)
    for server in (a, b, a):  # coin: max_per_minute = 3
        assert (await action(server, "coiner", "coin"))[0] == 201
    for server in (b, a):
        status, body = await action(server, "coiner", "coin")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert body["error"]["message"] == "At most 3 'coin' actions may be started per minute."
        assert 1 <= body["error"]["retryAfter"] <= 20
    assert (await action(b, "coiner", "default"))[0] == 201  # per type
    assert (await action(b, "other", "coin"))[0] == 201  # per player


async def test_without_redis_each_server_limits_alone_then_shares_again(
    redis_server: RedisServer, start: StartServer, pg_url: str
) -> None:
    a, b = await two_servers(start, pg_url, redis_server, player_updates_per_min=3)
    assert (await update(a, "warm"))[0] == 200
    redis_server.kill()
    # Fail open per process: each server grants its own allowance, refuses
    # beyond it, and never answers 500.
    for server in (a, b):
        for i in range(3):
            status, body, _ = await update(server, "alone")
            assert status == 200, (i, body)
        status, body, _ = await update(server, "alone")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert (await action(server, "alone", "default"))[0] == 201
    redis_server.start()
    limiters = [s.service.limiter for s in (a, b)]
    deadline = time.monotonic() + 10
    probes = 0
    while not all(isinstance(x, RedisLimiter) and x.shared for x in limiters):
        assert time.monotonic() < deadline, "the servers did not go back to Redis"
        for server in (a, b):
            probes += 1
            status, body, _ = await update(server, f"probe-{probes}")
            assert status == 200, body
        await asyncio.sleep(0.2)
    for i in range(3):
        status, body, _ = await update(b if i % 2 == 0 else a, "again")
        assert status == 200, (i, body)
    for server in (a, b):
        status, body, _ = await update(server, "again")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
