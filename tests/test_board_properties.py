"""Every board, whatever its operator and order, equals a brute-force sort of its ledger.

Two levels:
- the pure core (hypothesis): any sequence of updates on incr/best/latest,
  desc/asc boards and season ends, run through the stores' batch logic
  (`plan_batch`, `apply_plan`) and a hub's board and feed; the top K equals a
  brute-force replay of the ledger with the ranking rule, and a subscriber
  applying snapshot + diffs holds the same board;
- real servers on both stores: random sequences over HTTP, with WebSocket
  subscribers on every board, compared with the same brute-force replay.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from scoreboard.board import Board, Change, Entry, apply_diff
from scoreboard.catalog import BoardSpec, Operator, Order
from scoreboard.feed import Feed
from scoreboard.store import Record, Source, Update, apply_plan, plan_batch
from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import token

SPECS = {
    "inc": BoardSpec("inc", "incr desc", Operator.INCR, Order.DESC, top_k=3, min_value=1, max_value=50),
    "inca": BoardSpec("inca", "incr asc", Operator.INCR, Order.ASC, top_k=3, min_value=-5, max_value=5),
    "best": BoardSpec("best", "best desc", Operator.BEST, Order.DESC, top_k=3, min_value=-50, max_value=50),
    "lap": BoardSpec("lap", "best asc", Operator.BEST, Order.ASC, top_k=3, min_value=1, max_value=50),
    "last": BoardSpec("last", "latest desc", Operator.LATEST, Order.DESC, top_k=3, min_value=0, max_value=9),
    "lasta": BoardSpec("lasta", "latest asc", Operator.LATEST, Order.ASC, top_k=3, min_value=0, max_value=9),
}
USERS = ["a", "b", "c", "d", "e"]


def replay(ledger: list[tuple[int, str, str, int]], spec: BoardSpec) -> list[tuple[str, int]]:
    """The brute force: each credit `(stamp, board, user, value)` in order, then sort by the rule."""
    records: dict[str, tuple[int, int]] = {}  # user -> (score, reached_at)
    for stamp, board, user, value in ledger:
        if board != spec.id:
            continue
        old = records.get(user)
        if spec.operator is Operator.INCR:
            records[user] = ((old[0] if old else 0) + value, stamp)
        elif (
            spec.operator is Operator.LATEST
            or old is None
            or (value > old[0] if spec.desc else value < old[0])
        ):
            records[user] = (value, stamp)
    ranked = sorted(records.items(), key=lambda kv: (-kv[1][0] if spec.desc else kv[1][0], kv[1][1], kv[0]))
    return [(user, score) for user, (score, _) in ranked[: spec.top_k]]


@dataclass
class Model:
    """The pure pipeline: a stored state per board and season, and a hub's board and feed per board."""

    season: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPECS, 1))
    stored: dict[tuple[str, int, str], Record] = field(default_factory=dict)
    boards: dict[str, Board] = field(default_factory=dict)
    feeds: dict[str, Feed] = field(default_factory=dict)
    seen: dict[str, list[Entry]] = field(default_factory=dict)
    ledger: dict[tuple[str, int], list[tuple[int, str, str, int]]] = field(default_factory=dict)
    stamp: int = 0

    def __post_init__(self) -> None:
        for spec in SPECS.values():
            self.boards[spec.id] = Board(spec.top_k, desc=spec.desc)
            self.feeds[spec.id] = Feed("ep", (), board_id=spec.id)
            self.seen[spec.id] = []

    def batch(self, updates: list[Update]) -> None:
        plan = plan_batch(updates, {})
        current = {(b, u): r for (b, s, u), r in self.stored.items() if s == self.season[b]}
        stamps = list(range(self.stamp + 1, self.stamp + 1 + len(updates)))
        self.stamp += len(updates)
        applied = apply_plan(plan, stamps, SPECS, self.season, current)
        for (board, user), record in applied.records.items():
            self.stored[(board, self.season[board], user)] = record
        for i in plan.fresh:
            for board, value in updates[i].scores:
                self.ledger.setdefault((board, self.season[board]), []).append(
                    (stamps[i], board, updates[i].user_id, value)
                )
        for board in {b for i in plan.fresh for b, _ in updates[i].scores}:
            spec = SPECS[board]
            hub = self.boards[board]
            if spec.monotonic:
                for (b, _), record in applied.records.items():
                    if b == board:
                        hub.apply(record.entry())
            else:
                everyone = [
                    r.entry() for (b, s, _), r in self.stored.items() if b == board and s == self.season[b]
                ]
                hub.replace(everyone)
            self.publish(board)

    def publish(self, board: str) -> None:
        event = self.feeds[board].publish(self.boards[board].entries())
        if event is not None:
            body = _json(event.json)
            changes = [Change(c["rank"], None if c.get("removed") else _entry(c)) for c in body["changes"]]
            self.seen[board] = apply_diff(self.seen[board], changes)

    def end_season(self, board: str) -> None:
        ended = self.season[board]
        self.season[board] += 1
        self.boards[board].clear()
        events = self.feeds[board].new_season(self.boards[board].entries(), ended, self.season[board])
        assert _json(events[0].json)["type"] == "board:season"
        self.seen[board] = [_entry(u) for u in _json(events[1].json)["topUsers"]]


def _json(raw: bytes) -> dict[str, Any]:
    import orjson

    return dict(orjson.loads(raw))


def _entry(row: dict[str, Any]) -> Entry:
    return Entry(row["userId"], row["username"], row["score"], 0)


def _names(entries: list[Entry] | tuple[Entry, ...]) -> list[tuple[str, int]]:
    return [(e.user_id, e.score) for e in entries]


def _value(spec: BoardSpec) -> st.SearchStrategy[int]:
    return st.integers(min_value=spec.min_value, max_value=spec.max_value)


update_st = st.tuples(
    st.sampled_from(USERS),
    st.lists(st.sampled_from(sorted(SPECS)), min_size=1, max_size=3, unique=True).flatmap(
        lambda boards: st.tuples(*(st.tuples(st.just(b), _value(SPECS[b])) for b in boards))
    ),
)
op_st = st.one_of(
    st.lists(update_st, min_size=1, max_size=6).map(lambda batch: ("batch", batch)),
    st.sampled_from(sorted(SPECS)).map(lambda board: ("end", board)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=25))
def test_the_core_matches_a_replay_of_the_ledger(ops: list[tuple[str, Any]]) -> None:
    model = Model()
    n = 0
    for kind, arg in ops:
        if kind == "end":
            model.end_season(arg)
            continue
        updates = []
        for user, scores in arg:
            n += 1
            updates.append(Update(f"a{n}", user, None, tuple(sorted(scores)), Source.SERVICE))
        model.batch(updates)
    for spec in SPECS.values():
        expected = replay(model.ledger.get((spec.id, model.season[spec.id]), []), spec)
        assert _names(model.boards[spec.id].entries()) == expected, spec.id
        assert _names(model.seen[spec.id]) == expected, spec.id


# -- real servers ------------------------------------------------------------


def catalog_toml() -> str:
    lines = []
    for spec in SPECS.values():
        lines += [
            f"[boards.{spec.id}]",
            f'operator = "{spec.operator.value}"',
            f'order = "{spec.order.value}"',
            f"top_k = {spec.top_k}",
            f"min_value = {spec.min_value}",
            f"max_value = {spec.max_value}",
            f"default = {'true' if spec.id == 'inc' else 'false'}",
            "",
        ]
    return "\n".join(lines)


class Watcher:
    """A WebSocket subscriber of every board that applies snapshots and diffs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.boards: dict[str, list[tuple[str, int]]] = {}
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            body = msg.json()
            kind, board = body.get("type"), body.get("board")
            if kind == "scoreboard:update":
                self.boards[board] = [(u["userId"], u["score"]) for u in body["topUsers"]]
            elif kind == "scoreboard:diff":
                slots = dict(enumerate(self.boards[board], start=1))
                for change in body["changes"]:
                    if change.get("removed"):
                        slots.pop(change["rank"], None)
                    else:
                        slots[change["rank"]] = (change["userId"], change["score"])
                self.boards[board] = [slots[r] for r in sorted(slots)]


async def test_servers_match_a_replay_of_their_ledger(
    start: StartServer, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(catalog_toml())
    server = await start(database_url, catalog_file=path)
    service = token("backend", role=Role.SERVICE)
    admin = token("root", role=Role.ADMIN)
    ws = await server.session.ws_connect(server.ws_url)
    for board in SPECS:
        await ws.send_json({"type": "subscribe", "channel": f"board:{board}"})
    watcher = Watcher(ws)
    seasons = dict.fromkeys(SPECS, 1)
    for seed in range(4):
        rng = random.Random(seed)
        # Each sequence starts on empty boards: a new season of every board.
        for board in SPECS:
            status, _ = await server.post(f"/api/boards/{board}/reset", {"season": seasons[board]}, admin)
            assert status == 200
            seasons[board] += 1
        ledger: dict[str, list[tuple[int, str, str, int]]] = {b: [] for b in SPECS}
        for step in range(30):
            if rng.random() < 0.1:
                board = rng.choice(sorted(SPECS))
                status, _ = await server.post(f"/api/boards/{board}/reset", {"season": seasons[board]}, admin)
                assert status == 200
                seasons[board] += 1
                ledger[board] = []
                continue
            user = rng.choice(USERS)
            chosen = rng.sample(sorted(SPECS), rng.randint(1, 3))
            scores = {b: rng.randint(SPECS[b].min_value, SPECS[b].max_value) for b in chosen}
            status, body = await server.post(
                "/scores/update",
                {"userId": user, "actionId": uuid.uuid4().hex, "scores": scores},
                service,
            )
            assert status == 200, body
            for b, value in scores.items():
                assert body["boards"][b]["season"] == seasons[b]
                ledger[b].append((step, b, user, value))
        for board, spec in SPECS.items():
            expected = replay(ledger[board], spec)
            status, body = await server.get(f"/api/boards/{board}/scores")
            assert status == 200
            assert [(e["userId"], e["score"]) for e in body["entries"]] == expected, (seed, board)
            for _ in range(200):
                if watcher.boards.get(board) == expected:
                    break
                await asyncio.sleep(0.01)
            assert watcher.boards.get(board) == expected, (seed, board)
    watcher.task.cancel()
    await ws.close()
