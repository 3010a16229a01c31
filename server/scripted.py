"""What both stores share above their drivers: rank reads, moderation, blocked players.

Each store runs `queries.py` scripts in its own read transaction (one
snapshot) and write transaction (`_read`, `_write`); the operations built
from them, and the in-memory set of blocked players that batches consult,
are written here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TypeVar

from . import queries
from .catalog import BoardSpec
from .store import Audit, AuditRow, Moderated, Ranked

T = TypeVar("T")


class ScriptedStore(ABC):
    """Rank reads and moderation over a store's own script drivers."""

    _specs: dict[str, BoardSpec]
    _blocked: set[str]

    @abstractmethod
    async def _read(self, script: queries.Script[T]) -> T:
        """Run a read script in one read-only snapshot."""

    @abstractmethod
    async def _write(self, script: queries.Script[T]) -> T:
        """Run a moderation script in one write transaction."""

    async def count(self, board: str, season: int) -> int:
        """How many players are ranked on a board's season."""
        return await self._read(queries.count(board, season))

    async def page(self, board: str, season: int, offset: int, limit: int) -> Ranked:
        """Ranks `offset + 1` to `offset + limit`."""
        return await self._read(queries.page(board, season, offset, limit))

    async def around(self, board: str, season: int, user_id: str, count: int) -> Ranked | None:
        """A player's entry and `count` on each side."""
        return await self._read(queries.around(board, season, user_id, count))

    async def many(self, board: str, season: int, user_ids: Sequence[str]) -> Ranked:
        """The ranked ones of `user_ids`, best first."""
        return await self._read(queries.many(board, season, user_ids))

    def is_blocked(self, user_id: str) -> bool:
        """Whether an admin has blocked the player."""
        return user_id in self._blocked

    async def remove_entry(self, spec: BoardSpec, user_id: str, audit: Audit) -> Moderated | None:
        """Delete a player's entry from the board's current season."""
        return await self._write(queries.remove_entry(spec, user_id, audit))

    async def block(self, user_id: str, audit: Audit) -> Moderated:
        """Block a player and remove their current entries (the set changes once committed)."""
        done = await self._write(queries.block(list(self._specs.values()), user_id, audit))
        self._blocked.add(user_id)
        return done

    async def unblock(self, user_id: str, audit: Audit) -> bool:
        """Lift a block."""
        changed = await self._write(queries.unblock(user_id, audit))
        self._blocked.discard(user_id)
        return changed

    async def revert(self, action_id: str, audit: Audit) -> Moderated | None:
        """Undo an action on every board it wrote."""
        return await self._write(queries.revert(self._specs, action_id, audit, audit.at * 1_000_000))

    async def audit_log(self, limit: int) -> list[AuditRow]:
        """The latest admin operations."""
        return await self._read(queries.audit_log(limit))
