"""Rank reads and moderation transactions, written once for both stores.

Pure: each transaction is a generator that yields `(sql, args)` and is sent
back the rows, so the SQLite store (in its thread) and the PostgreSQL store
(awaiting asyncpg) run the same logic with their own driver, inside their
own transaction (`run_sync` here; PostgreSQL awaits in `postgres.py`). SQL
is written with `?` placeholders in the subset both databases accept;
`numbered` turns them into PostgreSQL's `$1, $2, ...`.

Moderation keeps the ledger whole and marks what no longer counts: a
removal (or a block) voids the entry's credits, a revert voids the action's
credits and stamps the action `reverted_at`. An entry is always the fold
(`store.replay`) of its live credits, in stamp order, so a revert rebuilds
a `best` or `latest` record exactly as if the action never happened.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

from .board import Entry, RankedEntry, sort_key
from .catalog import BoardSpec
from .ranks import window_start
from .store import Audit, AuditRow, Committed, Credit, Moderated, Ranked, Record, Removed, replay

T = TypeVar("T")
Row = tuple[Any, ...]
Query = tuple[str, tuple[Any, ...]]
Script = Generator[Query, list[Row], T]

_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def run_sync(script: Script[T], execute: Callable[[str, tuple[Any, ...]], list[Row]]) -> T:
    """Drive a script with a blocking `execute(sql, args) -> rows`."""
    try:
        query = next(script)
        while True:
            query = script.send(execute(*query))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


_ENTRY = """
SELECT user_id, username, score, reached_at, metadata, sort_key FROM entries
WHERE board = ? AND season = ? AND user_id = ?
"""
_RANK = """
SELECT (SELECT count(*) FROM entries WHERE board = ? AND season = ? AND sort_key < ?)
     + (SELECT count(*) FROM entries WHERE board = ? AND season = ? AND sort_key = ?
        AND (reached_at < ? OR (reached_at = ? AND user_id < ?)))
     + 1
"""
_COUNT = "SELECT count(*) FROM entries WHERE board = ? AND season = ?"
_PAGE = """
SELECT user_id, username, score, reached_at, metadata FROM entries WHERE board = ? AND season = ?
ORDER BY sort_key, reached_at, user_id LIMIT ? OFFSET ?
"""


def record_of(row: Row) -> Record:
    """A stored record from `user_id, username, score, reached_at, metadata` columns."""
    metadata = row[4]
    if isinstance(metadata, str):
        metadata = metadata.encode()
    return Record(row[0], row[1], row[2], row[3], metadata)


def _rank(board: str, season: int, row: Row) -> Script[int]:
    key, reached, user = row[5], row[3], row[0]
    rows = yield _RANK, (board, season, key, board, season, key, reached, reached, user)
    return int(rows[0][0])


def _count(board: str, season: int) -> Script[int]:
    rows = yield _COUNT, (board, season)
    return int(rows[0][0])


def count(board: str, season: int) -> Script[int]:
    """How many players are ranked."""
    return (yield from _count(board, season))


def page(board: str, season: int, offset: int, limit: int) -> Script[Ranked]:
    """Ranks `offset + 1` to `offset + limit`."""
    total = yield from _count(board, season)
    if offset >= total:
        return Ranked(total, [])
    rows = yield _PAGE, (board, season, limit, offset)
    return Ranked(total, [RankedEntry(offset + i + 1, record_of(r).entry()) for i, r in enumerate(rows)])


def around(board: str, season: int, user_id: str, count: int) -> Script[Ranked | None]:
    """A player's entry and `count` on each side."""
    rows = yield _ENTRY, (board, season, user_id)
    if not rows:
        return None
    rank = yield from _rank(board, season, rows[0])
    total = yield from _count(board, season)
    found = yield from page(board, season, window_start(rank, count, total), 2 * count + 1)
    return Ranked(total, found.entries)


def many(board: str, season: int, user_ids: Sequence[str]) -> Script[Ranked]:
    """The ranked ones of `user_ids`, best first."""
    found: list[RankedEntry] = []
    for user_id in dict.fromkeys(user_ids):
        rows = yield _ENTRY, (board, season, user_id)
        if rows:
            rank = yield from _rank(board, season, rows[0])
            found.append(RankedEntry(rank, record_of(rows[0]).entry()))
    total = yield from _count(board, season)
    found.sort(key=lambda r: r.rank)
    return Ranked(total, found)


# -- moderation --------------------------------------------------------------

_TAKE_VERSION = "UPDATE boards SET version = version + 1 WHERE id = ? RETURNING season, version"
_TOP = """
SELECT user_id, username, score, reached_at, metadata FROM entries WHERE board = ? AND season = ?
ORDER BY sort_key, reached_at, user_id LIMIT ?
"""
_AUDIT = "INSERT INTO audit (at, actor, operation, target, reason) VALUES (?, ?, ?, ?, ?) RETURNING id"
_LIVE_CREDITS = """
SELECT c.value, coalesce(a.stamp, a.created_at), a.username, a.metadata, a.stamp IS NULL
FROM credits c JOIN actions a ON a.action_id = c.action_id
WHERE c.board = ? AND c.season = ? AND c.user_id = ? AND c.voided = 0
ORDER BY 2, c.action_id
"""
_UPSERT_ENTRY = """
INSERT INTO entries (board, season, user_id, username, score, sort_key, reached_at, metadata, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (board, season, user_id) DO UPDATE SET
    username = excluded.username, score = excluded.score, sort_key = excluded.sort_key,
    reached_at = excluded.reached_at, metadata = excluded.metadata, updated_at = excluded.updated_at
"""


def audit(entry: Audit) -> Script[int]:
    """Record an admin operation; its id."""
    rows = yield _AUDIT, (entry.at, entry.actor, entry.operation, entry.target, entry.reason)
    return int(rows[0][0])


def audit_log(limit: int) -> Script[list[AuditRow]]:
    """The latest `limit` admin operations, latest first."""
    rows = yield (
        "SELECT id, at, actor, operation, target, reason FROM audit ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [AuditRow(r[0], Audit(r[1], r[2], r[3], r[4], r[5])) for r in rows]


def _top(spec: BoardSpec, season: int) -> Script[tuple[Entry, ...]]:
    rows = yield _TOP, (spec.id, season, spec.top_k)
    return tuple(record_of(r).entry() for r in rows)


def _current_season(board: str) -> Script[int | None]:
    rows = yield "SELECT season FROM boards WHERE id = ?", (board,)
    return int(rows[0][0]) if rows else None


def _delete_entry(spec: BoardSpec, user_id: str) -> Script[tuple[Committed, Removed] | None]:
    """Delete the player's entry of the current season and void its credits."""
    season = yield from _current_season(spec.id)
    if season is None:
        return None
    rows = yield _ENTRY, (spec.id, season, user_id)
    if not rows:
        return None
    rank = yield from _rank(spec.id, season, rows[0])
    taken = yield _TAKE_VERSION, (spec.id,)
    version = int(taken[0][1])
    yield "DELETE FROM entries WHERE board = ? AND season = ? AND user_id = ?", (spec.id, season, user_id)
    yield (
        "UPDATE credits SET voided = 1 WHERE board = ? AND season = ? AND user_id = ? AND voided = 0",
        (spec.id, season, user_id),
    )
    top = yield from _top(spec, season)
    removed = Removed(spec.id, season, rank, record_of(rows[0]).entry())
    return Committed(spec.id, season, version, (), top, (user_id,)), removed


def remove_entry(spec: BoardSpec, user_id: str, entry: Audit) -> Script[Moderated | None]:
    """An admin removes a player's entry from a board's current season."""
    done = yield from _delete_entry(spec, user_id)
    if done is None:
        return None
    yield from audit(entry)
    return Moderated(user_id, True, [done[0]], [done[1]])


def block(specs: Sequence[BoardSpec], user_id: str, entry: Audit) -> Script[Moderated]:
    """Block a player and remove their entries from every board's current season."""
    rows = yield "SELECT 1 FROM blocks WHERE user_id = ?", (user_id,)
    if rows:
        return Moderated(user_id, False)
    yield (
        "INSERT INTO blocks (user_id, blocked_at, actor, reason) VALUES (?, ?, ?, ?)",
        (user_id, entry.at, entry.actor, entry.reason),
    )
    committed: list[Committed] = []
    removed: list[Removed] = []
    for spec in sorted(specs, key=lambda s: s.id):
        done = yield from _delete_entry(spec, user_id)
        if done is not None:
            committed.append(done[0])
            removed.append(done[1])
    yield from audit(entry)
    return Moderated(user_id, True, committed, removed)


def unblock(user_id: str, entry: Audit) -> Script[bool]:
    """Lift a block; False if there was none."""
    rows = yield "DELETE FROM blocks WHERE user_id = ? RETURNING user_id", (user_id,)
    if not rows:
        return False
    yield from audit(entry)
    return True


def revert(
    specs: Mapping[str, BoardSpec], action_id: str, entry: Audit, now_us: int
) -> Script[Moderated | None]:
    """Undo an action on every board it wrote, in whatever (kept) season it counted."""
    rows = yield "SELECT user_id, reverted_at FROM actions WHERE action_id = ?", (action_id,)
    if not rows:
        return None
    user_id: str = rows[0][0]
    if rows[0][1] is not None:
        return Moderated(user_id, False)
    yield "UPDATE actions SET reverted_at = ? WHERE action_id = ?", (entry.at, action_id)
    credits = yield "SELECT board, season FROM credits WHERE action_id = ? ORDER BY board", (action_id,)
    yield "UPDATE credits SET voided = 1 WHERE action_id = ?", (action_id,)
    committed: list[Committed] = []
    boards: dict[str, tuple[int, int | None]] = {}
    for board, season in credits:
        spec = specs.get(board)
        kept = yield "SELECT 1 FROM seasons WHERE board = ? AND season = ?", (board, season)
        if spec is None or not kept:
            continue  # a board no longer configured, or a season past its archive
        stored = yield _ENTRY, (board, season, user_id)
        old = record_of(stored[0]) if stored else None
        live = yield _LIVE_CREDITS, (board, season, user_id)
        new = replay(
            spec, [Credit(user_id, r[0], r[1], r[2], None if r[3] is None else _bytes(r[3])) for r in live]
        )
        if new is not None and new.username is None and old is not None and any(r[4] for r in live):
            # Actions credited before schema 3 did not keep their display
            # name (nor their stamp): the entry's name stands for theirs.
            new = Record(new.user_id, old.username, new.score, new.reached_at, new.metadata)
        boards[board] = (season, None if new is None else new.score)
        if new == old:
            continue
        taken = yield _TAKE_VERSION, (board,)
        version = int(taken[0][1])
        if new is None:
            yield (
                "DELETE FROM entries WHERE board = ? AND season = ? AND user_id = ?",
                (board, season, user_id),
            )
        else:
            yield (
                _UPSERT_ENTRY,
                (
                    board,
                    season,
                    user_id,
                    new.username,
                    new.score,
                    sort_key(new.score, spec.desc),
                    new.reached_at,
                    None if new.metadata is None else new.metadata.decode(),
                    now_us,
                ),
            )
        top = yield from _top(spec, season)
        committed.append(
            Committed(
                board,
                season,
                version,
                () if new is None else (new.entry(),),
                top,
                (user_id,) if new is None else (),
            )
        )
    yield from audit(entry)
    return Moderated(user_id, True, committed, boards=boards)


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value
