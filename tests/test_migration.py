"""Upgrade from the current release: its database is migrated at start with nothing lost.

The release (`tests.release.RELEASE`) runs as a subprocess from its own git
commit and fills a fresh database through its real HTTP API: a few hundred
credits for 50 users with ties (equal scores reached at different times,
one of them across rank 10), display names given, changed and never given,
and one player update with a ticket. Everything it answered is recorded.
Then the working tree's server starts on that database, twice (migrations
are idempotent), and must answer the same board, the same standings, the
original answer to every old action sent again (crediting nothing), 409 to an
old action with another delta or user, and credit new actions on top; the
migrated scores must also be the `global` board, season 1, of the per-board API.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import bearer, ticket, token
from tests.release import extract_release, run_release

pytestmark = pytest.mark.slow

SEED = 20240607
TOP_K = 10
# Final scores, best first: a 3-way and a 2-way tie at the top, a 6-way tie
# over ranks 6-11 (so which tied users make the top 10 is decided by who got
# there first), ties among the rest, and a unique lowest score with a gap
# above it (a later credit to that user moves nobody else).
TOP_TARGETS = [900] * 3 + [750] * 2 + [600] * 6
REST_TARGETS = list(range(100, 500, 50))
LOWEST = 7
USERS = [f"p{i:02d}" for i in range(47)] + ["ünïcødé", "with space", "slash/inside"]
PLAYER = "ünïcødé"  # its last credit is a player update with a ticket
PLAYER_NAME = "Ünï the Player"


@dataclass(frozen=True)
class Update:
    """One update sent to the old release, and its answer."""

    user_id: str
    delta: int
    action_id: str
    username: str | None = None
    by_ticket: bool = False
    new_score: int = 0

    def service_body(self, *, delta: int | None = None, user_id: str | None = None) -> dict[str, Any]:
        """The service update body (optionally with another delta or user)."""
        body: dict[str, Any] = {
            "userId": self.user_id if user_id is None else user_id,
            "scoreDelta": self.delta if delta is None else delta,
            "actionId": self.action_id,
        }
        if self.username is not None:
            body["username"] = self.username
        return body


def _username(user_index: int, part: int, parts: int) -> str | None:
    """Display names given, changed, kept, and never given."""
    match user_index % 5:
        case 0:
            return None  # never named: shown as its id
        case 1:
            return f"Player {user_index:02d}" if part == 0 else None  # named once, kept after
        case 2:
            return f"Always {user_index:02d}"
        case 3:
            if part == 0:
                return f"Old {user_index:02d}"
            return f"New {user_index:02d}" if part == parts // 2 else None  # renamed midway
        case _:
            return f"Zoë {user_index:02d} ✨" if part == 0 else None


def plan_updates(rng: random.Random) -> list[Update]:
    """Every user's final score split into 3-8 credits, sent in rounds in shuffled order."""
    rest = [rng.choice(REST_TARGETS) for _ in range(len(USERS) - len(TOP_TARGETS) - 1)]
    targets = TOP_TARGETS + rest + [LOWEST]
    users = list(USERS)
    rng.shuffle(users)
    parts: dict[str, list[int]] = {}
    for user, target in zip(users, targets, strict=True):
        count = min(rng.randint(3, 8), target)
        cuts = sorted(rng.sample(range(1, target), count - 1))
        parts[user] = [b - a for a, b in pairwise([0, *cuts, target])]
    plan: list[Update] = []
    for round_no in range(max(len(p) for p in parts.values())):
        turn = [u for u in USERS if round_no < len(parts[u])]
        rng.shuffle(turn)
        for user in turn:
            count = len(parts[user])
            plan.append(
                Update(
                    user_id=user,
                    delta=parts[user][round_no],
                    action_id=f"match-{round_no}:{user}",
                    username=_username(USERS.index(user), round_no, count),
                    by_ticket=user == PLAYER and round_no == count - 1,
                )
            )
    return plan


@dataclass
class Recorded:
    """What the old release answered."""

    updates: list[Update]
    ticket_body: dict[str, str]
    top: list[dict[str, Any]]
    users: dict[str, dict[str, Any]]


def user_path(user_id: str, prefix: str = "/api/users/") -> str:
    return prefix + quote(user_id, safe="")


async def get(http: aiohttp.ClientSession, url: str, path: str) -> tuple[int, Any]:
    async with http.get(url + path) as resp:
        return resp.status, await resp.json()


async def post(http: aiohttp.ClientSession, url: str, path: str, body: Any, tok: str) -> tuple[int, Any]:
    async with http.post(url + path, json=body, headers=bearer(tok)) as resp:
        return resp.status, await resp.json()


async def top_users(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    status, body = await get(http, url, "/scores")
    assert status == 200, body
    return list(body["topUsers"])


async def standings(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, Any]]:
    """GET /api/users/{id} of every user."""
    found: dict[str, dict[str, Any]] = {}
    for user in USERS:
        status, body = await get(http, url, user_path(user))
        assert status == 200, (user, body)
        # The release's fields, compared as they were (reads now also carry `version`).
        found[user] = {k: v for k, v in body.items() if k != "version"}
    return found


async def bounded(awaitables: Iterable[Awaitable[None]], limit: int = 16) -> None:
    """Await all, at most `limit` at a time."""
    gate = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[None]) -> None:
        async with gate:
            await aw

    await asyncio.gather(*(one(aw) for aw in awaitables))


async def fill_old_release(http: aiohttp.ClientSession, url: str) -> Recorded:
    """Send the planned updates one by one (so tie order is deterministic); record the answers."""
    service = token("backend", role=Role.SERVICE)
    player = token(PLAYER, name=PLAYER_NAME)
    totals: dict[str, int] = dict.fromkeys(USERS, 0)
    updates: list[Update] = []
    ticket_body: dict[str, str] = {}
    for update in plan_updates(random.Random(SEED)):
        if update.by_ticket:
            ticket_body = ticket(update.user_id, update.delta, action_id=update.action_id)
            status, body = await post(http, url, "/scores/update", ticket_body, player)
        else:
            status, body = await post(http, url, "/scores/update", update.service_body(), service)
        assert status == 200, (update, body)
        totals[update.user_id] += update.delta
        assert (body["userId"], body["newScore"], body["duplicate"]) == (
            update.user_id,
            totals[update.user_id],
            False,
        )
        updates.append(replace(update, new_score=body["newScore"]))
    assert ticket_body, "the plan has no player update"
    return Recorded(updates, ticket_body, await top_users(http, url), await standings(http, url))


def check_the_data_has_what_a_migration_can_lose(recorded: Recorded) -> None:
    """The recorded board has ties in non-id order, a tie across rank 10, names of every kind."""
    top = recorded.top
    assert [row["rank"] for row in top] == list(range(1, TOP_K + 1))
    tied = [(a, b) for a, b in pairwise(top) if a["score"] == b["score"]]
    assert tied, top
    assert any(a["userId"] > b["userId"] for a, b in tied), "every tie is in id order: tie order untested"
    outside = [s for s in recorded.users.values() if s["rank"] > TOP_K]
    assert any(s["score"] == top[-1]["score"] for s in outside), "no tie across rank 10"
    names = {s["username"] for s in recorded.users.values()}
    assert PLAYER_NAME in names
    assert any(s["username"] == s["userId"] for s in recorded.users.values())  # never named
    assert any(name.startswith("New ") for name in names)
    assert not any(name.startswith("Old ") for name in names)
    assert len(recorded.updates) >= 250


async def check_old_actions_are_duplicates(http: aiohttp.ClientSession, url: str, recorded: Recorded) -> None:
    """Every old action sent again gets its original answer as a duplicate."""
    service = token("backend", role=Role.SERVICE)
    player = token(PLAYER, name=PLAYER_NAME)

    async def resend(update: Update) -> None:
        if update.by_ticket:
            status, body = await post(http, url, "/scores/update", recorded.ticket_body, player)
        else:
            status, body = await post(http, url, "/scores/update", update.service_body(), service)
        assert status == 200, (update, body)
        assert (body["userId"], body["newScore"], body["duplicate"]) == (
            update.user_id,
            update.new_score,
            True,
        ), update

    await bounded(resend(u) for u in recorded.updates)


async def check_old_actions_conflict(http: aiohttp.ClientSession, url: str, recorded: Recorded) -> None:
    """An old actionId with another delta, or for another user, is 409 action_conflict."""
    service = token("backend", role=Role.SERVICE)

    async def conflict(update: Update, body: dict[str, Any]) -> None:
        status, answer = await post(http, url, "/scores/update", body, service)
        assert (status, answer["error"]["code"]) == (409, "action_conflict"), (update, body, answer)

    other_user = {u: USERS[(USERS.index(u) + 1) % len(USERS)] for u in USERS}
    await bounded(
        [conflict(u, u.service_body(delta=u.delta + 1)) for u in recorded.updates]
        + [conflict(u, u.service_body(user_id=other_user[u.user_id])) for u in recorded.updates[::10]]
    )


async def test_a_release_database_is_migrated_with_nothing_lost(
    database_url: str, start: StartServer, tmp_path: Path
) -> None:
    # database_url first: its PostgreSQL database is dropped after `start` stops the servers.
    release_root = extract_release(tmp_path / "release")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # 1-2. The release fills the database and records its answers; SIGTERM at the end.
        async with run_release(release_root, database_url, tmp_path / "release-data") as old:
            recorded = await fill_old_release(http, old.url)
        check_the_data_has_what_a_migration_can_lose(recorded)

        # 3. The new server migrates it at start.
        new = await start(database_url)
        assert await top_users(http, new.url) == recorded.top
        assert await standings(http, new.url) == recorded.users
        await check_old_actions_are_duplicates(http, new.url, recorded)
        await check_old_actions_conflict(http, new.url, recorded)
        assert await top_users(http, new.url) == recorded.top, "a retried old action credited"
        assert await standings(http, new.url) == recorded.users, "a retried old action credited"

        # A new credit lands on the migrated score (the lowest user: nobody else moves).
        last = max(recorded.users.values(), key=lambda s: s["rank"])
        assert last["score"] == LOWEST
        fresh = {"userId": last["userId"], "scoreDelta": 3, "actionId": f"after-upgrade-{uuid.uuid4().hex}"}
        status, body = await post(http, new.url, "/scores/update", fresh, new.service_token)
        assert (status, body["newScore"], body["duplicate"]) == (200, LOWEST + 3, False), body
        expected_users = {**recorded.users, last["userId"]: {**last, "score": LOWEST + 3}}
        assert await standings(http, new.url) == expected_users
        assert await top_users(http, new.url) == recorded.top
        await new.stop()

        # 4. Started again on the migrated database: migrating twice changes nothing.
        again = await start(database_url)
        assert await top_users(http, again.url) == recorded.top
        assert await standings(http, again.url) == expected_users
        status, body = await post(http, again.url, "/scores/update", fresh, again.service_token)
        assert (status, body["newScore"], body["duplicate"]) == (200, LOWEST + 3, True), body
        await check_old_actions_are_duplicates(
            http, again.url, replace(recorded, updates=recorded.updates[::7])
        )

        # The migrated scores are the `global` board, season 1, of the per-board API.
        status, board = await get(http, again.url, "/api/boards/global/scores")
        assert status == 200, board
        assert (board["board"], board["season"]) == ("global", 1), board
        assert [
            {"rank": e["rank"], "userId": e["userId"], "username": e["username"], "score": e["score"]}
            for e in board["entries"]
        ] == recorded.top
        for user, standing in expected_users.items():
            status, body = await get(http, again.url, user_path(user, "/api/boards/global/users/"))
            assert status == 200, (user, body)
            assert body.pop("version") >= 1, user  # the board's version, counted since the migration
            assert body == {"board": "global", "season": 1, "total": len(expected_users), **standing}, user
