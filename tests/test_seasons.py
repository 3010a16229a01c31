"""Seasons: scheduled ends (also while the server was down), forced ends, archives, live events."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import FakeClock, ServerHandle, bearer, token
from tests.streams import sse_events
from tests.test_durability import ServerProcess, spawn_server

CATALOG = """
[boards.global]
title = "All time"
default = true

[boards.daily]
title = "Today"
reset = "daily"
archive = 2
"""
DAY = 86_400
# The tests move the clock days ahead: a service token that outlives them.
SERVICE = token("backend", role=Role.SERVICE, ttl=30 * DAY)


@pytest.fixture
def seasons_file(tmp_path: Path) -> Path:
    path = tmp_path / "seasons.toml"
    path.write_text(CATALOG)
    return path


async def credit(server: ServerHandle, user: str, scores: dict[str, int], action: str | None = None) -> Any:
    status, body = await server.post(
        "/scores/update",
        {"userId": user, "actionId": action or uuid.uuid4().hex, "scores": scores},
        SERVICE,
    )
    assert status == 200, body
    return body


async def board(server: ServerHandle, board_id: str) -> dict[str, Any]:
    status, body = await server.get("/api/boards")
    assert status == 200
    return next(b for b in body["boards"] if b["id"] == board_id)


async def scores(server: ServerHandle, board_id: str, season: int | None = None) -> list[tuple[str, int]]:
    query = "" if season is None else f"?season={season}"
    status, body = await server.get(f"/api/boards/{board_id}/scores{query}")
    assert status == 200, body
    return [(e["userId"], e["score"]) for e in body["entries"]]


async def test_a_scheduled_end_starts_an_empty_season_and_keeps_the_archive(
    start: StartServer, database_url: str, seasons_file: Path, clock: FakeClock
) -> None:
    server = await start(database_url, catalog_file=seasons_file, clock=clock)
    daily = await board(server, "daily")
    ends = daily["season"]["endsAt"]
    assert daily["season"]["id"] == 1 and ends % DAY == 0 and 0 < ends - clock.now <= DAY
    first = await credit(server, "ann", {"daily": 5, "global": 5})
    assert first["boards"]["daily"]["season"] == 1
    clock.now = ends + 0.5  # past midnight UTC
    second = await credit(server, "bob", {"daily": 3, "global": 3})
    # The update committed after the end: it counts in season 2 alone.
    # daily: ann's credit was version 1, the season end 2, this update 3; global never ended.
    assert second["boards"] == {
        "daily": {"season": 2, "score": 3, "improved": True, "visibleAt": 3},
        "global": {"season": 1, "score": 3, "improved": True, "visibleAt": 2},
    }
    assert await scores(server, "daily") == [("bob", 3)]
    assert await scores(server, "daily", 1) == [("ann", 5)]
    assert await scores(server, "global") == [("ann", 5), ("bob", 3)]  # never resets
    daily = await board(server, "daily")
    assert daily["season"] == {"id": 2, "startedAt": ends, "endsAt": ends + DAY}
    status, body = await server.get("/api/boards/daily/users/ann?season=1")
    assert (status, body["season"], body["score"], body["rank"]) == (200, 1, 5, 1)
    status, body = await server.get("/api/boards/daily/users/ann")
    assert (status, body["error"]["code"]) == (404, "user_not_found")


async def test_a_scheduled_end_happens_on_time_without_any_update(
    start: StartServer, database_url: str, seasons_file: Path, clock: FakeClock
) -> None:
    # The timer looks again every season_check_s; no batch has to come along.
    server = await start(database_url, catalog_file=seasons_file, clock=clock, season_check_s=0.05)
    await credit(server, "ann", {"daily": 5})
    ws = await server.session.ws_connect(server.ws_url)
    await ws.send_json({"type": "subscribe", "channel": "board:daily"})
    assert (await ws.receive_json(timeout=5))["season"] == 1
    ends = (await board(server, "daily"))["season"]["endsAt"]
    clock.now = ends + 0.1
    season = await ws.receive_json(timeout=5)
    assert (season["type"], season["endedSeason"], season["season"]) == ("board:season", 1, 2)
    assert (await board(server, "daily"))["season"]["startedAt"] == ends
    assert await scores(server, "daily", 1) == [("ann", 5)]
    await ws.close()


async def test_seasons_that_ended_while_the_server_was_down_end_at_start(
    start: StartServer, database_url: str, seasons_file: Path, clock: FakeClock
) -> None:
    server = await start(database_url, catalog_file=seasons_file, clock=clock)
    ends = (await board(server, "daily"))["season"]["endsAt"]
    await credit(server, "ann", {"daily": 5})
    await server.stop()
    clock.now = ends + 3 * DAY + 10  # down for three midnights and a bit
    server = await start(database_url, catalog_file=seasons_file, clock=clock)
    daily = await board(server, "daily")
    assert daily["season"] == {"id": 5, "startedAt": ends + 3 * DAY, "endsAt": ends + 4 * DAY}
    # archive = 2: seasons 4 and 3 are kept (empty), 1 and 2 are gone.
    assert await scores(server, "daily", 4) == []
    assert await scores(server, "daily", 3) == []
    for gone in (1, 2):
        status, body = await server.get(f"/api/boards/daily/scores?season={gone}")
        assert (status, body["error"]["code"]) == (404, "season_not_found")
    status, body = await server.get("/api/boards/daily/scores?season=6")
    assert (status, body["error"]["code"]) == (404, "season_not_found")


async def test_an_admin_ends_a_season_once_and_the_schedule_stays(
    start: StartServer, database_url: str, seasons_file: Path, clock: FakeClock
) -> None:
    server = await start(database_url, catalog_file=seasons_file, clock=clock)
    ends = (await board(server, "daily"))["season"]["endsAt"]
    await credit(server, "ann", {"daily": 5, "global": 1})
    admin = token("root", role=Role.ADMIN, now=clock.now)
    for tok in (server.service_token, token("ann", now=clock.now)):
        status, body = await server.post("/api/boards/daily/reset", {"season": 1}, tok)
        assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await server.post("/api/boards/daily/reset", {"season": 1, "reason": "test"}, admin)
    assert (status, body) == (200, {"board": "daily", "endedSeason": 1, "season": 2})
    # A retried reset ends nothing more.
    status, body = await server.post("/api/boards/daily/reset", {"season": 1}, admin)
    assert (status, body["error"]["code"]) == (409, "season_conflict")
    daily = await board(server, "daily")
    assert daily["season"]["id"] == 2 and daily["season"]["endsAt"] == ends  # the schedule did not move
    assert await scores(server, "daily") == []
    assert await scores(server, "daily", 1) == [("ann", 5)]
    # A board without a schedule can be ended too.
    status, body = await server.post("/api/boards/global/reset", {"season": 1}, admin)
    assert (status, body["season"]) == (200, 2)
    assert await server.top() == []
    for bad, code in (({}, "validation_failed"), ({"season": "1"}, "validation_failed")):
        status, body = await server.post("/api/boards/daily/reset", bad, admin)
        assert (status, body["error"]["code"]) == (422, code)
    status, body = await server.post("/api/boards/nope/reset", {"season": 1}, admin)
    assert (status, body["error"]["code"]) == (404, "board_not_found")


async def test_subscribers_get_the_season_event_then_the_new_season(
    start: StartServer, database_url: str, seasons_file: Path
) -> None:
    server = await start(database_url, catalog_file=seasons_file)
    await credit(server, "ann", {"daily": 5})
    admin = token("root", role=Role.ADMIN)
    ws = await server.session.ws_connect(server.ws_url)
    await ws.send_json({"type": "subscribe", "channel": "board:daily"})
    await ws.send_json({"type": "subscribe", "channel": "scoreboard"})
    await ws.send_json({"type": "subscribe", "channel": "board:nope"})
    got: list[dict[str, Any]] = [await ws.receive_json(timeout=5) for _ in range(3)]
    by_kind = {(m["type"], m.get("board")): m for m in got}
    daily = by_kind[("scoreboard:update", "daily")]
    assert daily["season"] == 1 and [u["userId"] for u in daily["topUsers"]] == ["ann"]
    assert by_kind[("scoreboard:update", "global")]["topUsers"] == []
    assert by_kind[("error", None)]["error"]["code"] == "unknown_board"
    async with server.session.get(server.url + "/api/boards/daily/stream") as sse:
        events = sse_events(sse)
        first = await anext(events)
        while first.event is None:
            first = await anext(events)
        assert first.event == "scoreboard:update"
        status, _ = await server.post("/api/boards/daily/reset", {"season": 1}, admin)
        assert status == 200
        season = await ws.receive_json(timeout=5)
        assert season == {
            "type": "board:season",
            "board": "daily",
            "endedSeason": 1,
            "season": 2,
            "epoch": daily["epoch"],
            "seq": daily["seq"] + 1,
            "version": 2,  # ann's credit was version 1; the season end is 2
        }
        snapshot = await ws.receive_json(timeout=5)
        assert (
            snapshot["type"],
            snapshot["season"],
            snapshot["seq"],
            snapshot["version"],
            snapshot["topUsers"],
        ) == (
            "scoreboard:update",
            2,
            daily["seq"] + 1,
            2,
            [],
        )
        over_sse = [await anext(events), await anext(events)]
        assert [e.event for e in over_sse] == ["board:season", "scoreboard:update"]
        assert over_sse[0].json() == season
        # A client that was just before the end resumes with the season event.
        async with server.session.get(
            server.url + "/api/boards/daily/stream",
            headers={"Last-Event-ID": f"{daily['epoch']}:{daily['seq']}"},
        ) as resumed:
            replay = sse_events(resumed)
            kinds = []
            while len(kinds) < 2:
                event = await anext(replay)
                if event.event is not None:
                    kinds.append(event.event)
            assert kinds == ["board:season", "scoreboard:update"]
    await ws.close()


async def test_updates_across_a_boundary_count_in_exactly_one_season(
    start: StartServer, database_url: str, seasons_file: Path, clock: FakeClock
) -> None:
    server = await start(database_url, catalog_file=seasons_file, clock=clock, flush_interval_ms=1)
    ends = (await board(server, "daily"))["season"]["endsAt"]
    clock.now = ends - 0.5
    answers: list[Any] = []

    async def stream(worker: int) -> None:
        for i in range(40):
            answers.append(await credit(server, f"p{worker}", {"daily": 1}, f"w{worker}-{i}"))

    async def cross() -> None:
        await asyncio.sleep(0.05)
        clock.now = ends + 0.5

    await asyncio.gather(*(stream(w) for w in range(5)), cross())
    per_season: dict[int, dict[str, int]] = {1: {}, 2: {}}
    for body in answers:
        credit_ = body["boards"]["daily"]
        users = per_season[credit_["season"]]
        users[body["userId"]] = max(users.get(body["userId"], 0), credit_["score"])
    assert per_season[1] and per_season[2], "the stream did not cross the boundary"
    # Each season's board holds exactly the updates acknowledged in it.
    for season, users in per_season.items():
        assert sorted(await scores(server, "daily", season)) == sorted(users.items())
    assert sum(sum(users.values()) for users in per_season.values()) == 200


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


@pytest.mark.slow
async def test_kill_9_before_a_boundary_then_restart_after_it(
    database_url: str, processes: list[ServerProcess], tmp_path: Path
) -> None:
    async def spawn(url: str, name: str, env: dict[str, str]) -> ServerProcess:
        server = await spawn_server(tmp_path, url, name, env)
        processes.append(server)
        return server

    # A real clock: the boundary is the next minute (cron "* * * * *").
    catalog = tmp_path / "minute.toml"
    catalog.write_text('[boards.global]\ndefault = true\n[boards.minute]\nreset = "* * * * *"\narchive = 5\n')
    second = time.time() % 60
    if second > 45:
        await asyncio.sleep(61 - second)  # leave room to stream before the boundary
    server = await spawn(database_url, "before", {"SCOREBOARD_CATALOG_FILE": str(catalog)})
    svc = token("backend", role=Role.SERVICE)
    acked: dict[str, int] = {}
    enough = asyncio.Event()  # set once some updates are acknowledged: then kill
    async with aiohttp.ClientSession() as session:

        async def send(i: int) -> None:
            try:
                async with session.post(
                    server.url + "/scores/update",
                    json={"userId": f"u{i % 7}", "actionId": f"k{i}", "scores": {"minute": 1}},
                    headers=bearer(svc),
                ) as resp:
                    if resp.status == 200:
                        acked[f"k{i}"] = (await resp.json())["boards"]["minute"]["season"]
                        if len(acked) >= 30:
                            enough.set()
            except (TimeoutError, aiohttp.ClientError):
                pass

        boundary = (int(time.time()) // 60 + 1) * 60
        tasks = [asyncio.create_task(send(i)) for i in range(300)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), 10)
        server.proc.send_signal(signal.SIGKILL)  # with updates in flight
        await asyncio.gather(*tasks)
        assert await server.wait_exit(10) == -signal.SIGKILL
        assert acked and set(acked.values()) == {1}
        await asyncio.sleep(max(0.0, boundary - time.time() + 0.5))
        server = await spawn(database_url, "after", {"SCOREBOARD_CATALOG_FILE": str(catalog)})
        async with session.get(server.url + "/api/boards") as resp:
            minute = next(b for b in (await resp.json())["boards"] if b["id"] == "minute")
        assert minute["season"]["id"] >= 2 and minute["season"]["startedAt"] == boundary
        async with session.post(
            server.url + "/scores/update",
            json={"userId": "late", "actionId": "late-1", "scores": {"minute": 1}},
            headers=bearer(svc),
        ) as resp:
            body = await resp.json()
        assert body["boards"]["minute"]["season"] == minute["season"]["id"]
        async with session.get(server.url + "/api/boards/minute/scores?season=1") as resp:
            season_one = {e["userId"]: e["score"] for e in (await resp.json())["entries"]}
    # Every acknowledged update is in season 1, exactly once: the ledger agrees with the board.
    expected: dict[str, int] = {}
    for action in acked:
        user = f"u{int(action[1:]) % 7}"
        expected[user] = expected.get(user, 0) + 1
    if database_url.startswith("postgresql"):
        con = await asyncpg.connect(database_url)
        try:
            rows = await con.fetch("SELECT action_id, season FROM credits WHERE board = 'minute'")
        finally:
            await con.close()
        ledger = {r["action_id"]: r["season"] for r in rows}
        assert {a: s for a, s in ledger.items() if a in acked} == dict.fromkeys(acked, 1)
        expected = {}
        for action, season in ledger.items():
            if action.startswith("k") and season == 1:
                user = f"u{int(action[1:]) % 7}"
                expected[user] = expected.get(user, 0) + 1
        assert season_one == expected
    else:
        # Unacknowledged updates may have committed too: the board holds at least the acked ones.
        assert all(season_one.get(u, 0) >= n for u, n in expected.items())
