"""Score updates over HTTP, exactly once, on both stores."""

from __future__ import annotations

import asyncio
import uuid

from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import ServerHandle, service_update, ticket, token


async def test_service_update_credits_and_returns_board(server: ServerHandle) -> None:
    status, body = await server.post(
        "/scores/update", service_update("alice", 5, "a-1", username="Alice"), server.service_token
    )
    assert status == 200
    assert body == {
        "success": True,
        "userId": "alice",
        "newScore": 5,
        "duplicate": False,
        # The first commit on a fresh board is its version 1.
        "visibleAt": 1,
        "boards": {"global": {"season": 1, "score": 5, "improved": True, "visibleAt": 1}},
        "topUsers": [{"rank": 1, "userId": "alice", "username": "Alice", "score": 5}],
    }
    body = await server.credit("alice", 3)
    assert body["newScore"] == 8
    assert body["visibleAt"] == body["boards"]["global"]["visibleAt"] == 2
    assert await server.top() == [{"rank": 1, "userId": "alice", "username": "Alice", "score": 8}]


async def test_both_paths_are_the_same_endpoint(server: ServerHandle) -> None:
    s1, b1 = await server.post("/api/score/update", service_update("u", 2, "x"), server.service_token)
    s2, b2 = await server.post("/scores/update", service_update("u", 2, "x"), server.service_token)
    assert (s1, b1["newScore"], b1["duplicate"]) == (200, 2, False)
    assert (s2, b2["newScore"], b2["duplicate"]) == (200, 2, True)


async def test_player_redeems_a_ticket(server: ServerHandle) -> None:
    tok = token("bob", name="Bobby")
    body = ticket("bob", 7)
    status, resp = await server.post("/scores/update", body, tok)
    assert status == 200
    assert (resp["userId"], resp["newScore"], resp["duplicate"]) == ("bob", 7, False)
    assert resp["topUsers"][0] == {"rank": 1, "userId": "bob", "username": "Bobby", "score": 7}
    # Compatible shape: userId and scoreDelta may be sent if they agree.
    body2 = {**ticket("bob", 3), "userId": "bob", "scoreDelta": 3}
    status, resp = await server.post("/api/score/update", body2, tok)
    assert (status, resp["newScore"]) == (200, 10)


async def test_duplicate_returns_the_original_answer(server: ServerHandle) -> None:
    await server.credit("carol", 10, "c-1")
    await server.credit("carol", 5, "c-2")
    status, body = await server.post(
        "/scores/update", service_update("carol", 10, "c-1"), server.service_token
    )
    assert (status, body["newScore"], body["duplicate"]) == (200, 10, True)
    assert await server.top() == [{"rank": 1, "userId": "carol", "username": "carol", "score": 15}]


async def test_same_action_with_other_user_or_delta_conflicts(server: ServerHandle) -> None:
    await server.credit("dave", 10, "d-1")
    for body in (service_update("erin", 10, "d-1"), service_update("dave", 11, "d-1")):
        status, resp = await server.post("/scores/update", body, server.service_token)
        assert status == 409
        assert resp["success"] is False
        assert resp["error"]["code"] == "action_conflict"
    assert (await server.top())[0]["score"] == 10


async def test_200_concurrent_updates_for_one_user_sum_exactly(server: ServerHandle) -> None:
    results = await asyncio.gather(*(server.credit("hot", d) for d in range(1, 201)))
    expected = sum(range(1, 201))
    assert (await server.top())[0] == {"rank": 1, "userId": "hot", "username": "hot", "score": expected}
    scores = sorted(r["newScore"] for r in results)
    # Every acknowledged score is a distinct intermediate total; the last is the sum.
    assert len(set(scores)) == 200
    assert scores[-1] == expected


async def test_50_concurrent_requests_with_one_action_credit_once(server: ServerHandle) -> None:
    body = service_update("racer", 9, "same-action")

    async def send() -> tuple[int, dict[str, object]]:
        return await server.post("/scores/update", body, server.service_token)

    answers = await asyncio.gather(*(send() for _ in range(50)))
    assert {status for status, _ in answers} == {200}
    assert sum(1 for _, b in answers if b["duplicate"] is False) == 1
    assert {b["newScore"] for _, b in answers} == {9}
    assert (await server.top())[0]["score"] == 9


async def test_concurrent_ticket_replays_credit_once(server: ServerHandle) -> None:
    tok = token("pat")
    body = ticket("pat", 4)
    answers = await asyncio.gather(*(server.post("/scores/update", body, tok) for _ in range(30)))
    assert [b["newScore"] for _, b in answers] == [4] * 30
    assert sum(1 for _, b in answers if not b["duplicate"]) == 1


async def test_concurrent_duplicates_across_batches(start: StartServer, database_url: str) -> None:
    # Tiny batches force the duplicates of one action into different transactions.
    server = await start(database_url, flush_max_batch=1, queue_max=500)
    bodies = [service_update(f"u{i % 5}", 1, f"act-{i % 20}") for i in range(100)]
    answers = await asyncio.gather(*(server.post("/scores/update", b, server.service_token) for b in bodies))
    assert {status for status, _ in answers} == {200}
    assert sum(1 for _, b in answers if not b["duplicate"]) == 20
    assert sum(u["score"] for u in await server.top()) == 20


async def test_duplicates_are_recognised_after_a_restart(start: StartServer, database_url: str) -> None:
    first = await start(database_url)
    await first.credit("zed", 12, "z-1")
    await first.stop()
    second = await start(database_url)
    status, body = await second.post("/scores/update", service_update("zed", 12, "z-1"), second.service_token)
    assert (status, body["newScore"], body["duplicate"]) == (200, 12, True)
    status, body = await second.post("/scores/update", service_update("zed", 13, "z-1"), second.service_token)
    assert (status, body["error"]["code"]) == (409, "action_conflict")


async def test_restart_rebuilds_the_same_top_10(start: StartServer, database_url: str) -> None:
    first = await start(database_url)
    # 30 users, many ties, so the order depends on the tie rule too.
    for i in range(30):
        await first.credit(f"user{i:02d}", 10 + (i * 7) % 5)
    for i in range(0, 30, 3):
        await first.credit(f"user{i:02d}", 1)
    before = await first.top()
    assert len(before) == 10
    await first.stop()
    second = await start(database_url)
    assert await second.top() == before


async def test_ties_rank_by_who_reached_the_score_first(server: ServerHandle) -> None:
    await server.credit("b-late", 5)
    await server.credit("a-early", 3)
    await server.credit("c-first", 10)
    await server.credit("a-early", 2)  # reaches 5 after b-late did
    top = await server.top()
    assert [u["userId"] for u in top] == ["c-first", "b-late", "a-early"]
    assert [u["rank"] for u in top] == [1, 2, 3]


async def test_top_k_is_bounded(start: StartServer, database_url: str) -> None:
    server = await start(database_url, top_k=3)
    for i in range(6):
        await server.credit(f"p{i}", i + 1)
    assert [u["userId"] for u in await server.top()] == ["p5", "p4", "p3"]


async def test_memory_ack_answers_202_and_stores_within_the_interval(
    start: StartServer, database_url: str
) -> None:
    server = await start(database_url, ack="memory", flush_interval_ms=5)
    status, body = await server.post("/scores/update", service_update("mem", 4, "m-1"), server.service_token)
    assert status == 202
    assert body["accepted"] is True
    assert body["actionId"] == "m-1"
    for _ in range(100):
        standing = await server.get("/api/users/mem")
        if standing[0] == 200:
            break
        await asyncio.sleep(0.02)
    # One batch committed: the read includes the board's version 1.
    assert standing == (200, {"userId": "mem", "username": "mem", "score": 4, "rank": 1, "version": 1})
    # Exactly once still holds: the duplicate is accepted but not credited again.
    status, _ = await server.post("/scores/update", service_update("mem", 4, "m-1"), server.service_token)
    assert status == 202
    await server.stop()  # flushes
    again = await start(database_url)
    assert await again.top() == [{"rank": 1, "userId": "mem", "username": "mem", "score": 4}]


async def test_service_username_updates_display_name(server: ServerHandle) -> None:
    await server.credit("nick", 1)
    assert (await server.top())[0]["username"] == "nick"
    await server.credit("nick", 1, username="Nick the Quick")
    await server.credit("nick", 1)  # no username: keeps the last one
    assert (await server.top())[0] == {"rank": 1, "userId": "nick", "username": "Nick the Quick", "score": 3}


async def test_service_role_token_credits_any_user(server: ServerHandle) -> None:
    backend = token("game-backend-7", role=Role.SERVICE)
    status, body = await server.post("/scores/update", service_update("someone", 1000), backend)
    assert (status, body["newScore"]) == (200, 1000)
    status, body = await server.post("/scores/update", service_update("someone", 1001), backend)
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "scoreDelta")


async def test_many_users_random_updates_match_a_brute_force_board(server: ServerHandle) -> None:
    import random

    rng = random.Random(7)
    totals: dict[str, int] = {}
    order: dict[str, int] = {}
    for _ in range(8):
        batch = [(f"r{rng.randrange(40)}", rng.randrange(1, 20)) for _ in range(25)]
        results = await asyncio.gather(*(server.credit(u, d, uuid.uuid4().hex) for u, d in batch))
        for r in results:
            totals[r["userId"]] = max(totals.get(r["userId"], 0), r["newScore"])
    top = await server.top()
    assert [u["score"] for u in top] == sorted(totals.values(), reverse=True)[:10]
    for u in top:
        assert totals[u["userId"]] == u["score"]
        order[u["userId"]] = u["rank"]
    assert len(order) == 10
