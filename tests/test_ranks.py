"""Ranks, windows around a player, pages and friends lists, over real servers on both stores.

Each test drives a real server over HTTP and checks the reads both against
literal values and against the brute-force model of `test_rank_properties`.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from scoreboard.config import ConfigError, Settings
from tests.conftest import StartServer
from tests.helpers import ServerHandle, bearer
from tests.test_rank_properties import (
    Driver,
    Model,
    Spec,
    catalog,
    check_reads,
    eventually_ready,
    ids_query,
    ok,
    q,
    read,
)

SPECS = (
    Spec("global", "incr", True, top_k=5, min_value=1, max_value=1000, archive=2, default=True),
    Spec("lap", "best", False, top_k=5, min_value=1, max_value=600_000, archive=1),
    Spec("level", "latest", True, top_k=5, min_value=0, max_value=100),
    Spec("big", "incr", True, top_k=150, min_value=1, max_value=1000),
)


@pytest.fixture
async def driver(database_url: str, start: StartServer, tmp_path: Path) -> Driver:
    server = await start(database_url, catalog_file=catalog(tmp_path, SPECS))
    return Driver(server, Model.of(SPECS))


def ranks(body: dict[str, Any]) -> list[int]:
    return [e["rank"] for e in body["entries"]]


def users(body: dict[str, Any]) -> list[str]:
    return [e["userId"] for e in body["entries"]]


async def twelve(driver: Driver, board: str = "global") -> list[str]:
    """p00..p11 with scores 12..1: p00 is first, p11 last."""
    names = [f"p{i:02}" for i in range(12)]
    for i, name in enumerate(names):
        await driver.credit(name, {board: 12 - i})
    return names


async def test_a_players_rank_and_the_total(driver: Driver) -> None:
    server = driver.server
    await driver.credit("ann", {"global": 10})
    await driver.credit("bob", {"global": 30}, username="Bob")
    await driver.credit("cat", {"global": 20}, metadata={"hat": "red"})
    status, bob = await server.get("/api/boards/global/users/bob")
    assert (status, bob) == (
        200,
        {
            "board": "global",
            "season": 1,
            "userId": "bob",
            "username": "Bob",
            "score": 30,
            "rank": 1,
            "total": 3,
            "version": 3,  # three credits on global, one commit each
        },
    )
    status, cat = await server.get("/api/boards/global/users/cat")
    assert (status, cat["rank"], cat["total"], cat["metadata"]) == (200, 2, 3, {"hat": "red"})
    status, ann = await server.get("/api/boards/global/users/ann")
    assert (status, ann["rank"], ann["username"], "metadata" in ann) == (200, 3, "ann", False)
    for path in ("/api/boards/global/users/nobody", "/api/boards/global/users/nobody/around"):
        status, body = await server.get(path)
        assert (status, body["error"]["code"]) == (404, "user_not_found"), path
    # On another board the same player has no entry.
    assert await read(server, "/api/boards/level/users/bob") == (404, "user_not_found")
    await check_reads(server, driver.model, ["ann", "bob", "cat", "nobody"])


async def test_around_a_player_in_the_middle_and_at_both_edges(driver: Driver) -> None:
    server = driver.server
    await twelve(driver)
    cases = [
        ("p05", 2, [4, 5, 6, 7, 8]),
        ("p00", 2, [1, 2, 3, 4, 5]),  # at the top: filled from below
        ("p01", 2, [1, 2, 3, 4, 5]),
        ("p11", 2, [8, 9, 10, 11, 12]),  # at the bottom: filled from above
        ("p10", 3, [6, 7, 8, 9, 10, 11, 12]),
        ("p05", 0, [6]),
        ("p05", 50, list(range(1, 13))),  # more than the board holds
        ("p05", 6, list(range(1, 13))),
        ("p05", None, list(range(1, 12))),  # the default count is 5
        ("p11", None, list(range(2, 13))),
    ]
    for user, count, expected in cases:
        query = "" if count is None else f"?count={count}"
        status, body = await server.get(f"/api/boards/global/users/{user}/around{query}")
        assert status == 200, body
        assert (body["board"], body["season"], body["total"]) == ("global", 1, 12)
        assert ranks(body) == expected, (user, count)
        assert users(body) == [f"p{r - 1:02}" for r in expected]
        assert [e["score"] for e in body["entries"]] == [13 - r for r in expected]
    # A board of one player.
    await driver.credit("solo", {"level": 3})
    status, body = await server.get("/api/boards/level/users/solo/around?count=5")
    assert (status, body["total"], users(body)) == (200, 1, ["solo"])
    await check_reads(server, driver.model, ["p00", "p05", "p11", "solo"], counts=(0, 1, 2, 5, 11, 12, 50))


async def test_pages_start_with_the_top_k_and_end_empty(driver: Driver) -> None:
    server = driver.server
    names = await twelve(driver)
    status, top = await server.get("/api/boards/global/scores")
    assert status == 200
    assert (top["total"], users(top)) == (12, names[:5])  # topK 5
    assert top["entries"] == (await server.get("/scores"))[1]["topUsers"]
    status, first = await server.get("/api/boards/global/scores?offset=0&limit=5")
    assert (status, first) == (200, top)
    for offset, limit, expected in (
        (5, 5, [6, 7, 8, 9, 10]),
        (10, 5, [11, 12]),
        (11, 1, [12]),
        (12, 5, []),
        (1_000_000_000, 100, []),
        (0, 100, list(range(1, 13))),
        (3, 1, [4]),
    ):
        status, body = await server.get(f"/api/boards/global/scores?offset={offset}&limit={limit}")
        assert status == 200, body
        assert (body["board"], body["season"], body["total"], ranks(body)) == ("global", 1, 12, expected)
    # Pages of 5 cover the board exactly once, in order, and agree with every rank read.
    paged: list[dict[str, Any]] = []
    for offset in range(0, 15, 5):
        paged += (await server.get(f"/api/boards/global/scores?offset={offset}&limit=5"))[1]["entries"]
    assert [e["rank"] for e in paged] == list(range(1, 13))
    for entry in paged:
        mine = await ok(server, f"/api/boards/global/users/{entry['userId']}")
        assert (mine["rank"], mine["score"]) == (entry["rank"], entry["score"])
    # Only the offset: limit is the board's topK.
    body = await ok(server, "/api/boards/global/scores?offset=4")
    assert ranks(body) == [5, 6, 7, 8, 9]
    for bad in ("0", "101", "-1", "x", ""):
        status, body = await server.get(f"/api/boards/global/scores?limit={bad}")
        assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "limit")
    for bad in ("-1", "1000000001", "1e3", " 1", "0x10", ""):
        status, body = await server.get(f"/api/boards/global/scores?offset={bad}")
        assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "offset")
    await check_reads(server, driver.model, names[:3])


async def test_the_page_limit_grows_with_a_big_top_k(driver: Driver) -> None:
    server = driver.server
    # 155 players, concurrently (distinct scores: the order does not depend on timing).
    answers = await asyncio.gather(
        *(
            server.post(
                "/scores/update",
                {"userId": f"u{i:03}", "actionId": f"big-{i}", "scores": {"big": i + 1}},
                server.service_token,
            )
            for i in range(155)
        )
    )
    assert {status for status, _ in answers} == {200}
    status, top = await server.get("/api/boards/big/scores")
    assert (status, top["total"], len(top["entries"])) == (200, 155, 150)
    assert users(top)[:2] == ["u154", "u153"]
    status, body = await server.get("/api/boards/big/scores?limit=150&offset=150")
    assert (status, ranks(body), users(body)) == (
        200,
        [151, 152, 153, 154, 155],
        [f"u{i:03}" for i in range(4, -1, -1)],
    )
    status, body = await server.get("/api/boards/big/scores?limit=151")
    assert (status, body["error"]["field"]) == (422, "limit")
    # Around and friends on a big board.
    status, body = await server.get("/api/boards/big/users/u000/around?count=50")
    assert (status, ranks(body)) == (200, list(range(55, 156)))
    status, body = await server.get("/api/boards/big/users?ids=u000,u100,u154")
    assert (status, ranks(body), body["total"]) == (200, [1, 55, 155], 155)


async def test_friends_lists(driver: Driver) -> None:
    server = driver.server
    friends = {"ann": 5, "bob": 9, "zoë": 7, "d d": 1, "eve": 3, "ümit": 8}
    for user, score in friends.items():
        await driver.credit(user, {"global": score})
    status, body = await server.get(
        "/api/boards/global/users?" + ids_query(["eve", "ann", "nobody", "zoë", "ann"])
    )
    assert status == 200, body
    assert (body["board"], body["season"], body["total"]) == ("global", 1, 6)
    # Best first, with their places on the whole board; duplicates once; unknown ids left out.
    assert [(e["userId"], e["rank"], e["score"]) for e in body["entries"]] == [
        ("zoë", 3, 7),
        ("ann", 4, 5),
        ("eve", 5, 3),
    ]
    status, body = await server.get("/api/boards/global/users?" + ids_query(["d d", "ümit"]))
    assert [(e["userId"], e["rank"]) for e in body["entries"]] == [("ümit", 2), ("d d", 6)]
    status, body = await server.get("/api/boards/global/users?ids=nobody,ghost")
    assert (status, body["entries"], body["total"]) == (200, [], 6)
    # 1 to 100 distinct ids; duplicates count once.
    hundred = ["bob", *(f"x{i}" for i in range(99))]
    status, body = await server.get("/api/boards/global/users?" + ids_query(hundred))
    assert (status, users(body)) == (200, ["bob"])
    status, body = await server.get("/api/boards/global/users?" + ids_query([*hundred, "bob", "x5"]))
    assert (status, users(body)) == (200, ["bob"])
    for bad in (
        ids_query([*hundred, "x99"]),  # 101 distinct
        "ids=",
        "ids=ann,,bob",
        ids_query(["a" * 129]),
        "ids=ann%01",
        "ids=bad%00id",
        "",
    ):
        status, body = await server.get("/api/boards/global/users?" + bad)
        assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "ids"), (
            bad
        )
    status, body = await server.get("/api/boards/global/users?" + ids_query(["a" * 128, "ann"]))
    assert (status, users(body)) == (200, ["ann"])
    await check_reads(server, driver.model, list(friends), counts=(1,))


async def test_ascending_best_and_latest_boards(driver: Driver) -> None:
    server = driver.server
    await driver.credit("ann", {"lap": 80_000, "level": 10}, metadata={"car": "red"})
    await driver.credit("bob", {"lap": 79_000, "level": 20})
    await driver.credit("cat", {"lap": 80_000, "level": 5})  # ties with ann on lap, reached later
    await driver.credit("ann", {"lap": 85_000}, metadata={"car": "blue"})  # slower: changes nothing
    await driver.credit("dan", {"lap": 90_000, "level": 20})  # ties with bob on level, later
    await driver.credit("bob", {"level": 1})  # latest: bob falls to the bottom
    body = await ok(server, "/api/boards/lap/scores?offset=0&limit=10")
    assert [(e["userId"], e["score"]) for e in body["entries"]] == [
        ("bob", 79_000),
        ("ann", 80_000),
        ("cat", 80_000),
        ("dan", 90_000),
    ]
    ann = await ok(server, "/api/boards/lap/users/ann")
    assert (ann["rank"], ann["metadata"], ann["total"]) == (2, {"car": "red"}, 4)
    body = await ok(server, "/api/boards/level/users/bob/around?count=1")
    # bob is last: the window of 3 is filled from above.
    assert [(e["userId"], e["rank"], e["score"]) for e in body["entries"]] == [
        ("ann", 2, 10),
        ("cat", 3, 5),
        ("bob", 4, 1),
    ]
    body = await ok(server, "/api/boards/level/users?ids=bob,dan,ann")
    assert [(e["userId"], e["rank"]) for e in body["entries"]] == [("dan", 1), ("ann", 2), ("bob", 4)]
    await driver.credit("cat", {"lap": 70_000})
    await check_reads(server, driver.model, ["ann", "bob", "cat", "dan"])


async def test_equal_scores_rank_by_who_reached_them_first(driver: Driver) -> None:
    server = driver.server
    await driver.credit("zed", {"global": 5})
    await driver.credit("amy", {"global": 5})
    await driver.credit("bob", {"global": 2})
    await driver.credit("bob", {"global": 3})  # bob reaches 5 last
    await driver.credit("cal", {"global": 9})
    await driver.credit("cal", {"global": 1})  # cal 10, still first
    expected = ["cal", "zed", "amy", "bob"]
    body = await ok(server, "/api/boards/global/scores")
    assert users(body) == expected
    body = await ok(server, "/api/boards/global/users/amy/around?count=1")
    assert users(body) == ["zed", "amy", "bob"]
    body = await ok(server, "/api/boards/global/users?ids=bob,amy,zed")
    assert users(body) == ["zed", "amy", "bob"]
    for rank, user in enumerate(expected, 1):
        assert (await server.get(f"/api/boards/global/users/{user}"))[1]["rank"] == rank
    await check_reads(server, driver.model, expected)


async def test_archived_seasons(driver: Driver) -> None:
    server = driver.server
    for user, score in (("ann", 5), ("bob", 9), ("cat", 7)):
        await driver.credit(user, {"global": score, "level": score, "lap": score * 100})
    for board in ("global", "level", "lap"):
        await driver.end_season(board)
    await driver.credit("dan", {"global": 1, "level": 1, "lap": 1})
    await driver.credit("ann", {"global": 2})
    status, body = await server.get("/api/boards/global/users/cat?season=1")
    assert (status, body["season"], body["rank"], body["total"], body["score"]) == (200, 1, 2, 3, 7)
    status, body = await server.get("/api/boards/global/users/ann")
    assert (status, body["season"], body["rank"], body["total"], body["score"]) == (200, 2, 1, 2, 2)
    status, body = await server.get("/api/boards/global/users/ann/around?count=1&season=1")
    assert (status, body["season"], users(body)) == (200, 1, ["bob", "cat", "ann"])
    status, body = await server.get("/api/boards/global/scores?season=1&offset=1&limit=1")
    assert (status, body["season"], body["total"], users(body)) == (200, 1, 3, ["cat"])
    status, body = await server.get("/api/boards/global/users?ids=ann,dan,bob&season=1")
    assert (status, body["season"], users(body)) == (200, 1, ["bob", "ann"])
    assert await read(server, "/api/boards/global/users/dan?season=1") == (404, "user_not_found")
    assert await read(server, "/api/boards/global/users/dan/around?season=1") == (404, "user_not_found")
    # level keeps no archive; no board has a season 3 yet.
    for board, season in (("level", 1), ("global", 3), ("lap", 3)):
        for path in (
            f"/api/boards/{board}/users/ann?season={season}",
            f"/api/boards/{board}/users/ann/around?season={season}",
            f"/api/boards/{board}/scores?season={season}&offset=0&limit=5",
            f"/api/boards/{board}/users?ids=ann&season={season}",
        ):
            assert await read(server, path) == (404, "season_not_found"), path
    await check_reads(server, driver.model, ["ann", "bob", "cat", "dan"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        *(
            (f"/around?count={v}", "count")
            for v in ("-1", "51", "x", "1.5", "", "+1", "%201", "²", "99999999999999999999")
        ),
        *((f"/around?count=2&season={v}", "season") for v in ("0", "x", "-1")),
    ],
)
async def test_bad_around_parameters(server: ServerHandle, query: str, field: str) -> None:
    await server.credit("ann", 5)
    status, body = await server.get(f"/api/boards/global/users/ann{query}")
    assert (status, body["error"]["code"], body["error"].get("field")) == (422, "validation_failed", field)


async def test_not_found_on_every_read(server: ServerHandle) -> None:
    await server.credit("ann", 5)
    for path, code in (
        ("/api/boards/nope/users/ann", "board_not_found"),
        ("/api/boards/nope/users/ann/around", "board_not_found"),
        ("/api/boards/nope/scores?offset=0&limit=10", "board_not_found"),
        ("/api/boards/nope/users?ids=ann", "board_not_found"),
        ("/api/boards/global/users/bob", "user_not_found"),
        ("/api/boards/global/users/bob/around?count=1", "user_not_found"),
        ("/api/boards/global/users/ann?season=2", "season_not_found"),
        ("/api/boards/global/users/ann/around?season=2", "season_not_found"),
        ("/api/boards/global/scores?season=2&offset=1", "season_not_found"),
        ("/api/boards/global/users?ids=ann&season=2", "season_not_found"),
    ):
        assert await read(server, path) == (404, code), path
    status, body = await server.get("/api/boards/global/users/ann/around")
    assert (status, users(body), body["total"]) == (200, ["ann"], 1)
    # A user id that breaks the id rule is refused like on the other reads.
    status, body = await server.get(f"/api/boards/global/users/{q('a' * 129)}/around")
    assert (status, body["error"]["code"]) == (422, "validation_failed")


@pytest.mark.parametrize("mode", ["memory", "store"])
async def test_reads_agree_with_the_top_k_and_survive_a_restart(
    database_url: str, start: StartServer, tmp_path: Path, mode: str
) -> None:
    path = catalog(tmp_path, SPECS)
    server = await start(database_url, catalog_file=path, ranks=mode)
    await eventually_ready(server, mode)
    driver = Driver(server, Model.of(SPECS))
    rng = random.Random(11)
    players = [f"pl{i}" for i in range(18)]
    for i in range(70):
        user = rng.choice(players)
        scores = {"global": rng.randint(1, 6), "lap": rng.randint(1, 8) * 1000, "level": rng.randint(0, 4)}
        chosen = dict(rng.sample(sorted(scores.items()), rng.randint(1, 3)))
        await driver.credit(user, chosen, username=rng.choice([None, user.upper()]), metadata={"i": i})
    # Every page, window and rank is consistent with the top K.
    for board in ("global", "lap", "level"):
        top = await ok(server, f"/api/boards/{board}/scores")
        everyone = await ok(server, f"/api/boards/{board}/scores?limit=100")
        assert everyone["entries"][:5] == top["entries"] and everyone["total"] == top["total"]
        for entry in everyone["entries"]:
            mine = await ok(server, f"/api/boards/{board}/users/{entry['userId']}/around?count=2")
            assert entry in mine["entries"]
    await check_reads(server, driver.model, [*players[:10], "nobody"])
    await server.stop()
    server = await start(database_url, catalog_file=path, ranks=mode)
    await check_reads(server, driver.model, [*players[:10], "nobody"])
    await eventually_ready(server, mode)
    await check_reads(server, driver.model, players, counts=(2,))


def test_the_ranks_setting() -> None:
    assert Settings.from_env({}).ranks == "memory"
    assert Settings.from_env({"SCOREBOARD_RANKS": "store"}).ranks == "store"
    with pytest.raises(ConfigError, match="SCOREBOARD_RANKS"):
        Settings.from_env({"SCOREBOARD_RANKS": "disk"})


async def test_reads_and_changes_while_the_ranks_load(
    database_url: str, start: StartServer, tmp_path: Path
) -> None:
    specs = (
        Spec("global", "incr", True, top_k=5, min_value=1, max_value=10_000, default=True),
        Spec("lvl", "latest", True, top_k=5, min_value=0, max_value=10_000, archive=1),
    )
    path = catalog(tmp_path, specs)
    server = await start(database_url, catalog_file=path)
    model = Model.of(specs)
    driver = Driver(server, model)
    players = [f"p{i:04}" for i in range(4000)]
    # Even scores, all distinct, pipelined on one socket (the order of equal scores never matters).
    ws = await server.session.ws_connect(server.ws_url, headers=bearer(server.service_token))
    for i, player in enumerate(players):
        body = {
            "userId": player,
            "actionId": f"init-{player}",
            "scores": {"global": 2 * i + 2, "lvl": 2 * i + 2},
        }
        await ws.send_json({"type": "score.update", "id": i, **body})
        driver.bodies[body["actionId"]] = body
        model.credit(body["actionId"], player, body["scores"])
    acks = [await ws.receive_json(timeout=10) for _ in players]
    assert all(a["type"] == "ack" and a["duplicate"] is False for a in acks)
    await ws.close()
    # Pipelined updates share batches, so how many versions they took depends on timing;
    # but they were written in order, every batch wrote both boards, the first was each
    # board's version 1 and the last ack holds the version of the last commit.
    seen = [a["visibleAt"] for a in acks]
    assert seen[0] == 1 and seen == sorted(seen) and seen[-1] <= len(players)
    assert all(
        a["boards"]["global"]["visibleAt"] == a["boards"]["lvl"]["visibleAt"] == a["visibleAt"] for a in acks
    )
    model.settle({"global": seen[-1], "lvl": seen[-1]})
    # One row at a time: the load takes a while, and everything below may happen during it.
    for _ in range(3):
        await server.stop()
        server = await start(database_url, catalog_file=path, rank_load_chunk=1)
        states = {(await ok(server, "/readyz"))["ranks"]}
        page = "/api/boards/global/scores?offset=2000&limit=30"
        assert await read(server, page) == model.page_read("global", 1, 2000, 30)
        if states == {"loading"}:
            break  # else this machine was too slow to see the load: start again
    driver.server = server
    rng = random.Random(5)
    touched = rng.sample(players, 60)
    # Moderation and a season end first, while the ranks are most likely still loading.
    await driver.remove("global", touched[0])
    await driver.block(touched[1])
    await driver.revert(f"init-{touched[2]}")
    await driver.credit(touched[3], {"global": 1, "lvl": 1})
    await driver.end_season("lvl")
    states.add((await ok(server, "/readyz"))["ranks"])
    for player in touched:
        # Odd scores: still all distinct; on lvl some players fall, some rise.
        await driver.credit(player, {"global": 1, "lvl": 2 * rng.randrange(500) + 1})
        mine = model.user_read("global", player, model.season["global"])
        assert await read(server, f"/api/boards/global/users/{player}") == mine
        assert await read(server, f"/api/boards/global/users/{player}/around?count=2") == model.around_read(
            "global", player, 1, 2
        )
        assert await read(server, "/api/boards/global/scores?offset=100&limit=7") == model.page_read(
            "global", 1, 100, 7
        )
        states.add((await ok(server, "/readyz"))["ranks"])
    assert "loading" in states, "the ranks were loaded before anything happened: nothing was tested"
    await eventually_ready(server, "memory")
    sample = [*touched[:12], *rng.sample(players, 12)]
    await check_reads(server, model, sample, counts=(0, 3), pages=((0, 100), (50, 100), (3990, 20)))


async def test_stopping_while_the_ranks_load_closes_cleanly(database_url: str, start: StartServer) -> None:
    server = await start(database_url)
    ws = await server.session.ws_connect(server.ws_url, headers=bearer(server.service_token))
    players = 1500
    for i in range(players):
        body = {"userId": f"s{i:04}", "actionId": f"stop-{i}", "scoreDelta": 1 + i % 900}
        await ws.send_json({"type": "score.update", "id": i, **body})
    acks = [await ws.receive_json(timeout=10) for _ in range(players)]
    assert all(a["type"] == "ack" for a in acks)
    await ws.close()
    await server.stop()
    for _ in range(3):  # until a stop lands during the load (a fast machine may finish first)
        # One row at a time: the load is still running when the server stops.
        server = await start(database_url, rank_load_chunk=1)
        loading = (await ok(server, "/readyz"))["ranks"] == "loading"
        await server.stop()  # cancels the load mid-read: must neither raise nor hang
        if loading:
            break
    server = await start(database_url)
    assert await eventually_ranks_in_memory(server)
    assert (await ok(server, "/api/boards/global/users/s0000"))["total"] == players


async def eventually_ranks_in_memory(server: ServerHandle) -> bool:
    for _ in range(200):
        if (await ok(server, "/readyz"))["ranks"] == "memory":
            return True
        await asyncio.sleep(0.05)
    return False
