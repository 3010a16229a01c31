"""Rank reads: a player's rank, the players around them, pages, and friends lists.

Served from memory when the board's current season has its ranks loaded
(`Hub.ranks`), so each read is a few O(log n) steps and never waits on the
database; archived seasons, and the current one while its ranks are still
loading (or with `SCOREBOARD_RANKS=store`), are read from the store, each
read in one snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .board import RankedEntry
from .errors import Code, ScoreboardError
from .hub import Hub, Hubs
from .ranks import Ranks
from .store import StorageError, Store

T = TypeVar("T")

MAX_AROUND = 50
MAX_PAGE = 100
MAX_OFFSET = 1_000_000_000
MAX_IDS = 100


@dataclass(frozen=True, slots=True)
class Listing:
    """Ranked entries of one board's season, and how many players it ranks."""

    hub: Hub
    season: int
    total: int
    entries: list[RankedEntry]
    # The highest commit version the listing includes (from the store: at
    # least this one, the hub's when the read began).
    version: int = 0


def not_ranked(user_id: str) -> ScoreboardError:
    """The 404 for a player without an entry."""
    return ScoreboardError(Code.USER_NOT_FOUND, f"No score is recorded for user '{user_id}'.")


class Standings:
    """Every rank read, from memory or from the store."""

    def __init__(
        self,
        hubs: Hubs,
        store: Store,
        *,
        season: Callable[[Hub, int | None], Awaitable[int]],
        unavailable: Callable[[], ScoreboardError],
    ) -> None:
        self._hubs = hubs
        self._store = store
        self._season = season
        self._unavailable = unavailable

    async def _where(self, board: str | None, season: int | None) -> tuple[Hub, int, Ranks | None]:
        hub = self._hubs.default if board is None else self._hubs.get(board)
        number = await self._season(hub, season)
        return hub, number, hub.ranks if number == hub.season else None

    async def _stored(self, read: Awaitable[T]) -> T:
        try:
            return await read
        except StorageError:
            raise self._unavailable() from None

    async def standing(self, user_id: str, board: str | None = None, season: int | None = None) -> Listing:
        """A player's entry and rank (the one entry of the listing); 404 user_not_found."""
        hub, number, ranks = await self._where(board, season)
        if ranks is not None:
            found = ranks.standing(user_id)
            if found is None:
                raise not_ranked(user_id)
            return Listing(hub, number, len(ranks), [found], hub.version)
        version = hub.version
        read = await self._stored(self._store.around(hub.id, number, user_id, 0))
        if read is None:
            raise not_ranked(user_id)
        return Listing(hub, number, read.total, read.entries, version)

    async def around(self, user_id: str, count: int, board: str, season: int | None = None) -> Listing:
        """A player's entry and `count` on each side; 404 user_not_found."""
        hub, number, ranks = await self._where(board, season)
        if ranks is not None:
            window = ranks.around(user_id, count)
            if window is None:
                raise not_ranked(user_id)
            return Listing(hub, number, len(ranks), window, hub.version)
        version = hub.version
        read = await self._stored(self._store.around(hub.id, number, user_id, count))
        if read is None:
            raise not_ranked(user_id)
        return Listing(hub, number, read.total, read.entries, version)

    async def page(self, offset: int, limit: int, board: str, season: int | None = None) -> Listing:
        """The entries ranked `offset + 1` to `offset + limit`."""
        hub, number, ranks = await self._where(board, season)
        if ranks is not None:
            return Listing(hub, number, len(ranks), ranks.page(offset, limit), hub.version)
        version = hub.version
        read = await self._stored(self._store.page(hub.id, number, offset, limit))
        return Listing(hub, number, read.total, read.entries, version)

    async def many(self, user_ids: Sequence[str], board: str, season: int | None = None) -> Listing:
        """The ranked ones of `user_ids`, best first (a friends board)."""
        hub, number, ranks = await self._where(board, season)
        if ranks is not None:
            return Listing(hub, number, len(ranks), ranks.many(user_ids), hub.version)
        version = hub.version
        read = await self._stored(self._store.many(hub.id, number, user_ids))
        return Listing(hub, number, read.total, read.entries, version)
