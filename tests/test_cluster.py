"""Several server processes over one PostgreSQL and one Redis: every commit reaches every process.

Three servers run in this event loop (separate apps, stores, hubs and Redis
clients, as separate processes would have), over one test database and a
throwaway `redis-server`. Updates are sprayed at all three, over HTTP and
WebSocket; every board, rank and version must converge to the database's
answer, an `actionId` raced on two processes is credited once, and an
answer's `visibleAt` is what a read on another process must reach to show
the write. The Redis-down path (every process converging through the
database) runs here too; process faults (kill -9, SIGSTOP) are in
tests/test_cluster_faults.py.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from scoreboard.client import BoardState
from tests.conftest import StartServer
from tests.helpers import FakeClock, ServerHandle, eventually, service_update
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

CATALOG = """
[boards.global]
title = "All time"
default = true

[boards.laps]
title = "Fastest lap"
operator = "best"
order = "asc"
max_value = 1000000
top_k = 5
"""


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture
async def cluster(pg_url: str, redis: RedisServer, start: StartServer, catalog: Path) -> list[ServerHandle]:
    # pg_url and redis first: they are torn down after `start` stopped the servers.
    return [await start(pg_url, redis_url=redis.url, catalog_file=catalog, bus_poll_s=0.5) for _ in range(3)]


async def db_board(pg_url: str, board: str) -> tuple[int, list[tuple[str, int]]]:
    """The board's version and every entry of its current season, best first, from the database."""
    con = await asyncpg.connect(pg_url)
    try:
        season, version = await con.fetchrow("SELECT season, version FROM boards WHERE id = $1", board)
        rows = await con.fetch(
            "SELECT user_id, score FROM entries WHERE board = $1 AND season = $2 "
            "ORDER BY sort_key, reached_at, user_id",
            board,
            season,
        )
        return version, [(r[0], r[1]) for r in rows]
    finally:
        await con.close()


async def page(server: ServerHandle, board: str, limit: int = 100) -> dict[str, Any]:
    status, body = await server.get(f"/api/boards/{board}/scores?limit={limit}")
    assert status == 200, body
    return dict(body)


async def converged(servers: list[ServerHandle], pg_url: str, board: str) -> bool:
    """Every server's board, ranks and version equal the database's."""
    version, rows = await db_board(pg_url, board)
    for server in servers:
        hub = server.hubs.get(board)
        if hub.version != version or hub.ranks is None:
            return False
        body = await page(server, board)
        if body["version"] != version or [(e["userId"], e["score"]) for e in body["entries"]] != rows[:100]:
            return False
        if body["total"] != len(rows):
            return False
    return True


async def wait_converged(
    servers: list[ServerHandle], pg_url: str, board: str, timeout_s: float = 5.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await converged(servers, pg_url, board):
            return
        await asyncio.sleep(0.05)
    version, rows = await db_board(pg_url, board)
    states = [(s.hubs.get(board).version, (await page(s, board))["entries"][:3]) for s in servers]
    raise AssertionError(f"not converged: database at {version} {rows[:3]}, servers {states}")


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """Poll an async condition until true or `timeout_s` passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.02)
    return await condition()


async def ws_credit(server: ServerHandle, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send updates over one WebSocket with the service token; the acks in order."""
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        await ws.send_json({"type": "auth", "token": server.service_token})
        auth = await ws.receive_json(timeout=5)
        assert auth.get("type") != "error", auth
        for i, body in enumerate(bodies):
            await ws.send_json({"type": "score.update", "id": str(i), **body})
        acks: list[dict[str, Any]] = []
        while len(acks) < len(bodies):
            message = await ws.receive_json(timeout=10)
            if message.get("id") is not None and message.get("type") != "scoreboard:diff":
                acks.append(message)
        return acks


async def test_updates_sprayed_at_three_processes_converge_everywhere(
    cluster: list[ServerHandle], pg_url: str
) -> None:
    rng = random.Random(9)
    users = [f"p{i}" for i in range(40)]

    async def http_burst(server: ServerHandle, n: int) -> None:
        for _ in range(n):
            body = service_update(rng.choice(users), rng.randint(1, 50))
            status, answer = await server.post("/scores/update", body, server.service_token)
            assert status == 200, answer
            lap = {
                "userId": rng.choice(users),
                "scores": {"laps": rng.randint(1000, 90000)},
                "actionId": uuid.uuid4().hex,
            }
            status, answer = await server.post("/api/score/update", lap, server.service_token)
            assert status == 200, answer

    ws_bodies = [[service_update(rng.choice(users), rng.randint(1, 50)) for _ in range(30)] for _ in cluster]
    await asyncio.gather(
        *(http_burst(s, 40) for s in cluster),
        *(ws_credit(s, b) for s, b in zip(cluster, ws_bodies, strict=True)),
    )
    await wait_converged(cluster, pg_url, "global")
    await wait_converged(cluster, pg_url, "laps")
    # Every rank too, not only the page: each server's rank of each player is the database's.
    _, rows = await db_board(pg_url, "global")
    for server in cluster:
        for rank, (user, score) in enumerate(rows, 1):
            status, body = await server.get(f"/api/boards/global/users/{user}")
            assert status == 200 and (body["rank"], body["score"]) == (rank, score), (user, body)


async def test_one_action_raced_on_two_processes_is_credited_once(
    cluster: list[ServerHandle], pg_url: str
) -> None:
    a, b, _ = cluster
    for round_ in range(20):
        action = f"race-{round_}"
        body = service_update("racer", 7, action)
        (sa, ra), (sb, rb) = await asyncio.gather(
            a.post("/scores/update", body, a.service_token), b.post("/scores/update", body, b.service_token)
        )
        assert sa == sb == 200, (ra, rb)
        assert sorted([ra["duplicate"], rb["duplicate"]]) == [False, True], (ra, rb)
        same = ("newScore", "visibleAt", "boards")
        assert {k: ra[k] for k in same} == {k: rb[k] for k in same}
    con = await asyncpg.connect(pg_url)
    try:
        credited = await con.fetchval("SELECT count(*) FROM credits WHERE user_id = 'racer'")
        score = await con.fetchval("SELECT score FROM entries WHERE user_id = 'racer' AND board = 'global'")
    finally:
        await con.close()
    assert (credited, score) == (20, 140)
    await wait_converged(cluster, pg_url, "global")


async def test_visible_at_is_reached_by_a_read_on_another_process(cluster: list[ServerHandle]) -> None:
    a, b, c = cluster
    for i in range(10):
        answer = await a.credit(f"reader{i}", 100 + i)
        visible = answer["visibleAt"]
        assert visible == answer["boards"]["global"]["visibleAt"] >= 1
        for other in (b, c):

            async def shows(other: ServerHandle = other, user: str = f"reader{i}", at: int = visible) -> bool:
                status, body = await other.get(f"/api/boards/global/users/{user}")
                return status == 200 and body["version"] >= at

            assert await until(shows, timeout_s=2.0)
        # Once the version is reached, the write is there, on every process.
        for other in (b, c):
            status, body = await other.get(f"/api/boards/global/users/reader{i}")
            assert status == 200 and body["score"] == 100 + i and body["version"] >= visible


async def test_moderation_and_season_end_on_one_process_reach_the_others(
    cluster: list[ServerHandle], pg_url: str
) -> None:
    from scoreboard.identity import Role
    from tests.helpers import token

    a, b, c = cluster
    for i in range(5):
        await b.credit(f"m{i}", 10 * (i + 1))
    admin = token("ops", role=Role.ADMIN)
    status, body = await a.post("/api/admin/users/m4/block", {"reason": "cheating"}, admin)
    assert status == 200, body
    await wait_converged(cluster, pg_url, "global")
    # The block holds on every process: the database decides inside each batch.
    status, body = await c.post("/scores/update", service_update("m4", 5), c.service_token)
    assert (status, body["error"]["code"]) == (403, "user_blocked"), body
    status, body = await c.post("/api/boards/global/reset", {"season": 1, "reason": "new season"}, admin)
    assert status == 200, body
    for server in cluster:
        assert await eventually(lambda s=server: s.hubs.get("global").season == 2, timeout_s=3.0)
    await c.credit("m0", 1)
    await wait_converged(cluster, pg_url, "global")


async def test_redis_down_processes_converge_through_the_database(
    cluster: list[ServerHandle], pg_url: str, redis: RedisServer
) -> None:
    a, b, _ = cluster
    await a.credit("before", 5)
    await wait_converged(cluster, pg_url, "global")
    redis.kill()
    for server in cluster:
        assert await eventually(lambda s=server: s.service.bus_state() == "down", timeout_s=3.0)
    for i in range(30):
        await cluster[i % 3].credit(f"down{i % 7}", i + 1)
    await wait_converged(cluster, pg_url, "global", timeout_s=3.0)
    for server in cluster:
        status, body = await server.get("/readyz")
        assert status == 200 and body["bus"] == "down", body
    redis.start()
    for server in cluster:
        assert await eventually(lambda s=server: s.service.bus_state() == "up", timeout_s=3.0)
    for i in range(10):
        await cluster[i % 3].credit(f"up{i}", i + 1)
    await wait_converged(cluster, pg_url, "global", timeout_s=2.0)
    status, body = await b.get("/readyz")
    assert status == 200 and body["bus"] == "up"


class Watcher:
    """A WebSocket subscriber of the default board: every event it got, and the board they build."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.state = BoardState()
        self.gaps = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def watch(self, server: ServerHandle, since: str | None = None) -> None:
        """Subscribe on `server` (resuming at `since`) and collect events in the background."""
        self._session = aiohttp.ClientSession()
        ws = await self._session.ws_connect(server.ws_url)
        message: dict[str, Any] = {"type": "subscribe", "channel": "scoreboard"}
        if since is not None:
            message["since"] = since
        await ws.send_json(message)

        async def run() -> None:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                event = msg.json()
                if event.get("type") in ("scoreboard:update", "scoreboard:diff", "board:season"):
                    self.events.append(event)
                    if event["type"] != "board:season" and not self.state.apply(event):
                        self.gaps += 1

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def rows(self) -> list[tuple[str, int]]:
        return [(e["userId"], e["score"]) for e in self.state.entries]


async def test_subscribers_on_every_process_get_one_numbered_sequence(
    cluster: list[ServerHandle], pg_url: str
) -> None:
    watchers = [Watcher() for _ in cluster]
    for watcher, server in zip(watchers, cluster, strict=True):
        await watcher.watch(server)
    rng = random.Random(4)
    for i in range(60):
        await cluster[i % 3].credit(f"s{rng.randint(0, 15)}", rng.randint(1, 40))
        if i % 10 == 0:
            await asyncio.sleep(0.06)  # let some diffs go out between bursts
    await wait_converged(cluster, pg_url, "global")
    expected = (await db_board(pg_url, "global"))[1][:10]

    async def all_there() -> bool:
        return all(w.rows() == expected for w in watchers)

    assert await until(all_there, timeout_s=5.0), [w.rows() for w in watchers]
    # One sequence: the same epoch, the same numbered diffs with the same content on every process.
    diffs = [
        [(e["epoch"], e["seq"], e["changes"]) for e in w.events if e["type"] == "scoreboard:diff"]
        for w in watchers
    ]
    last = min(d[-1][1] for d in diffs)
    common = [[d for d in ds if d[1] <= last] for ds in diffs]
    starts = [ds[0][1] for ds in common]
    aligned = [ds[max(starts) - s :] for ds, s in zip(common, starts, strict=True)]
    assert aligned[0] == aligned[1] == aligned[2]
    assert all(w.gaps == 0 for w in watchers)
    versions = [e["version"] for e in watchers[0].events]
    assert versions == sorted(versions)  # never a board going backwards
    for watcher in watchers:
        await watcher.stop()


async def test_a_subscriber_resumes_on_another_process_and_on_a_restarted_one(
    cluster: list[ServerHandle], pg_url: str, redis: RedisServer, start: StartServer, catalog: Path
) -> None:
    a, b, c = cluster
    first = Watcher()
    await first.watch(a)
    for i in range(10):
        await b.credit(f"r{i}", 10 + i)
    assert await until(lambda: _async(len(first.rows()) == 10), 5.0), first.rows()
    position = first.state.position
    seen = [e["seq"] for e in first.events]
    await first.stop()
    # Changes while it is away, then it resumes on another process.
    for i in range(10):
        await c.credit(f"r{i}", 100)
    second = Watcher()
    second.state = first.state
    await second.watch(b, since=position)
    await wait_converged(cluster, pg_url, "global")
    expected = (await db_board(pg_url, "global"))[1][:10]
    assert await until(lambda: _async(second.rows() == expected), 5.0), second.rows()
    resumed = [e["seq"] for e in second.events]
    assert second.events[0]["type"] == "scoreboard:diff", second.events[0]  # missed diffs, not a snapshot
    assert resumed == list(range(seen[-1] + 1, resumed[-1] + 1))  # every change exactly once
    position = second.state.position
    await second.stop()
    # A process that just started (a restart) serves the same sequence.
    await c.stop()
    restarted = await start(pg_url, redis_url=redis.url, catalog_file=catalog, bus_poll_s=0.5)
    await a.credit("r0", 1000)
    third = Watcher()
    third.state = second.state
    await third.watch(restarted, since=position)
    await wait_converged([a, b, restarted], pg_url, "global")
    expected = (await db_board(pg_url, "global"))[1][:10]
    assert await until(lambda: _async(third.rows() == expected), 5.0), third.rows()
    assert third.events[0]["type"] == "scoreboard:diff", third.events[0]
    assert third.gaps == 0
    await third.stop()


async def _async(value: bool) -> bool:
    return value


async def test_a_scheduled_season_end_happens_once_whichever_processes_are_up(
    pg_url: str, redis: RedisServer, start: StartServer, tmp_path: Path
) -> None:
    catalog = tmp_path / "daily.toml"
    catalog.write_text('[boards.global]\ndefault = true\nreset = "daily"\narchive = 2\n')
    clock = FakeClock()
    servers = [
        await start(
            pg_url,
            redis_url=redis.url,
            catalog_file=catalog,
            clock=clock,
            season_check_s=0.05,
            bus_poll_s=0.5,
        )
        for _ in range(3)
    ]
    for i, server in enumerate(servers):
        await server.credit(f"d{i}", 5)
    clock.advance(86_400)  # every process's timer sees the end within season_check_s
    for server in servers:
        assert await eventually(lambda s=server: s.hubs.default.season == 2, timeout_s=5.0)
    con = await asyncpg.connect(pg_url)
    try:
        seasons = await con.fetch(
            "SELECT season, ended_at FROM seasons WHERE board = 'global' ORDER BY season"
        )
        state = await con.fetchrow("SELECT season, version FROM boards WHERE id = 'global'")
    finally:
        await con.close()
    assert [r[0] for r in seasons] == [1, 2] and seasons[0][1] is not None and seasons[1][1] is None
    assert sum(s.service.seasons.ended for s in servers if s.service.seasons is not None) == 1
    # Each process holds the new, empty season at the database's version.
    for server in servers:
        assert (server.hubs.default.season, server.hubs.default.version) == (state[0], state[1])
        assert await server.top() == []


async def test_history_lost_in_redis_starts_a_new_epoch_everywhere(
    cluster: list[ServerHandle], redis: RedisServer
) -> None:
    import redis as redis_client

    a, b, c = cluster
    watchers = [Watcher() for _ in cluster]
    for watcher, server in zip(watchers, cluster, strict=True):
        await watcher.watch(server)
    await a.credit("e1", 10)
    assert await until(lambda: _async(all(w.rows() == [("e1", 10)] for w in watchers)), 5.0)
    old = watchers[0].state.epoch
    admin = redis_client.Redis(host="127.0.0.1", port=redis.port)
    try:
        admin.flushall()  # the history is truly lost
    finally:
        admin.close()
    await b.credit("e2", 20)
    expected = [("e2", 20), ("e1", 10)]
    assert await until(lambda: _async(all(w.rows() == expected for w in watchers)), 5.0), [
        w.rows() for w in watchers
    ]
    epochs = {w.state.epoch for w in watchers}
    assert len(epochs) == 1 and old not in epochs  # one new epoch, the same on every process
    assert all(w.gaps == 0 for w in watchers)
    # A client still at the old epoch gets a snapshot of the new one.
    late = Watcher()
    await late.watch(c, since=f"{old}:1")
    assert await until(lambda: _async(late.rows() == expected), 5.0)
    assert late.events[0]["type"] == "scoreboard:update" and late.events[0]["epoch"] in epochs
    for watcher in [*watchers, late]:
        await watcher.stop()


async def test_a_quiet_relay_waits_for_steps_instead_of_spinning(
    cluster: list[ServerHandle], pg_url: str
) -> None:
    from scoreboard.app import SEQUENCER

    for i in range(30):
        await cluster[i % 3].credit(f"q{i % 12}", i + 1)
    await wait_converged(cluster, pg_url, "global")
    assert any(s.app[SEQUENCER].leading for s in cluster)  # one of them makes the steps and takes its own
    before = [s.app[SEQUENCER].reads for s in cluster]
    await asyncio.sleep(1.0)
    reads = [s.app[SEQUENCER].reads - b for s, b in zip(cluster, before, strict=True)]
    # A blocking read returns after block_s (0.5 s) when nothing comes: a
    # handful per second, not one per loop iteration.
    assert all(r <= 6 for r in reads), reads
