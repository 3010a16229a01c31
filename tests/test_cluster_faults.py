"""Faults under load, with real processes: kill -9, Redis killed and restarted, a paused process.

Three `scoreboard serve` processes share one test PostgreSQL database and a
throwaway `redis-server`. Clients spray service updates at all three and a
subscriber watches each; then a fault strikes. Afterwards every
acknowledged update is in the ledger exactly once, every process's board
(entries, total and version) equals the database's, and the watchers'
boards, built from the diffs they were sent, equal it too, without a gap in
their sequence (a watcher whose process died resumes on another one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis

from loadtest.common import ServerProcess
from scoreboard.client import BoardState
from scoreboard.identity import Role
from tests.helpers import JWT_SECRET, TICKET_SECRET, bearer, token
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

USERS = [f"u{i}" for i in range(25)]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def spawn(pg_url: str, redis_url: str, workdir: Path) -> ServerProcess:
    return ServerProcess(
        database_url=pg_url,
        workdir=workdir,
        cpu=None,
        env={
            "SCOREBOARD_REDIS_URL": redis_url,
            "SCOREBOARD_JWT_SECRET": JWT_SECRET,
            "SCOREBOARD_TICKET_SECRET": TICKET_SECRET,
            "SCOREBOARD_BUS_POLL_S": "0.5",
            "SCOREBOARD_SEQUENCER_LEASE_S": "1",
            "SCOREBOARD_STORE_TIMEOUT_S": "3",
            "SCOREBOARD_MAX_CONNECTIONS_PER_IP": "0",
        },
    )


@pytest.fixture
async def processes(
    pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[list[ServerProcess]]:
    started = [spawn(pg_url, redis_server.url, tmp_path) for _ in range(3)]
    try:
        for proc in started:
            proc.start()
        for proc in started:
            await proc.wait_ready()
        yield started
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            await proc.stop(timeout_s=15)


@dataclass
class Load:
    """Clients spraying updates at every process; what was acknowledged."""

    urls: list[str]
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)
    refused: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, n: int) -> None:
        service = token("backend", role=Role.SERVICE)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            i = 0
            while not self.stop.is_set():
                url = self.urls[(n + i) % len(self.urls)]
                i += 1
                action = uuid.uuid4().hex
                user, delta = USERS[(n * 7 + i) % len(USERS)], 1 + (i % 9)
                body = {"userId": user, "scoreDelta": delta, "actionId": action}
                try:
                    async with http.post(url + "/scores/update", json=body, headers=bearer(service)) as resp:
                        answer = await resp.json(content_type=None)
                        if resp.status == 200:
                            assert answer["duplicate"] is False, answer
                            self.acked[action] = (user, delta)
                        else:
                            self.refused += 1
                except (aiohttp.ClientError, TimeoutError, OSError):
                    self.refused += 1  # a killed or paused process: not acknowledged
                    await asyncio.sleep(0.05)

    async def run_for(self, seconds: float, clients: int = 6) -> None:
        self.stop.clear()
        tasks = [asyncio.create_task(self.client(n)) for n in range(clients)]
        await asyncio.sleep(seconds)
        self.stop.set()
        await asyncio.gather(*tasks)


class Watcher:
    """A subscriber of the default board that resumes on another process when its connection drops."""

    def __init__(self, urls: list[str], index: int) -> None:
        self.urls = urls
        self.index = index
        self.state = BoardState()
        self.seqs: list[tuple[str, int]] = []
        self.gaps = 0
        self.reconnects = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                url = self.urls[self.index % len(self.urls)].replace("http://", "ws://") + "/ws"
                try:
                    async with http.ws_connect(url, heartbeat=1.0) as ws:
                        message: dict[str, Any] = {"type": "subscribe", "channel": "scoreboard"}
                        if self.state.position is not None:
                            message["since"] = self.state.position
                        await ws.send_json(message)
                        async for msg in ws:
                            if msg.type is not aiohttp.WSMsgType.TEXT:
                                break
                            event = msg.json()
                            if (
                                event.get("type") == "scoreboard:update"
                                and event["epoch"] == self.state.epoch
                            ):
                                # A snapshot in the same epoch: allowed only after a gap it repairs.
                                self.gaps += event["seq"] > self.state.seq + 1
                            if event.get("type") in ("scoreboard:update", "scoreboard:diff"):
                                if not self.state.apply(event):
                                    self.gaps += 1
                                self.seqs.append((event["epoch"], event["seq"]))
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                self.reconnects += 1
                self.index += 1  # resume on the next process
                await asyncio.sleep(0.1)

    def rows(self) -> list[tuple[str, int]]:
        return [(e["userId"], e["score"]) for e in self.state.entries]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def database(pg_url: str) -> tuple[int, list[tuple[str, int]], dict[str, int]]:
    con = await asyncpg.connect(pg_url)
    try:
        version = await con.fetchval("SELECT version FROM boards WHERE id = 'global'")
        rows = await con.fetch(
            "SELECT user_id, score FROM entries WHERE board = 'global' AND season = 1 "
            "ORDER BY sort_key, reached_at, user_id"
        )
        ledger = await con.fetch("SELECT action_id, count(*) FROM credits GROUP BY action_id")
        return version, [(r[0], r[1]) for r in rows], {r[0]: r[1] for r in ledger}
    finally:
        await con.close()


async def check(
    load: Load, watchers: list[Watcher], alive: list[ServerProcess], pg_url: str, *, reloads: bool = False
) -> None:
    """Every acknowledged update once, every process and watcher on the database's board.

    Without `reloads`, every process caught up by applying each version in
    order: none had to reload a board from a snapshot.
    """
    version, rows, ledger = await database(pg_url)
    missing = [a for a in load.acked if ledger.get(a) != 1]
    assert not missing, f"{len(missing)} acknowledged updates not credited exactly once"
    totals: dict[str, int] = {}
    for user, delta in load.acked.values():
        totals[user] = totals.get(user, 0) + delta
    # Every acknowledged delta is in the scores (unacknowledged ones may be too: a lost answer).
    assert all(dict(rows).get(u, 0) >= t for u, t in totals.items())
    async with aiohttp.ClientSession() as http:
        deadline = asyncio.get_running_loop().time() + 5.0
        while True:
            bodies = []
            for proc in alive:
                async with http.get(proc.url + "/api/boards/global/scores?limit=100") as resp:
                    bodies.append(await resp.json())
            exact = all(
                b["version"] == version and [(e["userId"], e["score"]) for e in b["entries"]] == rows
                for b in bodies
            )
            watched = all(w.rows() == rows[:10] for w in watchers)
            if (exact and watched) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
    assert exact, ([(b["version"], b["entries"][:2]) for b in bodies], version, rows[:2])
    assert watched, ([w.rows()[:3] for w in watchers], rows[:3])
    assert all(w.gaps == 0 for w in watchers), [w.gaps for w in watchers]
    reloaded = [p.url for p in alive if p.event("board_reloaded") is not None]
    assert bool(reloaded) == reloads, reloaded


async def test_kill_9_of_one_process_under_load(processes: list[ServerProcess], pg_url: str) -> None:
    urls = [p.url for p in processes]
    load = Load(urls)
    watchers = [Watcher(urls, i) for i in range(3)]
    await load.run_for(1.0)
    victim = processes[0]
    killer = asyncio.get_running_loop().call_later(0.7, os.kill, victim.pid, signal.SIGKILL)
    load.urls = urls  # clients keep trying the dead one too: those requests fail, unacknowledged
    await load.run_for(2.0)
    killer.cancel()
    load.urls = urls[1:]
    await load.run_for(1.0)
    assert watchers[0].reconnects >= 1  # its process died: it resumed on another one
    await check(load, watchers, processes[1:], pg_url)
    for w in watchers:
        await w.stop()


async def test_redis_killed_and_restarted_under_load(
    processes: list[ServerProcess], pg_url: str, redis_server: RedisServer
) -> None:
    urls = [p.url for p in processes]
    load = Load(urls)
    watchers = [Watcher(urls, i) for i in range(3)]
    await load.run_for(1.0)
    redis_server.kill()
    await load.run_for(1.5)  # writes go on without Redis
    redis_server.start()
    await load.run_for(1.5)
    await check(load, watchers, processes, pg_url)
    async with aiohttp.ClientSession() as http:
        for proc in processes:
            async with http.get(proc.url + "/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["bus"] == "up"
    for w in watchers:
        await w.stop()


async def test_a_paused_process_whose_redis_connections_drop(
    processes: list[ServerProcess], pg_url: str, redis_server: RedisServer
) -> None:
    urls = [p.url for p in processes]
    load = Load(urls[1:])
    watchers = [Watcher(urls, i) for i in range(3)]
    await load.run_for(1.0)
    paused = processes[0]
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        await load.run_for(1.0)
        assert drop_connections(redis_server, paused.pid) >= 1
        await load.run_for(1.5)  # the others go on; its boards' lease moves to them
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    await load.run_for(1.0)
    await check(load, watchers, processes, pg_url)
    for w in watchers:
        await w.stop()


def drop_connections(redis_server: RedisServer, pid: int) -> int:
    """Close every Redis connection of the process `pid` (as a network blip would); how many."""
    admin = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        return sum(
            admin.client_kill_filter(_id=client["id"])
            for client in admin.client_list()
            if client.get("name") == f"scoreboard-{pid}"
        )
    finally:
        admin.close()


async def test_a_process_paused_past_the_kept_changes_reloads_its_boards(
    processes: list[ServerProcess], pg_url: str, redis_server: RedisServer
) -> None:
    urls = [p.url for p in processes]
    load = Load(urls[1:])
    watchers = [Watcher(urls, i) for i in range(3)]
    await load.run_for(1.0)
    paused = processes[0]
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        # Its bus connection drops before anything is published to it, and
        # the retention passes: the values it misses are kept nowhere.
        assert drop_connections(redis_server, paused.pid) >= 1
        await load.run_for(1.0)
        con = await asyncpg.connect(pg_url)
        try:
            await con.execute("DELETE FROM changes")
        finally:
            await con.close()
        await load.run_for(0.5)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    await load.run_for(1.0)
    await check(load, watchers, processes, pg_url, reloads=True)
    assert paused.event("board_reloaded") is not None
    for w in watchers:
        await w.stop()
