"""Admin use cases: remove an entry, block and unblock a player, revert an action, read the audit.

Each change runs as a writer job, between two batches, so it serialises
with every credit: a block takes effect for the next batch, a revert sees
every credit committed before it. The store records the operation in the
audit table in the same transaction, and the committed values go through
the hubs like any batch's, so boards, ranks and subscribers follow at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import Code, ScoreboardError
from .hub import Hubs
from .identity import Identity, Role
from .store import Audit, AuditRow, Moderated, StorageError, Store
from .writer import Writer

T = TypeVar("T")
events = logging.getLogger("scoreboard.events")


def require_admin(identity: Identity) -> None:
    """Refuse (403 forbidden) anyone but an admin."""
    if identity.role is not Role.ADMIN:
        raise ScoreboardError(Code.FORBIDDEN, "Only an admin token may moderate boards.")


class Moderation:
    """The admin operations, bound to the hubs, the store and the writer."""

    def __init__(self, hubs: Hubs, store: Store, writer: Writer, *, clock: Callable[[], float]) -> None:
        self._hubs = hubs
        self._store = store
        self._writer = writer
        self._clock = clock

    def audit_entry(self, identity: Identity, operation: str, target: str, reason: str | None) -> Audit:
        """The audit record of an operation by `identity` now."""
        return Audit(math.floor(self._clock()), identity.user_id, operation, target, reason)

    async def _job(self, job: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._writer.run_job(job)
        except StorageError:
            raise ScoreboardError(
                Code.STORAGE_UNAVAILABLE, "Storage is unavailable; nothing was changed.", retry_after=1
            ) from None

    def _applied(self, done: Moderated, audit: Audit) -> Moderated:
        for committed in done.committed:
            self._hubs.apply_one(committed)
        if done.changed:
            events.info(
                "moderated",
                extra={
                    "fields": {
                        "operation": audit.operation,
                        "target": audit.target,
                        "actor": audit.actor,
                        "reason": audit.reason,
                        "boards": [c.board for c in done.committed],
                    }
                },
            )
        return done

    async def remove_entry(self, identity: Identity, board: str, user_id: str, reason: str) -> Moderated:
        """Delete a player's entry from a board's current season; 404 user_not_found."""
        require_admin(identity)
        spec = self._hubs.get(board).spec
        audit = self.audit_entry(identity, "remove_entry", f"boards/{board}/users/{user_id}", reason)

        async def job() -> Moderated | None:
            done = await self._store.remove_entry(spec, user_id, audit)
            return None if done is None else self._applied(done, audit)

        done = await self._job(job)
        if done is None:
            raise ScoreboardError(
                Code.USER_NOT_FOUND, f"User '{user_id}' has no entry in the current season of '{board}'."
            )
        return done

    async def block(self, identity: Identity, user_id: str, reason: str) -> Moderated:
        """Block a player: their entries leave every board's current season, their credits are refused."""
        require_admin(identity)
        audit = self.audit_entry(identity, "block", f"users/{user_id}", reason)

        async def job() -> Moderated:
            return self._applied(await self._store.block(user_id, audit), audit)

        return await self._job(job)

    async def unblock(self, identity: Identity, user_id: str, reason: str) -> bool:
        """Lift a block (removed entries stay removed); False if the player was not blocked."""
        require_admin(identity)
        audit = self.audit_entry(identity, "unblock", f"users/{user_id}", reason)

        async def job() -> bool:
            changed = await self._store.unblock(user_id, audit)
            self._applied(Moderated(user_id, changed), audit)
            return changed

        return await self._job(job)

    async def revert(self, identity: Identity, action_id: str, reason: str) -> Moderated:
        """Undo an action on every board it wrote; 404 action_not_found."""
        require_admin(identity)
        audit = self.audit_entry(identity, "revert", f"actions/{action_id}", reason)

        async def job() -> Moderated | None:
            done = await self._store.revert(action_id, audit)
            return None if done is None else self._applied(done, audit)

        done = await self._job(job)
        if done is None:
            raise ScoreboardError(Code.ACTION_NOT_FOUND, f"The ledger has no action '{action_id}'.")
        return done

    async def audit(self, identity: Identity, limit: int) -> list[AuditRow]:
        """The latest admin operations, latest first."""
        require_admin(identity)
        try:
            return await self._store.audit_log(limit)
        except StorageError:
            raise ScoreboardError(
                Code.STORAGE_UNAVAILABLE, "Storage is unavailable.", retry_after=1
            ) from None
