"""Crash and shutdown durability of the real server process, on both stores.

The server runs as a subprocess (`python -m server serve`) so it can be
SIGKILLed or SIGTERMed for real while concurrent clients stream updates at it;
afterwards the database itself is read to check that every acknowledged
update is there with the acknowledged score and that no batch was half
written.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scoreboard.tokens import Role
from tests.helpers import JWT_SECRET, TICKET_SECRET, bearer, service_update, token
from tests.pgcluster import StoredState, read_state

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SENDERS = 12
USERS = 40
SHUTDOWN_TIMEOUT_S = 5.0
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError)


@dataclass
class ServerProcess:
    """`python -m server serve` in a subprocess, logging JSON lines to a file."""

    proc: asyncio.subprocess.Process
    log_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                found.append(doc)
        return found

    async def wait_listening(self, within_s: float = 20.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for doc in self.events():
                if doc.get("event") == "listening":
                    self.port = int(doc["port"])
                    return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.02)
        self.proc.kill()
        await self.proc.wait()
        pytest.fail(f"server did not start (rc={self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")

    async def wait_exit(self, within_s: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), within_s)


async def spawn_server(
    tmp_path: Path, database_url: str, name: str, extra_env: dict[str, str] | None = None
) -> ServerProcess:
    """Start the server on a free port and wait for its `listening` line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    env.update(
        {
            "SCOREBOARD_PORT": "0",
            "SCOREBOARD_HOST": "127.0.0.1",
            "SCOREBOARD_DATABASE_URL": database_url,
            "SCOREBOARD_DATA_DIR": str(tmp_path / "data"),
            "SCOREBOARD_JWT_SECRET": JWT_SECRET,
            "SCOREBOARD_TICKET_SECRET": TICKET_SECRET,
            "SCOREBOARD_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
            "SCOREBOARD_PROBE_INTERVAL_S": "0.1",
            **(extra_env or {}),
        }
    )
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "scoreboard",
            "serve",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    server = ServerProcess(proc, log_path)
    await server.wait_listening()
    return server


Spawn = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """`await spawn(database_url, name)` starts a server process; any left running is killed at the end."""
    started: list[ServerProcess] = []

    async def _spawn(database_url: str, name: str, extra_env: dict[str, str] | None = None) -> ServerProcess:
        server = await spawn_server(tmp_path, database_url, name, extra_env)
        started.append(server)
        return server

    yield _spawn
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


@dataclass
class Sent:
    """One update request and what became of it."""

    action_id: str
    user_id: str
    delta: int
    started: float
    finished: float = 0.0
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )


async def stream_updates(
    url: str,
    on_ack: Callable[[int], None],
    *,
    stop_on_refusal: bool,
    seed: int,
    deadline: float,
) -> list[Sent]:
    """SENDERS concurrent senders of fresh service updates until each hits a connection error.

    `on_ack(n)` is called after the n-th 200. With `stop_on_refusal` a sender
    also stops at its first non-200 answer.
    """
    tok = token("backend", role=Role.SERVICE)
    sent: list[Sent] = []
    acks = 0
    rng = random.Random(seed)

    async def sender(http: aiohttp.ClientSession, i: int) -> None:
        nonlocal acks
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            rec = Sent(
                f"s{i}-{seq}", f"user{rng.randrange(USERS):02d}", rng.randrange(1, 50), time.monotonic()
            )
            sent.append(rec)
            try:
                async with http.post(
                    url + "/scores/update",
                    json=service_update(rec.user_id, rec.delta, rec.action_id),
                    headers=bearer(tok),
                ) as resp:
                    rec.status = resp.status
                    rec.body = await resp.json()
            except CONNECTION_ERRORS as exc:
                rec.error = repr(exc)
                rec.finished = time.monotonic()
                return
            rec.finished = time.monotonic()
            if rec.status == 200:
                acks += 1
                on_ack(acks)
            elif stop_on_refusal:
                return

    async with session() as http:
        await asyncio.gather(*(sender(http, i) for i in range(SENDERS)))
    return sent


def assert_acks_stored(state: StoredState, sent: list[Sent]) -> list[Sent]:
    """Every 200 is in the ledger with its newScore; returns the 200s."""
    acked = [r for r in sent if r.status == 200]
    for r in acked:
        assert r.body["success"] is True
        assert r.body["duplicate"] is False
        assert r.body["userId"] == r.user_id
        state.assert_holds(r.action_id, r.user_id, r.delta, r.body["newScore"])
    state.assert_consistent()
    return acked


async def gather_limited(coros: list[Awaitable[Any]], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(c: Awaitable[Any]) -> Any:
        async with gate:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


async def test_kill_9_under_load_loses_no_acknowledged_update(database_url: str, spawn: Spawn) -> None:
    server = await spawn(database_url, "first")
    kill_after = 300
    killed_at: list[float] = []

    def on_ack(n: int) -> None:
        if n == kill_after:
            killed_at.append(time.monotonic())
            server.proc.send_signal(signal.SIGKILL)

    sent = await stream_updates(
        server.url, on_ack, stop_on_refusal=True, seed=1, deadline=time.monotonic() + 30
    )
    assert killed_at, "the stream ended before the kill"
    assert await server.wait_exit(10) == -signal.SIGKILL
    # Before the kill every update was acknowledged; nothing was refused.
    assert {r.status for r in sent if r.error is None} == {200}
    in_flight = [r for r in sent if r.error is not None and r.started < killed_at[0]]
    assert len(in_flight) >= 1, "no request was in flight when the process was killed"

    state = await read_state(database_url)
    acked = assert_acks_stored(state, sent)
    assert len(acked) >= kill_after
    # Any further ledger row can only come from a request that was in flight.
    unanswered = {r.action_id for r in sent if r.status is None}
    assert set(state.ledger) - {r.action_id for r in acked} <= unanswered

    server = await spawn(database_url, "second")
    tok = token("backend", role=Role.SERVICE)
    async with session() as http:
        # The restarted server's board is the database's top 10 (score, then who got there first, then id).
        async with http.get(server.url + "/scores") as resp:
            assert resp.status == 200
            assert (await resp.json())["topUsers"] == state.top10
        assert len(state.top10) == 10

        async def resend(r: Sent) -> tuple[int, dict[str, Any]]:
            async with http.post(
                server.url + "/scores/update",
                json=service_update(r.user_id, r.delta, r.action_id),
                headers=bearer(tok),
            ) as resp:
                return resp.status, await resp.json()

        # Acknowledged updates come back as duplicates with the same score.
        answers = await gather_limited([resend(r) for r in acked])
        for r, (status, body) in zip(acked, answers, strict=True):
            assert (status, body["duplicate"], body["newScore"]) == (200, True, r.body["newScore"]), r
        # Updates whose answer was lost are credited exactly once: a duplicate
        # with the stored score if they committed before the kill, new otherwise.
        lost = [r for r in sent if r.status is None]
        answers = await gather_limited([resend(r) for r in lost])
        for r, (status, body) in zip(lost, answers, strict=True):
            assert status == 200, body
            stored = state.ledger.get(r.action_id)
            if stored is None:
                assert body["duplicate"] is False
            else:
                assert (body["duplicate"], body["newScore"]) == (True, stored.score_after)
        async with http.get(server.url + "/scores") as resp:
            assert resp.status == 200
            board = (await resp.json())["topUsers"]

    after = await read_state(database_url)
    after.assert_consistent()
    assert set(after.ledger) == {r.action_id for r in sent}
    assert len(board) == 10
    assert board == after.top10
    server.proc.send_signal(signal.SIGTERM)
    assert await server.wait_exit(SHUTDOWN_TIMEOUT_S + 5) == 0


async def test_sigterm_is_graceful_under_load(database_url: str, spawn: Spawn) -> None:
    server = await spawn(database_url, "server")
    term_after = 150
    termed_at: list[float] = []

    def on_ack(n: int) -> None:
        if n == term_after:
            termed_at.append(time.monotonic())
            server.proc.send_signal(signal.SIGTERM)

    sent = await stream_updates(
        server.url, on_ack, stop_on_refusal=False, seed=2, deadline=time.monotonic() + 30
    )
    assert termed_at, "the stream ended before SIGTERM"
    rc = await server.wait_exit(SHUTDOWN_TIMEOUT_S + 5)
    exited_after = time.monotonic() - termed_at[0]
    assert rc == 0
    assert exited_after < SHUTDOWN_TIMEOUT_S

    # Requests in flight at SIGTERM were finished, not dropped.
    drained = [r for r in sent if r.started < termed_at[0] < r.finished and r.status == 200]
    assert drained, "no request in flight at SIGTERM was answered"
    for r in sent:
        if r.error is not None:
            continue  # refused connection or closed keep-alive connection: the client must retry
        assert r.status in (200, 503), (r.status, r.body)
        if r.status == 503:
            assert r.body["error"]["code"] == "shutting_down", r.body
    state = await read_state(database_url)
    acked = assert_acks_stored(state, sent)
    assert len(acked) >= term_after
    unanswered = {r.action_id for r in sent if r.status != 200}
    assert set(state.ledger) - {r.action_id for r in acked} <= unanswered

    events = [doc["event"] for doc in server.events()]
    assert "shutting_down" in events
    assert "stopped" in events
    assert events.index("shutting_down") < events.index("writer_closed") < events.index("stopped")
    assert not [doc for doc in server.events() if doc.get("level") in ("error", "critical")]
