"""Moderation over real servers on both stores: removals, blocks, reverts, the audit log.

Every change goes through `Driver`, which checks each answer against the
brute-force model of `test_rank_properties`; the tests add literal checks of
what the contract promises, watchers (WebSocket and SSE) that must see each
change as ordinary diffs, and races of an admin call against a player's
concurrent updates.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import ServerHandle, bearer, send, ticket, token
from tests.test_rank_properties import ADMIN, Driver, Model, Spec, Watcher, check_reads, ok, read

SPECS = (
    Spec("global", "incr", True, top_k=3, min_value=1, max_value=1000, archive=2, default=True),
    Spec("lap", "best", False, top_k=3, min_value=1, max_value=600_000, archive=2),
    Spec("level", "latest", True, top_k=3, min_value=0, max_value=100, archive=2),
)
ACTIONS = '\n[actions.quest]\npoints = 5\nboards = ["global"]\n'
WRITE_ROUTES = (
    ("DELETE", "/api/boards/global/users/ann"),
    ("POST", "/api/admin/users/ann/block"),
    ("DELETE", "/api/admin/users/ann/block"),
    ("POST", "/api/admin/actions/a1/revert"),
)


@pytest.fixture(params=["memory", "store"])
async def mod(
    database_url: str, start: StartServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Driver:
    """A server with ranks in memory, or read from the store (the baseline mode)."""
    path = tmp_path / "catalog.toml"
    path.write_text("\n".join(spec.toml() for spec in SPECS) + ACTIONS)
    server = await start(database_url, catalog_file=path, broadcast_tick_ms=5, ranks=request.param)
    return Driver(server, Model.of(SPECS))


async def audit(server: ServerHandle, limit: int | None = None) -> list[dict[str, Any]]:
    query = "" if limit is None else f"?limit={limit}"
    status, body = await send(server, "GET", "/api/admin/audit" + query, tok=ADMIN)
    assert status == 200, body
    return list(body["entries"])


def names(entries: list[dict[str, Any]]) -> list[str]:
    return [e["userId"] for e in entries]


async def player_credit(
    driver: Driver, user: str, name: str, scores: dict[str, int]
) -> tuple[dict[str, str], dict[str, Any]]:
    """A player redeems a ticket for `scores`; the model credits it with the token's name."""
    body = ticket(user, None, scores=scores)
    status, answer = await driver.server.post("/scores/update", body, token(user, name=name))
    expected = driver.model.credit(body["actionId"], user, scores, name)
    assert expected is not None and status == 200, answer
    assert answer["boards"] == expected["boards"]
    return body, answer


# -- who may moderate, and how -----------------------------------------------------


async def test_admin_routes_need_an_admin_token(mod: Driver) -> None:
    server = mod.server
    await mod.credit("ann", {"global": 5}, action="a1")
    wrong_secret = token("root", role=Role.ADMIN, secret="another-secret-0123456789abcdef-0123456789ab")
    for method, path in (*WRITE_ROUTES, ("GET", "/api/admin/audit")):
        body = None if method == "GET" else {"reason": "because"}
        for tok, status, code in (
            (None, 401, "unauthorized"),
            (wrong_secret, 401, "invalid_token"),
            (token("ann"), 403, "forbidden"),
            (token("ann", role=Role.SERVICE), 403, "forbidden"),
            (server.service_token, 403, "forbidden"),
        ):
            got, answer = await send(server, method, path, body, tok)
            assert (got, answer["error"]["code"]) == (status, code), (method, path, tok)
    # Nothing happened.
    assert (await ok(server, "/api/boards/global/users/ann"))["score"] == 5
    assert await audit(server) == []


async def test_every_admin_write_needs_a_reason(mod: Driver) -> None:
    server = mod.server
    await mod.credit("ann", {"global": 5}, action="a1")
    for method, path in WRITE_ROUTES:
        for body in ({}, {"reason": ""}, {"reason": "x" * 513}, {"reason": 5}, {"reason": None}):
            status, answer = await send(server, method, path, body, ADMIN)
            assert (status, answer["error"]["code"], answer["error"].get("field")) == (
                422,
                "validation_failed",
                "reason",
            ), (method, path, body)
        status, answer = await send(server, method, path, {"reason": "ok", "also": 1}, ADMIN)
        assert (status, answer["error"]["code"]) == (422, "validation_failed"), (method, path)
        status, answer = await send(
            server, method, path, None, ADMIN, data=b"reason=ok", headers={"Content-Type": "text/plain"}
        )
        assert (status, answer["error"]["code"]) == (415, "unsupported_media_type"), (method, path)
    # None of that changed anything.
    assert (await ok(server, "/api/boards/global/users/ann"))["score"] == 5
    assert await audit(server) == []
    # 512 characters are fine.
    long_reason = "é" * 512
    await mod.block("ann", long_reason)
    (entry,) = await audit(server)
    assert entry["reason"] == long_reason


async def test_the_audit_log_is_latest_first_and_bounded(mod: Driver) -> None:
    server = mod.server
    before = time.time()
    await mod.credit("ann", {"global": 5}, action="a1")
    await mod.credit("bob", {"global": 6}, action="b1")
    await mod.remove("global", "bob", "bot")
    await mod.remove("global", "bob", "again")  # 404: not recorded
    await mod.block("cat", "spam")
    await mod.block("cat", "spam twice")  # not changed: not recorded
    await mod.unblock("cat", "appeal")
    await mod.unblock("cat", "appeal twice")  # not changed: not recorded
    await mod.revert("a1", "refund")
    await mod.revert("a1", "refund twice")  # not reverted: not recorded
    await mod.revert("nope", "unknown")  # 404: not recorded
    await mod.end_season("global", "weekly")
    await mod.end_season("level", None)
    entries = await audit(server)
    assert [(e["actor"], e["operation"], e["target"], e["reason"]) for e in entries] == [
        ("root", "reset", "boards/level/seasons/1", None),
        ("root", "reset", "boards/global/seasons/1", "weekly"),
        ("root", "revert", "actions/a1", "refund"),
        ("root", "unblock", "users/cat", "appeal"),
        ("root", "block", "users/cat", "spam"),
        ("root", "remove_entry", "boards/global/users/bob", "bot"),
    ]
    assert all(before - 1 <= e["at"] <= time.time() + 1 for e in entries)
    assert all(isinstance(e["at"], int) for e in entries)
    ids = [e["id"] for e in entries]
    assert ids == sorted(set(ids), reverse=True)  # later entries have larger ids
    assert await audit(server, 2) == entries[:2]
    assert await audit(server, 100) == entries
    for bad in ("0", "101", "x", "-1", ""):
        status, body = await send(server, "GET", f"/api/admin/audit?limit={bad}", tok=ADMIN)
        assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "limit")
    # The default is 20, latest first.
    for i in range(22):
        await mod.block(f"u{i}", f"wave {i}")
    entries = await audit(server)
    assert [e["target"] for e in entries] == [f"users/u{i}" for i in range(21, 1, -1)]
    # Another admin is recorded under their own name.
    status, _ = await send(
        server, "POST", "/api/admin/users/x/block", {"reason": "r"}, token("ops", role=Role.ADMIN)
    )
    assert status == 200
    assert (await audit(server, 1))[0]["actor"] == "ops"


# -- removal -----------------------------------------------------------------------


async def test_a_removed_player_starts_from_zero(mod: Driver) -> None:
    server = mod.server
    await mod.credit("ann", {"global": 9, "lap": 80_000})
    await mod.credit("cat", {"global": 7, "lap": 70_000}, username="Cat", metadata={"hat": 1})
    await mod.credit("bob", {"global": 5})
    removed = await mod.remove("global", "cat", "cheating")
    assert removed == {
        "board": "global",
        "season": 1,
        "userId": "cat",
        "removed": {"rank": 2, "userId": "cat", "username": "Cat", "score": 7, "metadata": {"hat": 1}},
    }
    assert await read(server, "/api/boards/global/users/cat") == (404, "user_not_found")
    assert await read(server, "/api/boards/global/users/cat/around") == (404, "user_not_found")
    bob = await ok(server, "/api/boards/global/users/bob")
    assert (bob["rank"], bob["total"]) == (2, 2)
    assert names((await ok(server, "/api/boards/global/users?ids=cat,bob,ann"))["entries"]) == ["ann", "bob"]
    # Only that board: cat still holds the fastest lap.
    assert (await ok(server, "/api/boards/lap/users/cat"))["rank"] == 1
    (entry,) = await audit(server)
    assert (entry["actor"], entry["operation"], entry["target"], entry["reason"]) == (
        "root",
        "remove_entry",
        "boards/global/users/cat",
        "cheating",
    )
    # A second removal, an unknown player or board: 404, and not audited.
    await mod.remove("global", "cat")
    await mod.remove("global", "nobody")
    status, body = await send(server, "DELETE", "/api/boards/nope/users/ann", {"reason": "x"}, ADMIN)
    assert (status, body["error"]["code"]) == (404, "board_not_found")
    assert len(await audit(server)) == 1
    # The old action stays a duplicate with its original answer, and changes nothing.
    assert (await mod.retry(next(a for a, b in mod.bodies.items() if b["userId"] == "cat")))["newScore"] == 7
    assert await read(server, "/api/boards/global/users/cat") == (404, "user_not_found")
    # Earning again starts from zero, under the plain id (the old name went with the entry).
    again = await mod.credit("cat", {"global": 2})
    assert (again["newScore"], again["boards"]["global"]["improved"]) == (2, True)
    entry_now = await ok(server, "/api/boards/global/users/cat")
    assert (entry_now["score"], entry_now["username"], "metadata" in entry_now) == (2, "cat", False)
    # On a best board too: a slower lap than the removed one counts.
    await mod.remove("lap", "ann")
    slower = await mod.credit("ann", {"lap": 85_000})
    # lap: ann's and cat's credits, then ann's removal, took versions 1 to 3.
    assert slower["boards"]["lap"] == {"season": 1, "score": 85_000, "improved": True, "visibleAt": 4}
    await check_reads(server, mod.model, ["ann", "bob", "cat"])


# -- blocks ----------------------------------------------------------------------


async def test_a_blocked_player_is_refused_everywhere_until_unblocked(mod: Driver) -> None:
    server = mod.server
    ann_token = token("ann", name="Ann")
    before, before_answer = await player_credit(mod, "ann", "Ann", {"global": 5, "lap": 80_000})
    service_action = (await mod.credit("ann", {"level": 7}, action="ann-level"))["boards"]
    await mod.credit("bob", {"global": 9, "lap": 90_000})
    await mod.credit("cat", {"global": 3, "level": 8})
    blocked = await mod.block("ann", "cheating")
    assert blocked["changed"] is True and blocked["blocked"] is True
    assert sorted(blocked["removed"], key=lambda r: r["board"]) == [
        {"board": "global", "season": 1, "rank": 2, "score": 5},
        {"board": "lap", "season": 1, "rank": 1, "score": 80_000},
        {"board": "level", "season": 1, "rank": 2, "score": 7},
    ]
    for board in ("global", "lap", "level"):
        assert await read(server, f"/api/boards/{board}/users/ann") == (404, "user_not_found")
    assert (await ok(server, "/api/boards/lap/users/bob"))["rank"] == 1
    # New credits are refused on every route and transport.
    for path in ("/scores/update", "/api/score/update"):
        status, body = await server.post(path, ticket("ann", None, scores={"global": 1}), ann_token)
        assert (status, body["error"]["code"]) == (403, "user_blocked"), path
    await mod.settle_refused(["global"], 2)
    await mod.credit("ann", {"global": 1})  # the model expects 403 user_blocked
    status, body = await server.post("/api/actions", {"type": "quest"}, ann_token)
    assert (status, body["error"]["code"]) == (403, "user_blocked")
    player_ws = await server.session.ws_connect(server.ws_url, headers=bearer(ann_token))
    await player_ws.send_json(
        {"type": "score.update", "id": "w1", **ticket("ann", None, scores={"global": 2})}
    )
    reply = await player_ws.receive_json(timeout=5)
    assert (reply["type"], reply["id"], reply["error"]["code"]) == ("error", "w1", "user_blocked")
    await player_ws.close()
    service_ws = await server.session.ws_connect(server.ws_url, headers=bearer(server.service_token))
    await service_ws.send_json(
        {"type": "score.update", "id": "s1", "userId": "ann", "actionId": "ws-new", "scoreDelta": 1}
    )
    reply = await service_ws.receive_json(timeout=5)
    assert (reply["type"], reply["id"], reply["error"]["code"]) == ("error", "s1", "user_blocked")
    await mod.settle_refused(["global"], 2)  # w1 and s1
    # Retries of actions credited before the block get their original answers, on both transports.
    await service_ws.send_json({"type": "score.update", "id": "s2", **mod.bodies["ann-level"]})
    reply = await service_ws.receive_json(timeout=5)
    assert (reply["type"], reply["duplicate"], reply["boards"]) == ("ack", True, service_action)
    await service_ws.close()
    status, again = await server.post("/scores/update", before, ann_token)
    assert (status, again["duplicate"], again["newScore"], again["boards"]) == (
        200,
        True,
        5,
        before_answer["boards"],
    )
    for board in ("global", "lap", "level"):
        assert await read(server, f"/api/boards/{board}/users/ann") == (404, "user_not_found")
    # Blocking again changes nothing and is not audited.
    assert (await mod.block("ann", "still cheating"))["changed"] is False
    assert [e["operation"] for e in await audit(server)] == ["block"]
    # Unblocking does not bring the entries back.
    assert (await mod.unblock("ann", "appeal"))["changed"] is True
    assert (await mod.unblock("ann", "appeal"))["changed"] is False
    for board in ("global", "lap", "level"):
        assert await read(server, f"/api/boards/{board}/users/ann") == (404, "user_not_found")
    assert [e["operation"] for e in await audit(server)] == ["unblock", "block"]
    # Earning again starts from zero.
    status, started = await server.post("/api/actions", {"type": "quest"}, ann_token)
    assert status == 201, started
    again = await mod.credit("ann", {"global": 3})
    assert again["newScore"] == 3
    # A player nobody has seen can be blocked ahead of time.
    ghost = await mod.block("ghost", "known bot")
    assert (ghost["changed"], ghost["removed"]) == (True, [])
    await mod.credit("ghost", {"global": 1})  # refused
    await check_reads(server, mod.model, ["ann", "bob", "cat", "ghost"])


# -- reverts -----------------------------------------------------------------------


async def test_a_revert_takes_an_increment_off(mod: Driver) -> None:
    server = mod.server
    await mod.credit("ann", {"global": 5}, action="a1")
    await mod.credit("ann", {"global": 7}, action="a2")
    await mod.credit("bob", {"global": 8}, action="b1")
    assert names(await server.top()) == ["ann", "bob"]
    answer = await mod.revert("a1", "refund")
    assert answer == {
        "actionId": "a1",
        "userId": "ann",
        "reverted": True,
        "boards": {"global": {"season": 1, "score": 7}},
    }
    assert names(await server.top()) == ["bob", "ann"]
    assert (await ok(server, "/api/boards/global/users/ann"))["rank"] == 2
    # Twice: nothing more, not audited; the action stays a duplicate with its first answer.
    assert await mod.revert("a1", "again") == {
        "actionId": "a1",
        "userId": "ann",
        "reverted": False,
        "boards": {},
    }
    assert (await mod.retry("a1"))["newScore"] == 5
    assert (await ok(server, "/api/boards/global/users/ann"))["score"] == 7
    status, body = await send(server, "POST", "/api/admin/actions/nope/revert", {"reason": "x"}, ADMIN)
    assert (status, body["error"]["code"]) == (404, "action_not_found")
    assert [e["target"] for e in await audit(server)] == ["actions/a1"]
    # The last live credit reverted: the entry is gone.
    assert (await mod.revert("a2"))["boards"] == {"global": {"season": 1, "score": None}}
    assert await read(server, "/api/boards/global/users/ann") == (404, "user_not_found")
    assert names(await server.top()) == ["bob"]
    # An action on several boards comes off all of them.
    await mod.credit("ann", {"global": 4, "lap": 70_000, "level": 9}, action="m1")
    await mod.credit("ann", {"lap": 75_000, "level": 2}, action="m2")
    assert (await mod.revert("m1"))["boards"] == {
        "global": {"season": 1, "score": None},
        "lap": {"season": 1, "score": 75_000},
        "level": {"season": 1, "score": 2},
    }
    await check_reads(server, mod.model, ["ann", "bob"])


async def test_a_revert_replays_best_and_latest_with_their_times(mod: Driver) -> None:
    server = mod.server
    # lap (best, asc): ann's 80 s came first, then bob's; ann's later 70 s is reverted.
    await mod.credit("ann", {"lap": 80_000}, action="x1", metadata={"run": 1})
    await mod.credit("bob", {"lap": 80_000}, action="y1")
    await mod.credit("ann", {"lap": 70_000}, action="x2", metadata={"run": 2})
    await mod.credit("ann", {"lap": 80_000}, action="x3", metadata={"run": 3})  # not better
    assert names((await ok(server, "/api/boards/lap/scores"))["entries"]) == ["ann", "bob"]
    assert (await mod.revert("x2"))["boards"] == {"lap": {"season": 1, "score": 80_000}}
    # As if x2 never happened: ann reached 80 s with x1, before bob, with x1's metadata.
    lap = (await ok(server, "/api/boards/lap/scores"))["entries"]
    assert [(e["userId"], e["score"], e.get("metadata")) for e in lap] == [
        ("ann", 80_000, {"run": 1}),
        ("bob", 80_000, None),
    ]
    # Without x1, ann's 80 s is x3's, after bob's.
    await mod.revert("x1")
    lap = (await ok(server, "/api/boards/lap/scores"))["entries"]
    assert [(e["userId"], e.get("metadata")) for e in lap] == [("bob", None), ("ann", {"run": 3})]
    # level (latest): ann's second 5 is reverted, so she holds her first 5, and its name.
    await mod.credit("ann", {"level": 5}, action="l1", username="Ann One")
    await mod.credit("bob", {"level": 5}, action="l2")
    await mod.credit("ann", {"level": 5}, action="l3", username="Ann Three")
    assert names((await ok(server, "/api/boards/level/scores"))["entries"]) == ["bob", "ann"]
    await mod.revert("l3")
    level = (await ok(server, "/api/boards/level/scores"))["entries"]
    assert [(e["userId"], e["username"]) for e in level] == [("ann", "Ann One"), ("bob", "bob")]
    # global (incr): the record's time is that of the last live credit.
    await mod.credit("ann", {"global": 10}, action="g1")
    await mod.credit("bob", {"global": 10}, action="g2")
    await mod.credit("ann", {"global": 3}, action="g3")
    await mod.revert("g3")
    assert [(e["userId"], e["score"]) for e in await server.top()] == [("ann", 10), ("bob", 10)]
    await check_reads(server, mod.model, ["ann", "bob"])


async def test_a_reverted_name_goes_with_its_action(mod: Driver) -> None:
    server = mod.server
    await mod.credit("bob", {"global": 8, "level": 4}, metadata={"first": True})
    await mod.credit("bob", {"global": 2, "level": 6}, action="named", username="Bobby")
    assert (await ok(server, "/api/boards/global/users/bob"))["username"] == "Bobby"
    await mod.revert("named")
    # As if the action never happened: no live credit carries a name, so the id is shown.
    for board in ("global", "level"):
        entry = await ok(server, f"/api/boards/{board}/users/bob")
        assert (entry["username"], entry["metadata"]) == ("bob", {"first": True}), board
    await check_reads(server, mod.model, ["bob"])


async def test_a_revert_in_an_archived_season_fixes_that_season(mod: Driver) -> None:
    server = mod.server
    await mod.credit("ann", {"global": 5, "level": 3}, action="old")
    await mod.credit("bob", {"global": 4, "level": 9})
    for board in ("global", "level"):
        await mod.end_season(board)
    await mod.credit("ann", {"global": 2, "level": 1}, action="new")
    answer = await mod.revert("old", "late refund")
    assert answer["boards"] == {"global": {"season": 1, "score": None}, "level": {"season": 1, "score": None}}
    assert names((await ok(server, "/api/boards/global/scores?season=1"))["entries"]) == ["bob"]
    assert await read(server, "/api/boards/global/users/ann?season=1") == (404, "user_not_found")
    assert (await ok(server, "/api/boards/global/users/bob?season=1"))["total"] == 1
    # The current season is untouched.
    assert (await ok(server, "/api/boards/global/users/ann"))["score"] == 2
    await check_reads(server, mod.model, ["ann", "bob"])


async def test_moderation_survives_a_restart(
    database_url: str, start: StartServer, tmp_path: Path, mod: Driver
) -> None:
    await mod.credit("ann", {"global": 5}, action="a1")
    await mod.credit("bob", {"global": 7}, action="b1")
    await mod.credit("bob", {"global": 1}, action="b2")
    await mod.credit("cat", {"global": 3, "level": 4}, action="c1")
    await mod.block("ann", "bot")
    await mod.revert("b2", "refund")
    await mod.remove("level", "cat", "cheat")
    before = await audit(mod.server)
    await mod.server.stop()
    mod.server = await start(
        database_url, catalog_file=tmp_path / "catalog.toml", ranks=mod.server.settings.ranks
    )
    assert await audit(mod.server) == before
    await mod.credit("ann", {"global": 1})  # still blocked: 403 user_blocked
    await mod.retry("a1")
    await mod.revert("b2", "again")  # reverted already
    await mod.retry("b2")
    await mod.remove("level", "cat")  # gone already: 404
    await check_reads(mod.server, mod.model, ["ann", "bob", "cat"])
    await mod.unblock("ann", "appeal")
    await mod.credit("ann", {"global": 2})
    await check_reads(mod.server, mod.model, ["ann", "bob", "cat"])


# -- what subscribers see -----------------------------------------------------------


def ordinary_diffs(watcher: Watcher, board: str) -> None:
    """After the first snapshot, only diffs, one seq after the other, in one epoch."""
    events = [e for e in watcher.events if e.get("board") == board]
    assert events[0]["type"] == "scoreboard:update"
    assert len(events) > 1
    for prev, event in itertools.pairwise(events):
        assert event["type"] == "scoreboard:diff", event
        assert (event["epoch"], event["seq"]) == (prev["epoch"], prev["seq"] + 1)


async def test_watchers_see_each_change_as_ordinary_diffs(mod: Driver) -> None:
    server = mod.server
    for i, score in enumerate((50, 40, 30, 20, 10), start=1):
        await mod.credit(f"p{i}", {"global": score, "lap": 1000 * i}, action=f"a{i}", username=f"P{i}")
    ws = await Watcher.ws(server, ["global", "lap"])
    sse = await Watcher.sse(server, "global")
    changes: list[Callable[[], Any]] = [
        lambda: mod.remove("global", "p2"),  # p4 comes into the top 3
        lambda: mod.revert("a1"),  # p1 drops out of both boards; p5 comes in
        lambda: mod.block("p3"),
        lambda: mod.credit("p1", {"global": 15}),
        lambda: mod.unblock("p3"),
        lambda: mod.credit("p3", {"global": 60}),
        lambda: mod.remove("lap", "p2"),
    ]
    for change in changes:
        await change()
        await ws.holds(mod.model, ["global", "lap"])
        await sse.holds(mod.model, ["global"])
    assert names(mod.model.top("global")) == ["p3", "p4", "p1"]
    ordinary_diffs(ws, "global")
    ordinary_diffs(ws, "lap")
    ordinary_diffs(sse, "global")
    await ws.close()
    await sse.close()


# -- races -----------------------------------------------------------------------------

Answer = tuple[dict[str, Any], int, dict[str, Any]]  # body, status (403 for a user_blocked frame), answer


def visible_at(answers: list[Answer], board: str) -> list[int]:
    """The `visibleAt` on `board` of each credited answer, in the order given.

    Concurrent updates share batches, so how many versions they take depends on timing;
    what holds is their order: one in a later batch has a higher version.
    """
    return [answer["boards"][board]["visibleAt"] for _, status, answer in answers if status == 200]


async def board_versions(server: ServerHandle, boards: Iterable[str]) -> dict[str, int]:
    """Every board's current version, as its reads say."""
    return {board: (await ok(server, f"/api/boards/{board}/scores?limit=1"))["version"] for board in boards}


async def stream(
    server: ServerHandle, bodies: list[dict[str, Any]], transport: str, answered: Callable[[], None]
) -> list[Answer]:
    """Send `bodies` one after the other, over HTTP or one WebSocket; each answer as it comes."""
    results: list[Answer] = []
    ws: aiohttp.ClientWebSocketResponse | None = None
    if transport == "ws":
        ws = await server.session.ws_connect(server.ws_url, headers=bearer(server.service_token))
    for n, body in enumerate(bodies):
        if ws is None:
            status, answer = await server.post("/scores/update", body, server.service_token)
        else:
            await ws.send_json({"type": "score.update", "id": n, **body})
            answer = await ws.receive_json(timeout=10)
            assert answer["id"] == n
            status = 200 if answer["type"] == "ack" else {"user_blocked": 403}.get(answer["error"]["code"], 0)
        results.append((body, status, answer))
        answered()
    if ws is not None:
        await ws.close()
    return results


async def race(
    server: ServerHandle, admin_call: Callable[[], Any], *, after: int = 8
) -> tuple[list[list[Answer]], list[Answer], Any]:
    """ann's 40 updates over 2 HTTP and 2 WebSocket streams, bob's 12, and the admin call
    once `after` of ann's are answered."""
    ann = [
        [
            {"userId": "ann", "actionId": f"ann-{s}-{k}", "scores": {"global": 1, "level": 10 * s + k + 1}}
            for k in range(10)
        ]
        for s in range(4)
    ]
    bob = [
        {"userId": "bob", "actionId": f"bob-{j}", "scores": {"global": 1, "level": 60 + j}} for j in range(12)
    ]
    enough = asyncio.Event()
    count = 0

    def answered() -> None:
        nonlocal count
        count += 1
        if count >= after:
            enough.set()

    async def admin() -> Any:
        await enough.wait()
        return await admin_call()

    *ann_results, bob_results, admin_answer = await asyncio.gather(
        *(stream(server, bodies, "http" if s < 2 else "ws", answered) for s, bodies in enumerate(ann)),
        stream(server, bob, "http", lambda: None),
        admin(),
    )
    assert all(status == 200 for _, status, _ in bob_results)
    return ann_results, bob_results, admin_answer


async def test_a_revert_racing_the_players_updates(mod: Driver) -> None:
    server = mod.server
    await mod.credit("ann", {"global": 1000, "level": 0}, action="x")
    model = mod.model
    watcher = await Watcher.ws(server, ["global", "level"])
    streams, bob, reverted = await race(
        server, lambda: send(server, "POST", "/api/admin/actions/x/revert", {"reason": "race"}, ADMIN)
    )
    status, reverted = reverted
    assert status == 200 and reverted["reverted"] is True, reverted
    answers = [a for s in streams for a in s]
    assert all(status == 200 for _, status, _ in answers), answers
    # Each answer's score tells its place in ann's ledger (the count of her credits so far) and
    # whether x was still live when it committed.
    place = {body["actionId"]: answer["boards"]["global"]["score"] % 1000 for body, _, answer in answers}
    live_x = {body["actionId"]: answer["boards"]["global"]["score"] >= 1000 for body, _, answer in answers}
    assert sorted(place.values()) == list(range(1, 41))
    ledger = sorted(answers, key=lambda a: place[a[0]["actionId"]])
    k = sum(live_x.values())
    assert 0 < k < 40, "the revert did not land among the updates"
    assert all(live_x[body["actionId"]] for body, _, _ in ledger[:k])
    # The revert's answer is the state between the k-th and the next credit.
    assert reverted["boards"] == {
        "global": {"season": 1, "score": k},
        "level": {"season": 1, "score": ledger[k - 1][0]["scores"]["level"]},
    }
    # Replay the ledger's order in the model: ann's credits around the revert, bob's anywhere
    # (their scores never tie with ann's, so their interleaving does not matter).
    for body, _, _ in ledger[:k]:
        model.credit(body["actionId"], "ann", body["scores"])
    model.revert("x", "race")
    for body, _, _ in ledger[k:]:
        model.credit(body["actionId"], "ann", body["scores"])
    for body, _, _ in bob:
        model.credit(body["actionId"], "bob", body["scores"])
    # ann's ledger is in commit order, after x (version 1 of both boards), and the revert
    # took a global version between her k-th credit and the next (it left level as it was).
    for board in ("global", "level"):
        seen = visible_at(ledger, board)
        assert seen == sorted(seen) and seen[0] >= 2, board
    assert visible_at(ledger, "global")[k] >= visible_at(ledger, "global")[k - 1] + 2
    # Updates came after the revert: each board's last commit was the highest `visibleAt`.
    model.settle({board: max(visible_at([*answers, *bob], board)) for board in ("global", "level")})
    assert model.entry_of("global", "ann") == {"rank": 1, "userId": "ann", "username": "ann", "score": 40}
    await watcher.holds(model, ["global", "level"])
    await watcher.close()
    await check_reads(server, model, ["ann", "bob"])
    assert [e["target"] for e in await audit(server)] == ["actions/x"]
    # Every answer stays what it was.
    for body, _, answer in answers:
        status, again = await server.post("/scores/update", body, server.service_token)
        assert (status, again["duplicate"], again["boards"]) == (200, True, answer["boards"])


async def test_a_block_racing_the_players_updates(mod: Driver) -> None:
    server = mod.server
    model = mod.model
    watcher = await Watcher.ws(server, ["global", "level"])
    streams, bob, blocked = await race(
        server, lambda: send(server, "POST", "/api/admin/users/ann/block", {"reason": "race"}, ADMIN)
    )
    status, blocked = blocked
    assert status == 200 and blocked["changed"] is True, blocked
    answers = [a for s in streams for a in s]
    assert {status for _, status, _ in answers} <= {200, 403}, answers
    for s in streams:  # once refused, refused for good
        statuses = [status for _, status, _ in s]
        assert statuses == sorted(statuses), statuses
    credited = [a for a in answers if a[1] == 200]
    refused = [a for a in answers if a[1] == 403]
    assert credited and refused, "the block did not land among the updates"
    ledger = sorted(credited, key=lambda a: a[2]["boards"]["global"]["score"])
    k = len(ledger)
    assert [a[2]["boards"]["global"]["score"] for a in ledger] == list(range(1, k + 1))
    removed = {r["board"]: r for r in blocked["removed"]}
    assert set(removed) == {"global", "level"}
    assert (removed["global"]["season"], removed["global"]["score"]) == (1, k)
    assert removed["level"]["score"] == ledger[-1][0]["scores"]["level"]
    assert removed["global"]["rank"] in (1, 2) and removed["level"]["rank"] == 2  # bob's levels are 60+
    for body, _, _ in ledger:
        model.credit(body["actionId"], "ann", body["scores"])
    model.block("ann", "race")
    for body, _, _ in bob:
        model.credit(body["actionId"], "bob", body["scores"])
    # ann's credits are in commit order, and the block (a version of both boards) came after
    # them; after it came only bob's batches and the refused ones (which PostgreSQL numbers
    # too, see Driver.settle_refused), so each board's version is within these bounds.
    now = await board_versions(server, ("global", "level"))
    for board in ("global", "level"):
        seen, bobs = visible_at(ledger, board), visible_at(bob, board)
        assert seen == sorted(seen) and seen[0] >= 1, board
        later = len({v for v in bobs if v > seen[-1]})
        assert max(seen[-1] + 1, *bobs) <= now[board] <= seen[-1] + 1 + later + len(refused), (board, now)
    model.settle(now)
    for board in ("global", "level"):
        assert await read(server, f"/api/boards/{board}/users/ann") == (404, "user_not_found")
    await watcher.holds(model, ["global", "level"])
    await watcher.close()
    await check_reads(server, model, ["ann", "bob"])
    # Retries: the credited ones get their answers, the refused ones are still refused.
    for body, _, answer in ledger:
        status, again = await server.post("/scores/update", body, server.service_token)
        assert (status, again["duplicate"], again["boards"]) == (200, True, answer["boards"])
    for body, _, _ in refused:
        status, again = await server.post("/scores/update", body, server.service_token)
        assert (status, again["error"]["code"]) == (403, "user_blocked")
    await mod.settle_refused(("global", "level"), len(refused))
    # After an unblock a refused action was never credited: it counts now, from zero.
    await mod.unblock("ann", "appeal")
    body = refused[0][0]
    status, answer = await server.post("/scores/update", body, server.service_token)
    assert (status, answer["duplicate"], answer["boards"]["global"]["score"]) == (200, False, 1)
    expected = model.credit(body["actionId"], "ann", body["scores"])
    assert expected is not None and answer["visibleAt"] == expected["visibleAt"], (answer, expected)
    await check_reads(server, model, ["ann", "bob"])


async def test_a_removal_racing_the_players_updates(mod: Driver) -> None:
    server = mod.server
    model = mod.model
    watcher = await Watcher.ws(server, ["global", "level"])
    streams, bob, removal = await race(
        server, lambda: send(server, "DELETE", "/api/boards/level/users/ann", {"reason": "race"}, ADMIN)
    )
    status, removed = removal
    assert status == 200, removed
    answers = [a for s in streams for a in s]
    assert all(status == 200 for _, status, _ in answers), answers
    # global counts ann's credits: each answer's place in her ledger. The removal took her
    # level entry as the k-th credit had left it (every level value is distinct).
    ledger = sorted(answers, key=lambda a: a[2]["boards"]["global"]["score"])
    assert [a[2]["boards"]["global"]["score"] for a in ledger] == list(range(1, 41))
    values = [body["scores"]["level"] for body, _, _ in ledger]
    k = values.index(removed["removed"]["score"]) + 1
    assert 0 < k < 40, "the removal did not land among the updates"
    assert (removed["board"], removed["season"], removed["userId"]) == ("level", 1, "ann")
    for body, _, _ in ledger[:k]:
        model.credit(body["actionId"], "ann", body["scores"])
    model.remove("level", "ann", "race")
    for body, _, _ in ledger[k:]:
        model.credit(body["actionId"], "ann", body["scores"])
    for body, _, _ in bob:
        model.credit(body["actionId"], "bob", body["scores"])
    # ann's ledger is in commit order, and the removal took a level version between her
    # k-th credit and the next; updates came after it: the highest `visibleAt` is each board's.
    for board in ("global", "level"):
        seen = visible_at(ledger, board)
        assert seen == sorted(seen) and seen[0] >= 1, board
    assert visible_at(ledger, "level")[k] >= visible_at(ledger, "level")[k - 1] + 2
    model.settle({board: max(visible_at([*answers, *bob], board)) for board in ("global", "level")})
    assert (await ok(server, "/api/boards/level/users/ann"))["score"] == values[-1]
    assert (await ok(server, "/api/boards/global/users/ann"))["score"] == 40
    await watcher.holds(model, ["global", "level"])
    await watcher.close()
    await check_reads(server, model, ["ann", "bob"])


async def test_a_blocked_player_is_refused_at_once_with_ack_memory(
    database_url: str, start: StartServer
) -> None:
    # With ACK=memory the answer comes before the batch: the block is checked up front.
    server = await start(database_url, ack="memory")
    status, body = await send(server, "POST", "/api/admin/users/mallory/block", {"reason": "bot"}, ADMIN)
    assert status == 200 and body["changed"] is True, body
    status, body = await server.post("/scores/update", ticket("mallory", 5), token("mallory"))
    assert (status, body["error"]["code"]) == (403, "user_blocked"), body
    status, body = await server.post("/scores/update", ticket("honest", 5), token("honest"))
    assert status == 202, body
