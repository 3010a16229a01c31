"""Every rank, window, page and friends list equals a brute-force ranking of a model ledger.

The model keeps every credit in commit order (board, season, user, value)
and whether it is still live: not reverted, and not removed by a DELETE or a
block after it. A record is the fold of its live credits (incr adds, best
keeps the strictly better value, latest takes the value; a changed record
takes the credit's time, metadata and, if given, name), a board is the sort
of its records by the ranking rule. Requests are sent one at a time, so
commit order is request order and `reached_at` follows it, and every board's
version (+1 per commit that touched it: a credit, a removal or block of an
entry, a revert that changed a record, a season end) is known exactly: each
update's `visibleAt` and each read's `version` are checked against it.

A seeded random sequence of credits, retries, removals, blocks, unblocks,
reverts (double ones, of duplicates, of unknown and refused actions) and
one season end of every board runs over HTTP against a real server on each
store; every answer is checked on the way, and at the end every read (and a
WebSocket watcher, and the audit log) equals the model's, again after a
restart on the same database, and again with `SCOREBOARD_RANKS=store`.

`Spec`, `Model`, `Driver`, `Watcher` and `check_reads` are shared with
`test_ranks.py` and `test_moderation.py`.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import ServerHandle, send, token
from tests.streams import sse_events

ADMIN = token("root", role=Role.ADMIN)


# -- the model ---------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A board as the catalog declares it."""

    id: str
    operator: str = "incr"  # incr | best | latest
    desc: bool = True
    top_k: int = 10
    min_value: int = 1
    max_value: int = 1000
    archive: int = 0
    default: bool = False

    def toml(self) -> str:
        """The board's catalog table."""
        return "\n".join(
            [
                f"[boards.{self.id}]",
                f'operator = "{self.operator}"',
                f'order = "{"desc" if self.desc else "asc"}"',
                f"top_k = {self.top_k}",
                f"min_value = {self.min_value}",
                f"max_value = {self.max_value}",
                f"archive = {self.archive}",
                f"default = {'true' if self.default else 'false'}",
                "",
            ]
        )


def catalog(tmp_path: Path, specs: Iterable[Spec], name: str = "catalog.toml") -> Path:
    """A catalog file with these boards."""
    path = tmp_path / name
    path.write_text("\n".join(spec.toml() for spec in specs))
    return path


@dataclass
class Row:
    """One credit of one action on one board, in commit order (`seq`)."""

    seq: int
    action: str
    user: str
    board: str
    season: int
    value: int
    username: str | None
    metadata: dict[str, Any] | None
    reverted: bool = False
    removed: bool = False

    @property
    def live(self) -> bool:
        return not self.reverted and not self.removed


@dataclass(frozen=True)
class Rec:
    """A record folded from live credits."""

    user: str
    score: int
    reached: int
    username: str | None
    metadata: dict[str, Any] | None

    def entry(self, rank: int) -> dict[str, Any]:
        """The entry as every read shows it."""
        row: dict[str, Any] = {
            "rank": rank,
            "userId": self.user,
            "username": self.username or self.user,
            "score": self.score,
        }
        if self.metadata is not None:
            row["metadata"] = self.metadata
        return row


def step(spec: Spec, old: Rec | None, row: Row) -> Rec | None:
    """The record after one credit, or None when the credit does not change it."""
    if spec.operator == "incr":
        score = (old.score if old else 0) + row.value
    elif (
        spec.operator == "latest"
        or old is None
        or (row.value > old.score if spec.desc else row.value < old.score)
    ):
        score = row.value
    else:
        return None
    username = row.username if row.username is not None else (old.username if old else None)
    return Rec(row.user, score, row.seq, username, row.metadata)


Expected = tuple[int, Any]  # (200, body) or (status, error code)


@dataclass
class Model:
    """The brute force: a ledger of credits, the moderation on it, and a sort."""

    specs: dict[str, Spec]
    season: dict[str, int] = field(default_factory=dict)
    ended: dict[str, list[int]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    reverted: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    audit: list[tuple[str, str, str | None]] = field(default_factory=list)
    seq: int = 0
    # Every board's version: the number of commits that touched it.
    versions: dict[str, int] = field(default_factory=dict)
    # Rows by (board, season, user), and rankings computed since the last change.
    by_key: dict[tuple[str, int, str], list[Row]] = field(default_factory=dict)
    cache: dict[tuple[str, int], list[Rec]] = field(default_factory=dict)

    @classmethod
    def of(cls, specs: Iterable[Spec]) -> Model:
        by_id = {s.id: s for s in specs}
        return cls(by_id, dict.fromkeys(by_id, 1), {b: [] for b in by_id}, versions=dict.fromkeys(by_id, 0))

    def settle(self, versions: dict[str, int]) -> None:
        """Take the board versions a server reached through concurrent changes.

        How many commits concurrent updates take depends on batching, so a test that
        replays them in the model checks the server's versions for what it can
        promise (bounds, order), then hands them over here: later changes count on.
        (The answers the model keeps for replayed credits number them one by one:
        `Driver.retry` is for credits the driver sent one at a time.)
        """
        self.versions.update(versions)

    @property
    def default(self) -> str:
        return next(s.id for s in self.specs.values() if s.default)

    def seasons(self, board: str) -> list[int]:
        """The current season and the archived seasons still kept, newest first."""
        archive = self.specs[board].archive
        kept = self.ended[board][-archive:] if archive else []
        return [self.season[board], *reversed(kept)]

    # -- records and rankings

    def record(self, board: str, season: int, user: str) -> Rec | None:
        rec: Rec | None = None
        spec = self.specs[board]
        for row in self.by_key.get((board, season, user), ()):
            if row.live:
                rec = step(spec, rec, row) or rec
        return rec

    def ranked(self, board: str, season: int | None = None) -> list[Rec]:
        season = self.season[board] if season is None else season
        cached = self.cache.get((board, season))
        if cached is not None:
            return cached
        spec = self.specs[board]
        users = [u for b, s, u in self.by_key if (b, s) == (board, season)]
        records = [rec for u in users if (rec := self.record(board, season, u)) is not None]
        ranked = sorted(records, key=lambda r: (-r.score if spec.desc else r.score, r.reached, r.user))
        self.cache[(board, season)] = ranked
        return ranked

    def _rows_of(self, board: str, season: int, user: str) -> list[Row]:
        """The rows of one entry; the caller is about to change them."""
        self.cache.clear()
        return self.by_key.get((board, season, user), [])

    def top(self, board: str) -> list[dict[str, Any]]:
        """The current season's top K entries."""
        return [rec.entry(i) for i, rec in enumerate(self.ranked(board)[: self.specs[board].top_k], 1)]

    # -- changes

    def credit(
        self,
        action: str,
        user: str,
        scores: dict[str, int],
        username: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Credit a fresh action; its expected answer (`boards`, `newScore`, `visibleAt`), None if
        refused. The action is one commit: every board it writes takes its next version."""
        if user in self.blocked:
            return None
        self.seq += 1
        boards: dict[str, Any] = {}
        for board, value in scores.items():
            season = self.season[board]
            self.versions[board] += 1
            before = self.record(board, season, user)
            row = Row(self.seq, action, user, board, season, value, username, metadata)
            self.rows.append(row)
            self.by_key.setdefault((board, season, user), []).append(row)
            self.cache.clear()
            after = self.record(board, season, user)
            assert after is not None
            boards[board] = {
                "season": season,
                "score": after.score,
                "improved": after != before,
                "visibleAt": self.versions[board],
            }
        answer: dict[str, Any] = {"boards": boards}
        if self.default in scores:
            answer["newScore"] = boards[self.default]["score"]
            answer["visibleAt"] = boards[self.default]["visibleAt"]
        self.answers[action] = answer
        return answer

    def entry_of(self, board: str, user: str, season: int | None = None) -> dict[str, Any] | None:
        for rank, rec in enumerate(self.ranked(board, season), 1):
            if rec.user == user:
                return rec.entry(rank)
        return None

    def remove(self, board: str, user: str, reason: str) -> Expected:
        season = self.season[board]
        entry = self.entry_of(board, user)
        if entry is None:
            return 404, "user_not_found"
        for row in self._rows_of(board, season, user):
            row.removed = True
        self.versions[board] += 1
        self.audit.append(("remove_entry", f"boards/{board}/users/{user}", reason))
        return 200, {"board": board, "season": season, "userId": user, "removed": entry}

    def block(self, user: str, reason: str) -> Expected:
        removed = []
        for board in sorted(self.specs):
            entry = self.entry_of(board, user)
            if entry is not None:
                removed.append(
                    {
                        "board": board,
                        "season": self.season[board],
                        "rank": entry["rank"],
                        "score": entry["score"],
                    }
                )
                self.versions[board] += 1  # the entry's removal is a commit on that board
            for row in self._rows_of(board, self.season[board], user):
                row.removed = True
        changed = user not in self.blocked
        self.blocked.add(user)
        if changed:
            self.audit.append(("block", f"users/{user}", reason))
        return 200, {"userId": user, "blocked": True, "changed": changed, "removed": removed}

    def unblock(self, user: str, reason: str) -> Expected:
        changed = user in self.blocked
        self.blocked.discard(user)
        if changed:
            self.audit.append(("unblock", f"users/{user}", reason))
        return 200, {"userId": user, "blocked": False, "changed": changed}

    def revert(self, action: str, reason: str) -> Expected:
        rows = [row for row in self.rows if row.action == action]
        if not rows:
            return 404, "action_not_found"
        user = rows[0].user
        if action in self.reverted:
            return 200, {"actionId": action, "userId": user, "reverted": False, "boards": {}}
        self.reverted.add(action)
        self.cache.clear()
        boards: dict[str, Any] = {}
        before = {row.board: self.record(row.board, row.season, user) for row in rows}
        for row in rows:
            row.reverted = True
        for row in rows:
            rec = self.record(row.board, row.season, user)
            boards[row.board] = {"season": row.season, "score": None if rec is None else rec.score}
            if rec != before[row.board] and row.season in self.seasons(row.board):
                self.versions[row.board] += 1  # a kept record changed: a commit on that board
        self.audit.append(("revert", f"actions/{action}", reason))
        return 200, {"actionId": action, "userId": user, "reverted": True, "boards": boards}

    def end_season(self, board: str, reason: str | None) -> None:
        self.ended[board].append(self.season[board])
        self.audit.append(("reset", f"boards/{board}/seasons/{self.season[board]}", reason))
        self.season[board] += 1
        self.versions[board] += 1
        self.cache.clear()

    # -- reads

    def _find(self, board: str, season: int, user: str) -> tuple[list[Rec], int | None]:
        ranked = self.ranked(board, season)
        return ranked, next((i for i, rec in enumerate(ranked) if rec.user == user), None)

    def user_read(self, board: str, user: str, season: int) -> Expected:
        ranked, i = self._find(board, season, user)
        if i is None:
            return 404, "user_not_found"
        rec = ranked[i]
        body: dict[str, Any] = {
            "board": board,
            "season": season,
            "userId": user,
            "username": rec.username or user,
            "score": rec.score,
            "rank": i + 1,
            "total": len(ranked),
            "version": self.versions[board],
        }
        if rec.metadata is not None:
            body["metadata"] = rec.metadata
        return 200, body

    def around_read(self, board: str, user: str, season: int, count: int) -> Expected:
        ranked, i = self._find(board, season, user)
        if i is None:
            return 404, "user_not_found"
        n = len(ranked)
        width = min(n, 2 * count + 1)
        first = min(max(i - count, 0), n - width)
        entries = [ranked[j].entry(j + 1) for j in range(first, first + width)]
        return 200, self._listing(board, season, n, entries)

    def page_read(self, board: str, season: int, offset: int, limit: int | None) -> Expected:
        ranked = self.ranked(board, season)
        limit = self.specs[board].top_k if limit is None else limit
        entries = [ranked[j].entry(j + 1) for j in range(offset, min(len(ranked), offset + limit))]
        return 200, self._listing(board, season, len(ranked), entries)

    def friends_read(self, board: str, season: int, ids: Sequence[str]) -> Expected:
        ranked = self.ranked(board, season)
        wanted = set(ids)
        entries = [rec.entry(j + 1) for j, rec in enumerate(ranked) if rec.user in wanted]
        return 200, self._listing(board, season, len(ranked), entries)

    def _listing(self, board: str, season: int, total: int, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """A page, window or friends list; `version` is the board's, whatever the season read."""
        return {
            "board": board,
            "season": season,
            "version": self.versions[board],
            "total": total,
            "entries": entries,
        }


# -- talking to a server -------------------------------------------------------


def q(user: str) -> str:
    """A user id as a path segment."""
    return quote(user, safe="")


def ids_query(ids: Sequence[str]) -> str:
    """`ids=a,b,c`, each id URL-encoded."""
    return "ids=" + ",".join(q(i) for i in ids)


async def read(server: ServerHandle, path: str) -> Expected:
    """GET `path`: (200, body) or (status, error code)."""
    async with server.session.get(server.url + path) as resp:
        body = await resp.json(content_type=None)
        if resp.status == 200:
            return 200, body
        return resp.status, body["error"]["code"]


async def ok(server: ServerHandle, path: str) -> dict[str, Any]:
    """GET `path`, which must answer 200; its body."""
    status, body = await server.get(path)
    assert status == 200, (path, body)
    return dict(body)


def season_query(model: Model, board: str, season: int) -> str:
    """'' for the current season, else `season=N`."""
    return "" if season == model.season[board] else f"season={season}"


def with_query(path: str, *parts: str) -> str:
    query = "&".join(p for p in parts if p)
    return f"{path}?{query}" if query else path


async def check_reads(
    server: ServerHandle,
    model: Model,
    users: Sequence[str],
    *,
    counts: Sequence[int | None] = (0, 1, 3, None, 50),
    pages: Sequence[tuple[int | None, int | None]] = (
        (None, None),
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 100),
        (7, 5),
        (1000, 10),
    ),
    friend_sets: Sequence[Sequence[str]] | None = None,
) -> None:
    """Every read of every board and kept season equals the model's."""
    if friend_sets is None:
        friend_sets = [
            list(users),
            [users[0]],
            [users[-1], users[0], users[-1], "nobody"],
            list(reversed(users[: max(1, len(users) // 2)])),
        ]
    calls: list[tuple[str, Expected]] = []
    for board in model.specs:
        for season in model.seasons(board):
            sq = season_query(model, board, season)
            base = f"/api/boards/{board}"
            for user in users:
                calls.append(
                    (with_query(f"{base}/users/{q(user)}", sq), model.user_read(board, user, season))
                )
                for count in counts:
                    cq = "" if count is None else f"count={count}"
                    calls.append(
                        (
                            with_query(f"{base}/users/{q(user)}/around", cq, sq),
                            model.around_read(board, user, season, 5 if count is None else count),
                        )
                    )
            for offset, limit in pages:
                oq = "" if offset is None else f"offset={offset}"
                lq = "" if limit is None else f"limit={limit}"
                calls.append(
                    (
                        with_query(f"{base}/scores", oq, lq, sq),
                        model.page_read(board, season, offset or 0, limit),
                    )
                )
            for ids in friend_sets:
                calls.append(
                    (with_query(f"{base}/users", ids_query(ids), sq), model.friends_read(board, season, ids))
                )
            if season != model.season[board]:
                continue
            # The current season named explicitly reads the same.
            calls.append((f"{base}/scores?season={season}", model.page_read(board, season, 0, None)))
    results = await asyncio.gather(*(read(server, path) for path, _ in calls))
    for (path, expected), got in zip(calls, results, strict=True):
        assert got == expected, path
    status, body = await server.get("/scores")
    assert status == 200
    assert body == {"topUsers": model.top(model.default), "version": model.versions[model.default]}


class Watcher:
    """A subscriber of several boards (WebSocket or SSE) that applies snapshots and diffs."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None
        self._close: list[Any] = []

    def apply(self, body: dict[str, Any]) -> None:
        kind, board = body.get("type"), body.get("board")
        if kind not in ("scoreboard:update", "scoreboard:diff", "board:season"):
            return
        self.events.append(body)
        if kind == "scoreboard:update":
            self.rows[board] = list(body["topUsers"])
        elif kind == "scoreboard:diff":
            slots = {row["rank"]: row for row in self.rows[board]}
            for change in body["changes"]:
                if change.get("removed"):
                    slots.pop(change["rank"], None)
                else:
                    slots[change["rank"]] = change
            self.rows[board] = [slots[r] for r in sorted(slots)]

    @classmethod
    async def ws(cls, server: ServerHandle, boards: Iterable[str]) -> Watcher:
        """A WebSocket subscribed to `boards`, once every snapshot has arrived."""
        watcher = cls()
        ws = await server.session.ws_connect(server.ws_url)
        boards = list(boards)
        for board in boards:
            await ws.send_json({"type": "subscribe", "channel": f"board:{board}"})

        async def run() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    watcher.apply(orjson.loads(msg.data))

        watcher.task = asyncio.get_running_loop().create_task(run())
        watcher._close.append(ws)
        await watcher.until(lambda w: all(b in w.rows for b in boards))
        return watcher

    @classmethod
    async def sse(cls, server: ServerHandle, board: str) -> Watcher:
        """An SSE stream of one board, once its snapshot has arrived."""
        watcher = cls()
        resp = await server.session.get(f"{server.url}/api/boards/{board}/stream")
        assert resp.status == 200

        async def run() -> None:
            async for event in sse_events(resp):
                if event.event is not None:
                    watcher.apply(event.json())

        watcher.task = asyncio.get_running_loop().create_task(run())
        watcher._close.append(resp)
        await watcher.until(lambda w: board in w.rows)
        return watcher

    async def until(self, condition: Any, timeout_s: float = 5.0) -> bool:
        """Wait for `condition(self)` (False if it never holds)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition(self):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def holds(self, model: Model, boards: Iterable[str] | None = None) -> None:
        """Assert the watcher converges to the model's top K of every board."""
        boards = list(model.specs if boards is None else boards)
        await self.until(lambda w: all(w.rows.get(b) == model.top(b) for b in boards))
        for board in boards:
            assert self.rows.get(board) == model.top(board), board

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for thing in self._close:
            close = thing.close()
            if asyncio.iscoroutine(close):
                await close


@dataclass
class Driver:
    """Sends each change to a server, applies it to the model, and checks the answer."""

    server: ServerHandle
    model: Model
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)

    async def credit(
        self,
        user: str,
        scores: dict[str, int],
        *,
        action: str | None = None,
        username: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A fresh service credit (403 `user_blocked` if the model says the player is blocked)."""
        body: dict[str, Any] = {"userId": user, "actionId": action or uuid.uuid4().hex, "scores": scores}
        if username is not None:
            body["username"] = username
        if metadata is not None:
            body["metadata"] = metadata
        status, answer = await self.server.post("/scores/update", body, self.server.service_token)
        expected = self.model.credit(body["actionId"], user, scores, username, metadata)
        if expected is None:
            assert (status, answer["error"]["code"]) == (403, "user_blocked"), answer
            self.refused.append(body)
            await self.settle_refused(scores)
            return dict(answer)
        assert status == 200, answer
        assert answer["duplicate"] is False, answer
        assert answer["boards"] == expected["boards"], (body, answer, expected)
        assert answer.get("newScore") == expected.get("newScore"), (body, answer)
        assert answer.get("visibleAt") == expected.get("visibleAt"), (body, answer)
        self.bodies[body["actionId"]] = body
        return dict(answer)

    async def settle_refused(self, boards: Iterable[str], refusals: int = 1) -> None:
        """Take the versions of `boards` after `refusals` updates refused for a block.

        A refused update changes no record, but its batch may still have taken the
        versions of the boards it names: PostgreSQL numbers a batch's boards before it
        reads the blocks (so that a block committed first is seen), SQLite reads them
        first. So each board's version is the model's or up to `refusals` more.
        """
        for board in boards:
            version = (await ok(self.server, f"/api/boards/{q(board)}/scores?limit=1"))["version"]
            low = self.model.versions[board]
            assert low <= version <= low + refusals, (board, version, low, refusals)
            self.model.settle({board: version})

    async def retry(self, action: str) -> dict[str, Any]:
        """Send a credited action again: its original answer, and nothing changes."""
        status, answer = await self.server.post(
            "/scores/update", self.bodies[action], self.server.service_token
        )
        assert status == 200, answer
        original = self.model.answers[action]
        assert answer["duplicate"] is True, answer
        assert answer["boards"] == original["boards"], (action, answer, original)
        assert answer.get("newScore") == original.get("newScore"), (action, answer)
        assert answer.get("visibleAt") == original.get("visibleAt"), (action, answer)  # the original's
        return dict(answer)

    async def _admin(self, method: str, path: str, reason: str | None, expected: Expected) -> Any:
        status, body = await send(self.server, method, path, {"reason": reason}, ADMIN)
        got = (status, body if status == 200 else body["error"]["code"])
        if status == 200 and "removed" in body and isinstance(body["removed"], list):
            got = (status, body | {"removed": sorted(body["removed"], key=lambda r: r["board"])})
        assert got == expected, (method, path)
        return body

    async def remove(self, board: str, user: str, reason: str = "cheating") -> Any:
        expected = self.model.remove(board, user, reason)
        return await self._admin("DELETE", f"/api/boards/{board}/users/{q(user)}", reason, expected)

    async def block(self, user: str, reason: str = "cheating") -> Any:
        expected = self.model.block(user, reason)
        return await self._admin("POST", f"/api/admin/users/{q(user)}/block", reason, expected)

    async def unblock(self, user: str, reason: str = "appeal") -> Any:
        expected = self.model.unblock(user, reason)
        return await self._admin("DELETE", f"/api/admin/users/{q(user)}/block", reason, expected)

    async def revert(self, action: str, reason: str = "refund") -> Any:
        expected = self.model.revert(action, reason)
        return await self._admin("POST", f"/api/admin/actions/{q(action)}/revert", reason, expected)

    async def end_season(self, board: str, reason: str | None = "season over") -> None:
        body: dict[str, Any] = {"season": self.model.season[board]}
        if reason is not None:
            body["reason"] = reason
        status, answer = await self.server.post(f"/api/boards/{board}/reset", body, ADMIN)
        assert status == 200, answer
        self.model.end_season(board, reason)
        assert answer["season"] == self.model.season[board]


async def check_audit(server: ServerHandle, model: Model) -> None:
    """The audit log holds the model's changes, latest first."""
    status, body = await send(server, "GET", "/api/admin/audit?limit=100", tok=ADMIN)
    assert status == 200, body
    got = [(e["operation"], e["target"], e["reason"]) for e in body["entries"]]
    assert got == list(reversed(model.audit))[:100]
    assert {e["actor"] for e in body["entries"]} <= {"root"}
    ids = [e["id"] for e in body["entries"]]
    assert ids == sorted(set(ids), reverse=True)


async def eventually_ready(server: ServerHandle, ranks: str) -> None:
    """Wait until /readyz says `ranks` (a restart may load for a while)."""
    body: Any = None
    for _ in range(500):
        status, body = await server.get("/readyz")
        if status == 200 and body.get("ranks") == ranks:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"/readyz never said ranks={ranks!r}: {body}")


# -- the random sequence -----------------------------------------------------------

SPECS = (
    Spec("pts", "incr", True, top_k=3, min_value=1, max_value=20, archive=2, default=True),
    Spec("lap", "best", False, top_k=3, min_value=1, max_value=30, archive=2),
    Spec("lvl", "latest", True, top_k=3, min_value=0, max_value=9, archive=2),
)
USERS = ("ann", "Bob", "zoë", "d d", "e.e", "f", "g-1", "H")
STEPS = int(os.environ.get("RANK_PROPERTY_STEPS", "600"))
SEED = int(os.environ.get("RANK_PROPERTY_SEED", "8"))


async def random_step(driver: Driver, rng: random.Random, step_no: int) -> None:
    """One random change."""
    model = driver.model
    roll = rng.random()
    credited = list(driver.bodies)
    if roll < 0.58 or not credited:
        user = rng.choice(USERS)
        chosen = rng.sample(sorted(model.specs), rng.randint(1, 3))
        scores = {b: rng.randint(model.specs[b].min_value, model.specs[b].max_value) for b in chosen}
        username = rng.choice([None, None, f"{user.upper()}-{step_no % 3}"])
        metadata = rng.choice([None, {"step": step_no}])
        await driver.credit(user, scores, username=username, metadata=metadata)
    elif roll < 0.65:
        await driver.retry(rng.choice(credited))
    elif roll < 0.72:
        board = rng.choice(sorted(model.specs))
        # Mostly someone with an entry.
        present = [u for u in USERS if model.entry_of(board, u) is not None]
        await driver.remove(board, rng.choice(present if present and rng.random() < 0.8 else USERS))
    elif roll < 0.76:
        blocked = sorted(model.blocked)
        await driver.block(rng.choice(blocked if blocked and rng.random() < 0.2 else USERS))
    elif roll < 0.81:
        blocked = sorted(model.blocked)
        await driver.unblock(rng.choice(blocked if blocked and rng.random() < 0.8 else USERS))
    else:
        pick = rng.random()
        live = [a for a in credited if a not in model.reverted]
        if pick < 0.6 and live:
            action = rng.choice(live[-40:])  # recent ones matter more
        elif pick < 0.75 and model.reverted:
            action = rng.choice(sorted(model.reverted))  # a double revert
        elif pick < 0.85 and driver.refused:
            action = rng.choice(driver.refused)["actionId"]  # refused: never in the ledger
        elif pick < 0.9:
            action = "never-" + uuid.uuid4().hex
        else:
            action = rng.choice(credited)
        await driver.revert(action)
        if rng.random() < 0.3 and action in driver.bodies:
            await driver.retry(action)  # a reverted action stays a duplicate


async def test_every_read_equals_a_brute_force_ranking(
    database_url: str, start: StartServer, tmp_path: Path
) -> None:
    path = catalog(tmp_path, SPECS)
    server = await start(database_url, catalog_file=path, broadcast_tick_ms=5)
    model = Model.of(SPECS)
    driver = Driver(server, model)
    watcher = await Watcher.ws(server, model.specs)
    rng = random.Random(SEED)
    for step_no in range(STEPS):
        if step_no == STEPS // 2:
            for board in sorted(model.specs):
                await driver.end_season(board, None if board == "lvl" else f"end {step_no}")
            continue
        await random_step(driver, rng, step_no)
        if step_no % 60 == 59:
            await check_reads(server, model, USERS, counts=(1,), pages=((0, 100),), friend_sets=[USERS])
    done = {operation for operation, _, _ in model.audit}
    assert done == {"remove_entry", "block", "unblock", "revert", "reset"}, "a dull sequence"
    assert driver.refused, "a dull sequence"
    await check_reads(server, model, USERS)
    await watcher.holds(model)
    await watcher.close()
    await check_audit(server, model)
    await eventually_ready(server, "memory")

    # The same answers after a restart on the same database, then with ranks from the store.
    await server.stop()
    server = await start(database_url, catalog_file=path)
    await check_reads(server, model, USERS)
    await eventually_ready(server, "memory")
    await check_reads(server, model, USERS)
    await server.stop()
    server = await start(database_url, catalog_file=path, ranks="store")
    await eventually_ready(server, "store")
    await check_reads(server, model, USERS)
    # And the sequence goes on after the restart: moderation of what came before.
    driver.server = server
    for step_no in range(STEPS, STEPS + 40):
        await random_step(driver, rng, step_no)
    await check_reads(server, model, USERS)
    await check_audit(server, model)
