"""Starting actions (tickets from the catalog), and the read endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import StartServer
from tests.helpers import FakeClock, ServerHandle, service_update, ticket, token


async def test_action_ticket_flow_with_min_duration_and_expiry(
    start: StartServer, database_url: str, catalog_file: Path, clock: FakeClock
) -> None:
    server = await start(database_url, actions_file=catalog_file, clock=clock)
    tok = token("quester", name="Quester", now=clock.now, ttl=7200)
    status, started = await server.post("/api/actions", {"type": "quest_complete"}, tok)
    assert status == 201
    assert set(started) == {"actionId", "ticket", "reward", "notBefore", "expiresAt"}
    assert started["reward"] == 50
    assert started["notBefore"] == int(clock.now) + 30
    assert started["expiresAt"] == int(clock.now) + 600
    body = {"actionId": started["actionId"], "ticket": started["ticket"]}

    status, resp = await server.post("/scores/update", body, tok)
    assert (status, resp["error"]["code"]) == (425, "ticket_not_yet_valid")
    clock.advance(31)
    status, resp = await server.post("/scores/update", body, tok)
    assert (status, resp["newScore"], resp["duplicate"]) == (200, 50, False)

    # After expiry a retry of the credited action still gets the original answer...
    clock.advance(600)
    status, resp = await server.post("/scores/update", body, tok)
    assert (status, resp["newScore"], resp["duplicate"]) == (200, 50, True)
    # ...but a ticket that was never redeemed cannot be any more.
    status, late = await server.post("/api/actions", {"type": "quest_complete"}, tok)
    clock.advance(601)
    status, resp = await server.post(
        "/scores/update", {"actionId": late["actionId"], "ticket": late["ticket"]}, tok
    )
    assert (status, resp["error"]["code"]) == (403, "ticket_expired")
    assert (await server.top())[0]["score"] == 50


async def test_not_yet_valid_sends_retry_after(
    start: StartServer, sqlite_url: str, catalog_file: Path
) -> None:
    server = await start(sqlite_url, actions_file=catalog_file)
    tok = token("q")
    _, started = await server.post("/api/actions", {"type": "quest_complete"}, tok)
    async with server.session.post(
        server.url + "/scores/update",
        json={"actionId": started["actionId"], "ticket": started["ticket"]},
        headers={"Authorization": f"Bearer {tok}"},
    ) as resp:
        assert resp.status == 425
        assert 29 <= int(resp.headers["Retry-After"]) <= 30


async def test_unknown_action_type_and_bad_bodies(server: ServerHandle) -> None:
    tok = token("p")
    status, body = await server.post("/api/actions", {"type": "boss_kill"}, tok)
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "unknown_action_type", "type")
    status, body = await server.post("/api/actions", {"type": "default", "points": 1000}, tok)
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "points")
    status, body = await server.post("/api/actions", {"type": "default"})
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = await server.post("/api/actions", {"type": "default"}, tok)
    assert (status, body["reward"]) == (201, 1)


async def test_action_rate_limit(
    start: StartServer, sqlite_url: str, catalog_file: Path, clock: FakeClock
) -> None:
    server = await start(sqlite_url, actions_file=catalog_file, clock=clock)
    tok, other = token("coiner", now=clock.now), token("other", now=clock.now)
    for _ in range(3):
        status, _ = await server.post("/api/actions", {"type": "coin"}, tok)
        assert status == 201
    async with server.session.post(
        server.url + "/api/actions", json={"type": "coin"}, headers={"Authorization": f"Bearer {tok}"}
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "20"
        assert (await resp.json())["error"]["code"] == "rate_limited"
    assert (await server.post("/api/actions", {"type": "coin"}, other))[0] == 201
    assert (await server.post("/api/actions", {"type": "default"}, tok))[0] == 201  # per type
    clock.advance(20)
    assert (await server.post("/api/actions", {"type": "coin"}, tok))[0] == 201


async def test_tickets_from_the_api_redeem_exactly_once(server: ServerHandle) -> None:
    tok = token("grinder")
    starts = [(await server.post("/api/actions", {"type": "default"}, tok))[1] for _ in range(20)]
    bodies = [{"actionId": s["actionId"], "ticket": s["ticket"]} for s in starts]
    answers = await asyncio.gather(*(server.post("/scores/update", b, tok) for b in bodies + bodies))
    assert all(status == 200 for status, _ in answers)
    assert sum(1 for _, a in answers if not a["duplicate"]) == 20
    assert (await server.get("/api/users/grinder"))[1]["score"] == 20


# -- reads ---------------------------------------------------------------


async def test_user_standing_inside_and_outside_the_board(start: StartServer, database_url: str) -> None:
    server = await start(database_url, top_k=3)
    for i, score in enumerate([50, 40, 40, 30, 20, 10]):
        await server.credit(f"u{i}", score)
    # Six credits, one commit each: the reads include the board's version 6.
    assert await server.get("/api/users/u0") == (
        200,
        {"userId": "u0", "username": "u0", "score": 50, "rank": 1, "version": 6},
    )
    assert (await server.get("/api/users/u2"))[1]["rank"] == 3  # tie: u1 reached 40 first
    assert await server.get("/api/users/u4") == (
        200,
        {"userId": "u4", "username": "u4", "score": 20, "rank": 5, "version": 6},
    )
    assert (await server.get("/api/users/u5"))[1]["rank"] == 6
    status, body = await server.get("/api/users/nobody")
    assert (status, body["error"]["code"]) == (404, "user_not_found")
    status, body = await server.get("/api/users/" + "x" * 129)
    assert (status, body["error"]["field"]) == (422, "userId")


async def test_user_ids_with_unusual_characters(server: ServerHandle) -> None:
    for user in ("ünïcødé", "with space", "slash/inside", "🎮player"):
        await server.credit(user, 5)
        from urllib.parse import quote

        status, body = await server.get("/api/users/" + quote(user, safe=""))
        assert (status, body["userId"], body["score"]) == (200, user, 5)


async def test_scores_is_public_and_ranked(server: ServerHandle) -> None:
    assert await server.get("/scores") == (200, {"topUsers": [], "version": 0})  # nothing committed yet
    await server.credit("a", 1)
    await server.credit("b", 2)
    assert (await server.get("/scores"))[1]["version"] == 2
    assert await server.top() == [
        {"rank": 1, "userId": "b", "username": "b", "score": 2},
        {"rank": 2, "userId": "a", "username": "a", "score": 1},
    ]


async def test_health_and_readiness(server: ServerHandle) -> None:
    assert await server.get("/healthz") == (200, {"status": "ok"})
    status, body = await server.get("/readyz")
    assert (status, body["status"], body["bus"]) == (200, "ready", "off")  # one process: no bus


async def test_expired_player_token_cannot_start_or_redeem(server: ServerHandle) -> None:
    expired = token("late", ttl=-60)
    status, body = await server.post("/api/actions", {"type": "default"}, expired)
    assert (status, body["error"]["code"]) == (401, "token_expired")
    status, body = await server.post("/scores/update", ticket("late", 1), expired)
    assert (status, body["error"]["code"]) == (401, "token_expired")
    status, body = await server.post("/scores/update", service_update("late", 1), expired)
    assert status == 401


async def test_memory_ack_refuses_expired_tickets_outright(
    start: StartServer, sqlite_url: str, clock: FakeClock
) -> None:
    server = await start(sqlite_url, ack="memory", clock=clock)
    tok = token("m", now=clock.now, ttl=7200)
    body = ticket("m", 3, now=clock.now, ttl=60)
    status, resp = await server.post("/scores/update", body, tok)
    assert (status, resp["accepted"]) == (202, True)
    clock.advance(61)
    status, resp = await server.post("/scores/update", body, tok)
    assert (status, resp["error"]["code"]) == (403, "ticket_expired")
