"""Committed values as bytes: what the database keeps by version and the bus carries.

Every change that takes a board version (a batch's part on a board, a
moderation, a season end) is encoded once, stored in the same transaction
(PostgreSQL's `changes` table) and published to the other processes. A
process that missed a message reads the same bytes back by version, so the
bus and the database can never disagree on what version N was.

Pure: no I/O. `decode` raises `ValueError` on anything it did not encode.
"""

from __future__ import annotations

from typing import Any

import orjson

from .board import Entry
from .store import Committed, SeasonChange

Change = Committed | SeasonChange


def _row(e: Entry) -> list[object]:
    return [e.user_id, e.username, e.score, e.reached_at, None if e.metadata is None else e.metadata.decode()]


def _entry(row: Any) -> Entry:
    user_id, username, score, reached_at, metadata = row
    if not (isinstance(user_id, str) and isinstance(username, str)):
        raise ValueError("an entry's ids are strings")
    if not (isinstance(score, int) and isinstance(reached_at, int)):
        raise ValueError("an entry's score and stamp are integers")
    if metadata is not None and not isinstance(metadata, str):
        raise ValueError("an entry's metadata is JSON text")
    return Entry(user_id, username, score, reached_at, None if metadata is None else metadata.encode())


def _entries(rows: Any) -> tuple[Entry, ...]:
    if not isinstance(rows, list):
        raise ValueError("entries come as a list")
    return tuple(_entry(r) for r in rows)


def encode_entries(entries: tuple[Entry, ...] | list[Entry]) -> bytes:
    """A board's entries as bytes (the shared sequence keeps its head board so)."""
    return orjson.dumps([_row(e) for e in entries])


def decode_entries(data: bytes | str) -> tuple[Entry, ...]:
    """The entries `encode_entries` made; raises ValueError for anything else."""
    try:
        return _entries(orjson.loads(data))
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"not encoded entries: {exc}") from None


def encode(change: Change) -> bytes:
    """The bytes of a committed value (`decode` inverts it)."""
    if isinstance(change, SeasonChange):
        return orjson.dumps(
            {
                "k": "s",
                "b": change.board,
                "e": change.ended,
                "s": change.season,
                "v": change.version,
                "sa": change.started_at,
                "ea": change.ends_at,
            }
        )
    return orjson.dumps(
        {
            "k": "c",
            "b": change.board,
            "s": change.season,
            "v": change.version,
            "st": [_row(e) for e in change.standings],
            "top": None if change.top is None else [_row(e) for e in change.top],
            "rm": list(change.removed),
        }
    )


def decode(data: bytes | str) -> Change:
    """The value `encode` made; raises ValueError for anything else."""
    try:
        doc = orjson.loads(data)
        kind = doc["k"]
        board, season, version = doc["b"], doc["s"], doc["v"]
        if not (isinstance(board, str) and isinstance(season, int) and isinstance(version, int)):
            raise ValueError("board, season and version are typed")
        if kind == "s":
            ends_at = doc["ea"]
            if not (isinstance(doc["e"], int) and isinstance(doc["sa"], int)):
                raise ValueError("season numbers are integers")
            if ends_at is not None and not isinstance(ends_at, int):
                raise ValueError("ends_at is an integer or null")
            return SeasonChange(board, doc["e"], season, version, doc["sa"], ends_at)
        if kind != "c":
            raise ValueError(f"unknown kind {kind!r}")
        removed = doc["rm"]
        if not (isinstance(removed, list) and all(isinstance(u, str) for u in removed)):
            raise ValueError("removed players are strings")
        top = doc["top"]
        return Committed(
            board,
            season,
            version,
            _entries(doc["st"]),
            None if top is None else _entries(top),
            tuple(removed),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an encoded change: {exc}") from None
