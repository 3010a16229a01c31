"""The top-K board: ranking rule, exact in-memory top K, and board diffs.

Pure and synchronous: no I/O, no clock. Everything that decides who is ranked
where lives in this module.

Ranking rule: higher score first; on equal scores, whoever reached that score
first (smaller `reached_at`); then by `user_id` in code-point order. The
stores sort the same way (`ORDER BY score DESC, reached_at, id` with a binary
collation on `id`), so the in-memory board and a database query agree.

Exactness: scores only ever increase (every credited delta is positive), so a
user outside the top K can only enter it through an update the board sees.
Keeping exactly K entries is therefore enough; no shadow entries are needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """One user's standing: display name, score, and when it was reached.

    `reached_at` is a strictly increasing stamp (microseconds since the Unix
    epoch) assigned when the score was credited; it breaks ties.
    """

    user_id: str
    username: str
    score: int
    reached_at: int

    @property
    def key(self) -> tuple[int, int, str]:
        """Sort key: ascending order is best first."""
        return (-self.score, self.reached_at, self.user_id)


@dataclass(frozen=True, slots=True)
class RankedEntry:
    """An entry together with its 1-based rank."""

    rank: int
    entry: Entry


@dataclass(frozen=True, slots=True)
class Change:
    """One rank whose occupant changed; `entry` is None when the rank emptied."""

    rank: int
    entry: Entry | None


def rank_all(entries: Iterable[Entry], k: int) -> list[Entry]:
    """Brute-force reference: the best `k` of `entries` by the ranking rule."""
    return sorted(entries, key=lambda e: e.key)[:k]


class Board:
    """The exact top K, updated from committed results.

    `version` increases by one on every change, so adapters can cache
    encodings of the current board.
    """

    __slots__ = ("_entries", "_k", "_keys", "version")

    def __init__(self, k: int, entries: Iterable[Entry] = ()) -> None:
        if k < 1:
            raise ValueError("board size must be at least 1")
        self._k = k
        self._entries: list[Entry] = []
        self._keys: list[tuple[int, int, str]] = []
        self.version = 0
        self.replace(entries)

    @property
    def k(self) -> int:
        """Board size."""
        return self._k

    def entries(self) -> tuple[Entry, ...]:
        """Current board, best first."""
        return tuple(self._entries)

    def ranked(self) -> list[RankedEntry]:
        """Current board with ranks."""
        return [RankedEntry(i + 1, e) for i, e in enumerate(self._entries)]

    def rank_of(self, user_id: str) -> int | None:
        """1-based rank of `user_id` if it is on the board."""
        for i, e in enumerate(self._entries):
            if e.user_id == user_id:
                return i + 1
        return None

    def get(self, user_id: str) -> Entry | None:
        """The board entry of `user_id`, if on the board."""
        for e in self._entries:
            if e.user_id == user_id:
                return e
        return None

    def replace(self, entries: Iterable[Entry]) -> bool:
        """Replace the whole board (start-up, resynchronisation); True if it changed."""
        new = rank_all(entries, self._k)
        if new == self._entries:
            return False
        self._entries = new
        self._keys = [e.key for e in new]
        self.version += 1
        return True

    def apply(self, entry: Entry) -> bool:
        """Record a user's new standing; True if the board changed.

        Raises ValueError if a user on the board would move down: that would
        break the monotonic-score invariant the exactness relies on.
        """
        key = entry.key
        for i, current in enumerate(self._entries):
            if current.user_id != entry.user_id:
                continue
            if current == entry:
                return False
            if key > self._keys[i]:
                raise ValueError(f"score of {entry.user_id!r} moved down; boards need monotonic scores")
            del self._entries[i]
            del self._keys[i]
            break
        else:
            if len(self._entries) >= self._k and key >= self._keys[-1]:
                return False
        pos = bisect_left(self._keys, key)
        self._keys.insert(pos, key)
        self._entries.insert(pos, entry)
        if len(self._entries) > self._k:
            self._entries.pop()
            self._keys.pop()
        self.version += 1
        return True


def diff(old: Sequence[Entry], new: Sequence[Entry]) -> list[Change]:
    """The ranks whose occupant changed between two boards.

    Applying the changes to `old` (set rank r to the change's entry, or drop
    it when None) gives exactly `new`.
    """
    changes: list[Change] = []
    for i in range(max(len(old), len(new))):
        before = old[i] if i < len(old) else None
        after = new[i] if i < len(new) else None
        if before != after:
            changes.append(Change(i + 1, after))
    return changes


def apply_diff(board: Sequence[Entry], changes: Iterable[Change]) -> list[Entry]:
    """Apply `changes` to `board` (the inverse of `diff`)."""
    slots: dict[int, Entry] = {i + 1: e for i, e in enumerate(board)}
    for change in changes:
        if change.entry is None:
            slots.pop(change.rank, None)
        else:
            slots[change.rank] = change.entry
    return [slots[r] for r in sorted(slots)]
