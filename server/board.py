"""A board's top K: ranking rule, exact in-memory top K, and board diffs.

Pure and synchronous: no I/O, no clock. Everything that decides who is ranked
where lives in this module.

Ranking rule: the better score first (higher on a `desc` board, lower on an
`asc` one); on equal scores, whoever reached that score first (smaller
`reached_at`); then by `user_id` in code-point order. The stores sort the same
way (`ORDER BY sort_key, reached_at, user_id` with a binary collation, where
`sort_key` is `~score` on desc boards and `score` on asc ones), so the
in-memory board and a database query agree.

Exactness: on a monotonic board (a player's place only ever improves) a user
outside the top K can only enter it through an update the board sees, so
keeping exactly K entries is enough. On other boards the store re-reads the
top K with each commit and the board is replaced (`Board.replace`).
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
    # The record's metadata as compact JSON, as stored (None: none).
    metadata: bytes | None = None

    @property
    def key(self) -> tuple[int, int, str]:
        """Sort key on a `desc` board: ascending order is best first."""
        return (-self.score, self.reached_at, self.user_id)

    def key_for(self, desc: bool) -> tuple[int, int, str]:
        """Sort key on a board ranking higher (`desc`) or lower scores first."""
        return (-self.score if desc else self.score, self.reached_at, self.user_id)


def sort_key(score: int, desc: bool) -> int:
    """The stores' ranking column: ascending order is best first.

    `~score` (that is, -score - 1) reverses the order of every int64 without
    overflowing, where -score would not fit for -2^63.
    """
    return ~score if desc else score


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


def rank_all(entries: Iterable[Entry], k: int, *, desc: bool = True) -> list[Entry]:
    """Brute-force reference: the best `k` of `entries` by the ranking rule."""
    return sorted(entries, key=lambda e: e.key_for(desc))[:k]


class Board:
    """The exact top K, updated from committed results.

    `version` increases by one on every change, so adapters can cache
    encodings of the current board.
    """

    __slots__ = ("_desc", "_entries", "_k", "_keys", "version")

    def __init__(self, k: int, entries: Iterable[Entry] = (), *, desc: bool = True) -> None:
        if k < 1:
            raise ValueError("board size must be at least 1")
        self._k = k
        self._desc = desc
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

    @property
    def desc(self) -> bool:
        """Higher scores rank first."""
        return self._desc

    def clear(self) -> None:
        """Empty the board (a new season)."""
        self.replace(())

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
        new = rank_all(entries, self._k, desc=self._desc)
        if new == self._entries:
            return False
        self._entries = new
        self._keys = [e.key_for(self._desc) for e in new]
        self.version += 1
        return True

    def apply(self, entry: Entry) -> bool:
        """Record a user's improved standing on a monotonic board; True if the board changed.

        A standing that ranks below the one held for that user is not newer
        (places only improve on such a board): it is ignored, so applying a
        commit twice, or an older one late, changes nothing. One at the same
        place (a new display name) replaces it.
        """
        key = entry.key_for(self._desc)
        for i, current in enumerate(self._entries):
            if current.user_id != entry.user_id:
                continue
            if key > self._keys[i] or current == entry:
                return False
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
