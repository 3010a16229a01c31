"""Several boards, their operators and orders, multi-board updates, and the per-board reads."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import ServerHandle, ticket, token

CATALOG = """
[boards.global]
title = "All time"
default = true

[boards.laps]
title = "Fastest lap"
operator = "best"
order = "asc"
min_value = 1
max_value = 600000

[boards.level]
title = "Level"
operator = "latest"
min_value = 0
max_value = 100

[boards.weekly]
title = "This week"
reset = "weekly"
archive = 2

[actions.quest_complete]
points = 50
boards = ["global", "weekly"]

[actions.coin]
points = 2
"""


@pytest.fixture
def boards_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture
async def boards(start: StartServer, database_url: str, boards_file: Path) -> ServerHandle:
    return await start(database_url, catalog_file=boards_file)


def aid() -> str:
    return uuid.uuid4().hex


async def multi(
    server: ServerHandle, user: str, scores: dict[str, int], action: str | None = None, **extra: Any
) -> tuple[int, Any]:
    body = {"userId": user, "actionId": action or aid(), "scores": scores, **extra}
    return await server.post("/scores/update", body, server.service_token)


async def entries(server: ServerHandle, board: str, season: int | None = None) -> list[dict[str, Any]]:
    query = "" if season is None else f"?season={season}"
    status, body = await server.get(f"/api/boards/{board}/scores{query}")
    assert status == 200, body
    return list(body["entries"])


async def test_one_action_writes_several_boards_at_once_exactly_once(boards: ServerHandle) -> None:
    status, body = await multi(boards, "ann", {"global": 5, "laps": 81_234, "level": 7}, "a1", username="Ann")
    assert status == 200, body
    assert body["newScore"] == 5 and body["duplicate"] is False
    # Each board's first commit is its version 1.
    assert body["visibleAt"] == 1
    assert body["boards"] == {
        "global": {"season": 1, "score": 5, "improved": True, "visibleAt": 1},
        "laps": {"season": 1, "score": 81_234, "improved": True, "visibleAt": 1},
        "level": {"season": 1, "score": 7, "improved": True, "visibleAt": 1},
    }
    assert body["topUsers"] == [{"rank": 1, "userId": "ann", "username": "Ann", "score": 5}]
    # A retry gets the original answer, every board included, and writes nothing.
    status, again = await multi(boards, "ann", {"global": 5, "laps": 81_234, "level": 7}, "a1")
    assert status == 200
    assert again["duplicate"] is True and again["boards"] == body["boards"] and again["newScore"] == 5
    assert again["visibleAt"] == 1  # the original's version, not a new one
    # Another user, another set of boards, or other values: a conflict.
    for user, scores in (
        ("bob", {"global": 5, "laps": 81_234, "level": 7}),
        ("ann", {"global": 5, "laps": 81_234}),
        ("ann", {"global": 5, "laps": 81_000, "level": 7}),
    ):
        status, refused = await multi(boards, user, scores, "a1")
        assert (status, refused["error"]["code"]) == (409, "action_conflict")
    assert [e["score"] for e in await entries(boards, "global")] == [5]
    assert [e["score"] for e in await entries(boards, "laps")] == [81_234]


async def test_a_board_without_the_default_answers_without_top_users(boards: ServerHandle) -> None:
    status, body = await multi(boards, "ann", {"laps": 90_000})
    assert status == 200
    assert "newScore" not in body and "topUsers" not in body and "visibleAt" not in body
    assert body["boards"] == {"laps": {"season": 1, "score": 90_000, "improved": True, "visibleAt": 1}}


async def test_unknown_board_and_bounds_refuse_the_whole_update(boards: ServerHandle) -> None:
    status, body = await multi(boards, "ann", {"global": 5, "nope": 1})
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "unknown_board", "scores.nope")
    status, body = await multi(boards, "ann", {"global": 5, "laps": 0})
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "out_of_range", "scores.laps")
    status, body = await multi(boards, "ann", {"global": 5, "level": 101})
    assert (status, body["error"]["code"]) == (422, "out_of_range")
    status, body = await multi(boards, "ann", {"global": 1001})
    assert (status, body["error"]["code"]) == (422, "out_of_range")
    # Nothing was written on any board.
    for board in ("global", "laps", "level"):
        assert await entries(boards, board) == []
    status, body = await boards.post(
        "/scores/update",
        {"userId": "a", "actionId": aid(), "scores": {"global": 1}, "scoreDelta": 1},
        boards.service_token,
    )
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    status, body = await boards.post(
        "/scores/update", {"userId": "a", "actionId": aid(), "scores": {}}, boards.service_token
    )
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "scores")


async def test_best_on_an_ascending_board_keeps_the_fastest_lap(boards: ServerHandle) -> None:
    _, first = await multi(boards, "ann", {"laps": 80_000}, metadata={"car": "red"})
    assert first["boards"]["laps"] == {"season": 1, "score": 80_000, "improved": True, "visibleAt": 1}
    _, slower = await multi(boards, "ann", {"laps": 85_000}, metadata={"car": "blue"})
    # A committed batch that touched the board takes a version, improved or not.
    assert slower["boards"]["laps"] == {"season": 1, "score": 80_000, "improved": False, "visibleAt": 2}
    await multi(boards, "bob", {"laps": 79_000})
    await multi(boards, "cat", {"laps": 80_000})  # ties with ann, reached later
    assert [(e["userId"], e["score"]) for e in await entries(boards, "laps")] == [
        ("bob", 79_000),
        ("ann", 80_000),
        ("cat", 80_000),
    ]
    status, ann = await boards.get("/api/boards/laps/users/ann")
    assert status == 200
    assert ann == {
        "board": "laps",
        "season": 1,
        "userId": "ann",
        "username": "ann",
        "score": 80_000,
        "rank": 2,
        "total": 3,
        "version": 4,  # four commits on laps
        "metadata": {"car": "red"},  # the best lap's, not the slower one's
    }
    _, faster = await multi(boards, "ann", {"laps": 70_000}, metadata={"car": "green"})
    assert faster["boards"]["laps"]["improved"] is True
    top = await entries(boards, "laps")
    assert top[0] == {
        "rank": 1,
        "userId": "ann",
        "username": "ann",
        "score": 70_000,
        "metadata": {"car": "green"},
    }


async def test_latest_replaces_the_value_and_can_drop_out_of_the_top(
    start: StartServer, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "latest.toml"
    path.write_text(
        '[boards.level]\ntitle = "Level"\noperator = "latest"\nmin_value = 0\nmax_value = 100\n'
        "top_k = 2\ndefault = true\n"
    )
    server = await start(database_url, catalog_file=path)
    for user, level in (("a", 10), ("b", 20), ("c", 5)):
        await multi(server, user, {"level": level})
    assert [e["userId"] for e in await entries(server, "level")] == ["b", "a"]
    _, body = await multi(server, "b", {"level": 1})
    assert body["boards"]["level"] == {"season": 1, "score": 1, "improved": True, "visibleAt": 4}
    # b fell out of the top 2; c, never seen by the board, comes in.
    assert [(e["userId"], e["score"]) for e in await entries(server, "level")] == [("a", 10), ("c", 5)]
    assert [e["userId"] for e in await server.top()] == ["a", "c"]
    status, b = await server.get("/api/boards/level/users/b")
    assert (status, b["rank"], b["score"]) == (200, 3, 1)


async def test_board_list_and_read_errors(boards: ServerHandle) -> None:
    status, body = await boards.get("/api/boards")
    assert status == 200
    listed = {b["id"]: b for b in body["boards"]}
    assert set(listed) == {"global", "laps", "level", "weekly"}
    assert listed["global"]["default"] is True and listed["global"]["reset"] is None
    assert listed["global"]["season"]["id"] == 1 and listed["global"]["season"]["endsAt"] is None
    assert listed["laps"] | {"season": None} == {
        "id": "laps",
        "title": "Fastest lap",
        "operator": "best",
        "order": "asc",
        "topK": 10,
        "reset": None,
        "default": False,
        "season": None,
    }
    weekly = listed["weekly"]
    assert weekly["reset"] == "weekly" and weekly["season"]["endsAt"] % (7 * 86400) == 4 * 86400  # a Monday
    for path, code in (
        ("/api/boards/nope/scores", "board_not_found"),
        ("/api/boards/nope/users/ann", "board_not_found"),
        ("/api/boards/global/users/nobody", "user_not_found"),
        ("/api/boards/global/scores?season=2", "season_not_found"),
        ("/api/boards/nope/stream", "board_not_found"),
    ):
        status, body = await boards.get(path)
        assert (status, body["error"]["code"]) == (404, code), path
    for bad in ("0", "x", "²", "-1", "99999999999"):
        status, body = await boards.get(f"/api/boards/global/scores?season={bad}")
        assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "season")


async def test_tickets_with_scores_and_multi_board_actions(boards: ServerHandle) -> None:
    tok = token("pia", name="Pia")
    status, started = await boards.post("/api/actions", {"type": "quest_complete"}, tok)
    assert status == 201 and started["reward"] == 50
    status, body = await boards.post(
        "/scores/update", {"actionId": started["actionId"], "ticket": started["ticket"]}, tok
    )
    assert status == 200, body
    assert body["visibleAt"] == 1
    assert body["boards"] == {
        "global": {"season": 1, "score": 50, "improved": True, "visibleAt": 1},
        "weekly": {"season": 1, "score": 50, "improved": True, "visibleAt": 1},
    }
    # A backend mints a lap-time ticket: the player redeems it, never choosing the value.
    lap = ticket("pia", None, scores={"laps": 75_000}, metadata={"car": "red"})
    status, body = await boards.post("/scores/update", lap, tok)
    assert (status, body["boards"]["laps"]["score"]) == (200, 75_000)
    assert (await entries(boards, "laps"))[0]["metadata"] == {"car": "red"}
    out = ticket("pia", None, scores={"laps": 0})
    status, body = await boards.post("/scores/update", out, tok)
    assert (status, body["error"]["code"]) == (422, "out_of_range")
    unknown = ticket("pia", None, scores={"nope": 3})
    status, body = await boards.post("/scores/update", unknown, tok)
    assert (status, body["error"]["code"]) == (422, "unknown_board")
    status, body = await boards.post(
        "/scores/update", {**ticket("pia", None, scores={"global": 3}), "scoreDelta": 3}, tok
    )
    assert (status, body["error"]["code"]) == (422, "delta_mismatch")


async def test_admin_tokens_cannot_credit(boards: ServerHandle) -> None:
    admin = token("root", role=Role.ADMIN)
    status, body = await boards.post(
        "/scores/update", {"userId": "a", "actionId": aid(), "scoreDelta": 1}, admin
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_metadata_is_bounded_and_must_be_an_object(boards: ServerHandle) -> None:
    # 512 bytes of compact UTF-8 JSON: {"k":"..."} is 8 bytes around the string.
    fits = {"k": "é" * 252}  # 2 bytes each: 504 + 8 = 512
    status, body = await multi(boards, "ann", {"laps": 90_000}, metadata=fits)
    assert status == 200, body
    status, body = await multi(boards, "ann", {"laps": 90_000}, metadata={"k": "é" * 252 + "x"})
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "metadata")
    for bad in ([1], "car", 5):
        status, body = await multi(boards, "ann", {"laps": 90_000}, metadata=bad)
        assert (status, body["error"]["field"]) == (422, "metadata")
    status, entry = await boards.get("/api/boards/laps/users/ann")
    assert entry["metadata"] == fits
