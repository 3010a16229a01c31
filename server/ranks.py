"""Every ranked player of one board's season, in ranking order, in memory.

Pure and synchronous. The top K (`board.py`) answers what every screen
shows; this answers what one player looks at: their own rank, the players
around them, any page of the board, and their friends' places, each in
O(log n) over all players.

Each player is one `bytes` value in a sorted list (`sortedcontainers`,
a list of sorted sublists with a positional index):

    sort_key + 2^63 (8 bytes, big-endian) | reached_at + 2^63 (8 bytes)
    | user_id (UTF-8) | 0x00 | len(username) (2 bytes) | username | metadata

Byte order is the ranking rule: the better score, then the earlier
`reached_at`, then the user id in code-point order (UTF-8 preserves it, and
user ids hold no NUL, which sorts before every other byte). The display name
(empty when it is the user id) and the metadata ride along, so a read needs
nothing else. A dict maps each user id (as UTF-8 bytes, smaller than a str)
to its value. About 185 bytes of memory a player with 8-character ids and
14-character names (`loadtest/ranks.py`), against 400+ for tuples of Python
objects.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .board import Entry, RankedEntry, sort_key

if TYPE_CHECKING:

    class SortedList:
        """The slice of `sortedcontainers.SortedList` used here (it ships no types)."""

        def __init__(self, iterable: Iterable[bytes] = ...) -> None: ...
        def __len__(self) -> int: ...
        def __getitem__(self, index: int) -> bytes: ...
        def add(self, value: bytes) -> None: ...
        def remove(self, value: bytes) -> None: ...
        def clear(self) -> None: ...
        def bisect_left(self, value: bytes) -> int: ...
        def islice(self, start: int, stop: int) -> Iterable[bytes]: ...

else:
    from sortedcontainers import SortedList

_HEAD = struct.Struct(">QQ")
_BIAS = 1 << 63
_NAME_LEN = 2
MAX_NAME_BYTES = (1 << 16) - 1


Row = tuple[str, str | None, int, int, bytes | None]


def pack(entry: Entry, desc: bool) -> bytes:
    """The sortable value of `entry` on a board of that order."""
    return pack_row((entry.user_id, entry.username, entry.score, entry.reached_at, entry.metadata), desc)


def pack_row(row: Row, desc: bool, uid: bytes | None = None) -> bytes:
    """The sortable value of a stored record `(user_id, username, score, reached_at, metadata)`.

    A display name that is None or the user id is shown as the user id.
    `uid` is the user id as UTF-8, if the caller has it already.
    """
    user_id, username, score, reached_at, metadata = row
    name = b"" if username is None or username == user_id else username.encode()
    if len(name) > MAX_NAME_BYTES:
        raise ValueError("display name too long")
    return b"".join(
        (
            _HEAD.pack(sort_key(score, desc) + _BIAS, reached_at + _BIAS),
            user_id.encode() if uid is None else uid,
            b"\x00",
            len(name).to_bytes(_NAME_LEN, "big"),
            name,
            metadata or b"",
        )
    )


def unpack(value: bytes, desc: bool) -> Entry:
    """The entry a sortable value holds."""
    key, reached = _HEAD.unpack_from(value)
    end = value.index(0, _HEAD.size)
    user_id = value[_HEAD.size : end].decode()
    start = end + 1 + _NAME_LEN
    length = int.from_bytes(value[end + 1 : start], "big")
    username = value[start : start + length].decode() if length else user_id
    metadata = value[start + length :] or None
    key -= _BIAS
    return Entry(user_id, username, ~key if desc else key, reached - _BIAS, metadata)


class Ranks:
    """All players of one board's season in ranking order, with O(log n) rank and index."""

    __slots__ = ("_by_user", "_desc", "_order")

    def __init__(self, *, desc: bool = True) -> None:
        self._desc = desc
        self._order = SortedList()
        # Keyed by the user id's UTF-8 bytes: 16 bytes a player less than a str key.
        self._by_user: dict[bytes, bytes] = {}

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> Ranks:
        """Ranks holding a loaded snapshot's players (its values are taken, not copied)."""
        ranks = cls(desc=snapshot.desc)
        if len(snapshot.by_user) != len(snapshot.values):
            raise ValueError("a player appears twice in the snapshot")
        # Sorting values that arrive in ranking order is one linear pass.
        ranks._order = SortedList(snapshot.values)
        ranks._by_user = snapshot.by_user
        return ranks

    def __len__(self) -> int:
        return len(self._by_user)

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and user_id.encode() in self._by_user

    def clear(self) -> None:
        """Forget every player (a new season)."""
        self._order.clear()
        self._by_user.clear()

    def put(self, entry: Entry) -> None:
        """Set a player's entry (new, moved or renamed)."""
        value = pack(entry, self._desc)
        key = entry.user_id.encode()
        old = self._by_user.get(key)
        if old == value:
            return
        if old is not None:
            self._order.remove(old)
        self._order.add(value)
        self._by_user[key] = value

    def remove(self, user_id: str) -> bool:
        """Drop a player's entry; False if there was none."""
        old = self._by_user.pop(user_id.encode(), None)
        if old is None:
            return False
        self._order.remove(old)
        return True

    def rank(self, user_id: str) -> int | None:
        """The 1-based rank of `user_id`, or None if unranked."""
        value = self._by_user.get(user_id.encode())
        return None if value is None else self._order.bisect_left(value) + 1

    def standing(self, user_id: str) -> RankedEntry | None:
        """A player's entry with its rank."""
        value = self._by_user.get(user_id.encode())
        if value is None:
            return None
        return RankedEntry(self._order.bisect_left(value) + 1, unpack(value, self._desc))

    def page(self, offset: int, limit: int) -> list[RankedEntry]:
        """The entries ranked `offset + 1` to `offset + limit` (fewer past the end)."""
        if offset >= len(self._by_user) or limit <= 0:
            return []
        desc = self._desc
        return [
            RankedEntry(offset + i + 1, unpack(v, desc))
            for i, v in enumerate(self._order.islice(offset, offset + limit))
        ]

    def around(self, user_id: str, count: int) -> list[RankedEntry] | None:
        """A player's entry and `count` on each side, filled from the other side at an edge."""
        rank = self.rank(user_id)
        if rank is None:
            return None
        return self.page(window_start(rank, count, len(self._by_user)), 2 * count + 1)

    def many(self, user_ids: Iterable[str]) -> list[RankedEntry]:
        """The ranked ones of `user_ids` (each once), best first."""
        found: list[RankedEntry] = []
        for user_id in dict.fromkeys(user_ids):
            standing = self.standing(user_id)
            if standing is not None:
                found.append(standing)
        found.sort(key=lambda r: r.rank)
        return found

    def top(self, k: int) -> list[Entry]:
        """The best `k` entries."""
        return [r.entry for r in self.page(0, k)]

    def entries(self) -> list[Entry]:
        """Every entry, best first (tests and checks)."""
        return [unpack(v, self._desc) for v in self._order.islice(0, len(self._order))]


def window_start(rank: int, count: int, total: int) -> int:
    """The offset of the around-me window of `rank`: `count` on each side, shifted at an edge."""
    size = 2 * count + 1
    return max(0, min(rank - 1 - count, total - size))


class Snapshot:
    """Stored records packed as they are read, to become a board's `Ranks` in one step."""

    __slots__ = ("by_user", "desc", "values")

    def __init__(self, *, desc: bool) -> None:
        self.desc = desc
        self.values: list[bytes] = []
        self.by_user: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self.values)

    def add(self, rows: Iterable[Row]) -> None:
        """Pack and keep `rows` (user_id, username, score, reached_at, metadata)."""
        desc, values, by_user = self.desc, self.values, self.by_user
        for row in rows:
            uid = row[0].encode()
            value = pack_row(row, desc, uid)
            values.append(value)
            by_user[uid] = value


class RankIndex:
    """A board's `Ranks` for its current season, and whether they are complete yet.

    At start-up (and after a resynchronisation) the ranks are loaded from the
    store in the background: the load reads one snapshot, tagged with the
    board version it includes, while commits keep arriving. Changes of later
    versions are kept here and replayed onto the snapshot when it is in, so
    the ranks become exact at once; until then `ready` is False and readers
    ask the store.
    """

    __slots__ = ("_desc", "_load", "_loaded", "_pending", "ranks", "ready")

    def __init__(self, *, desc: bool) -> None:
        self._desc = desc
        self.ranks = Ranks(desc=desc)
        self.ready = False
        # The load in progress (a token) and the changes it must replay.
        self._load: object | None = None
        self._pending: list[tuple[int, Sequence[Entry], Sequence[str]]] = []
        # The version the last load's snapshot included: a change up to it is
        # already in (a hub catching up after the load started sends them).
        self._loaded = -1

    def start_load(self) -> object:
        """Begin a load; the token names it in `finish_load`."""
        token = object()
        self._load = token
        self._pending = []
        self.ready = False
        return token

    def finish_load(self, token: object, snapshot: Snapshot, version: int) -> bool:
        """Install a snapshot of `version` and replay later changes; False if the load is stale."""
        if token is not self._load:
            return False
        ranks = Ranks.from_snapshot(snapshot)
        for changed_at, standings, removed in self._pending:
            if changed_at > version:
                _change(ranks, standings, removed)
        self.ranks = ranks
        self._load = None
        self._pending = []
        self._loaded = version
        self.ready = True
        return True

    def abandon_load(self, token: object) -> None:
        """Give up a load (the store failed); readers keep asking the store."""
        if token is self._load:
            self._load = None
            self._pending = []

    @property
    def loading(self) -> bool:
        """A load is in progress."""
        return self._load is not None

    def change(self, version: int, standings: Sequence[Entry], removed: Sequence[str]) -> None:
        """Apply one commit's changes (kept for replay while loading)."""
        if self._load is not None:
            self._pending.append((version, standings, removed))
        if self.ready and version > self._loaded:
            _change(self.ranks, standings, removed)

    def new_season(self) -> None:
        """The next season starts empty: complete at once, any load is stale."""
        self._load = None
        self._pending = []
        self._loaded = -1
        self.ranks.clear()
        self.ready = True

    def snapshot(self) -> Snapshot:
        """An empty snapshot for this board's order, for a load to fill."""
        return Snapshot(desc=self._desc)


def _change(ranks: Ranks, standings: Sequence[Entry], removed: Sequence[str]) -> None:
    for user_id in removed:
        ranks.remove(user_id)
    for entry in standings:
        ranks.put(entry)
