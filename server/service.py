"""The use cases, independent of transport: start an action, credit a score,
read the board and a user's standing.

An update travels in a straight line: the transport authenticates and parses
JSON, `prepare_update` validates and authorises it into a store `Update`,
the writer commits it in a batch, `record_commit` moves the board, and the
transport answers with the result and the board.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .board import Board
from .catalog import ActionType
from .errors import Code, ScoreboardError
from .logs import request_id
from .ratelimit import RateLimiter
from .store import BatchResult, Outcome, Result, Source, StorageError, Store, Update, UserStanding
from .tickets import Ticket, TicketKeys, check_window, parse_ticket, sign_ticket
from .tokens import Identity, Role
from .validation import parse_action_start, parse_update
from .writer import Writer

events = logging.getLogger("scoreboard.events")


@dataclass(frozen=True, slots=True)
class ActionStart:
    """A started action: the ticket to redeem once it is done."""

    action_id: str
    ticket: str
    reward: int
    not_before: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated, authorised update, with the refusal to give if it is new."""

    update: Update
    if_new: ScoreboardError | None = None


@dataclass(frozen=True, slots=True)
class CreditAnswer:
    """What a client is told about its update: the status and the one JSON shape.

    200 `{"success", "userId", "newScore", "duplicate"}` once committed, or
    202 `{"success", "accepted", "userId", "actionId"}` with ACK=memory.
    Transports add their framing (`topUsers` over HTTP, `type`/`id` over
    WebSocket) and nothing else.
    """

    status: int
    body: dict[str, Any]


class PendingCredit:
    """An update handed to the writer; `answer()` waits for what to tell the client."""

    __slots__ = ("_future", "_prepared")

    def __init__(self, prepared: Prepared, future: asyncio.Future[Result] | None) -> None:
        self._prepared = prepared
        self._future = future

    @property
    def update(self) -> Update:
        """The update as submitted."""
        return self._prepared.update

    async def answer(self) -> CreditAnswer:
        """The answer once committed (at once with ACK=memory); raises ScoreboardError."""
        update = self._prepared.update
        if self._future is None:
            return CreditAnswer(
                202,
                {"success": True, "accepted": True, "userId": update.user_id, "actionId": update.action_id},
            )
        result = ScoreService.answer(self._prepared, await self._future)
        return CreditAnswer(
            200,
            {
                "success": True,
                "userId": result.user_id,
                "newScore": result.new_score,
                "duplicate": result.outcome is Outcome.DUPLICATE,
            },
        )


class ScoreService:
    """Holds the board and the writer; every transport calls into this."""

    def __init__(
        self,
        *,
        board: Board,
        writer: Writer,
        store: Store,
        catalog: Mapping[str, ActionType],
        ticket_keys: TicketKeys,
        clock: Callable[[], float],
        max_delta: int,
        ack_commit: bool = True,
        retry_after_s: float = 1.0,
        rate_limit_keys: int = 100_000,
        player_updates_per_min: int = 60,
        player_actions_per_min: int = 60,
        new_action_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.board = board
        self.store = store
        self._catalog = catalog
        self._ticket_keys = ticket_keys
        self._clock = clock
        self._max_delta = max_delta
        self.ack_commit = ack_commit
        self.retry_after_s = retry_after_s
        self._limiter = RateLimiter(window_s=60.0, max_keys=rate_limit_keys)
        # Per player, whatever the transport: keys of players idle for a
        # minute are evicted first, so memory stays within rate_limit_keys.
        self._players = RateLimiter(window_s=60.0, max_keys=rate_limit_keys)
        self._updates_per_min = player_updates_per_min
        self._actions_per_min = player_actions_per_min
        self._new_action_id = new_action_id
        self.writer = writer
        self.rate_limited = 0

    # -- actions ---------------------------------------------------------

    def _limit_player(self, identity: Identity, kind: str, per_min: int, what: str) -> None:
        if identity.role is Role.SERVICE or per_min == 0:
            return
        wait = self._players.acquire(f"{kind}\x00{identity.user_id}", per_min, self._clock())
        if wait is not None:
            self.rate_limited += 1
            raise ScoreboardError(
                Code.RATE_LIMITED, f"At most {per_min} {what} per minute per player.", retry_after=wait
            )

    def start_action(self, identity: Identity, body: object) -> ActionStart:
        """Issue a ticket for one action of the type named in `body`."""
        self._limit_player(identity, "a", self._actions_per_min, "action starts")
        name = parse_action_start(body)
        action = self._catalog.get(name)
        if action is None:
            raise ScoreboardError(
                Code.UNKNOWN_ACTION_TYPE, f"There is no action type '{name}'.", field="type"
            )
        now = self._clock()
        if action.max_per_minute is not None:
            wait = self._limiter.acquire(f"{identity.user_id}\x00{name}", action.max_per_minute, now)
            if wait is not None:
                self.rate_limited += 1
                raise ScoreboardError(
                    Code.RATE_LIMITED,
                    f"At most {action.max_per_minute} '{name}' actions may be started per minute.",
                    retry_after=wait,
                )
        issued = math.floor(now)
        ticket = Ticket(
            action_id=self._new_action_id(),
            user_id=identity.user_id,
            points=action.points,
            not_before=issued + action.min_duration_s,
            expires_at=issued + action.ttl_s,
            action_type=name,
        )
        return ActionStart(
            action_id=ticket.action_id,
            ticket=sign_ticket(self._ticket_keys, ticket),
            reward=ticket.points,
            not_before=ticket.not_before,
            expires_at=ticket.expires_at,
        )

    # -- updates ---------------------------------------------------------

    def prepare_update(self, identity: Identity, body: object) -> Prepared:
        """Validate and authorise an update body; raises ScoreboardError."""
        parsed = parse_update(body, identity.role, max_delta=self._max_delta)
        if identity.role is Role.SERVICE:
            if parsed.user_id is None or parsed.score_delta is None:
                raise AssertionError("service bodies always carry userId and scoreDelta")
            update = Update(
                parsed.action_id,
                parsed.user_id,
                parsed.username,
                parsed.score_delta,
                Source.SERVICE,
                request_id=request_id.get(),
            )
            return Prepared(update)
        if parsed.user_id is not None and parsed.user_id != identity.user_id:
            raise ScoreboardError(Code.FORBIDDEN, "Players can only credit their own score.", field="userId")
        if parsed.ticket is None:
            raise AssertionError("player bodies always carry a ticket")
        ticket = parse_ticket(self._ticket_keys, parsed.ticket)
        if ticket.user_id != identity.user_id:
            raise ScoreboardError(
                Code.TICKET_MISMATCH, "The ticket was issued to another user.", field="ticket"
            )
        if ticket.action_id != parsed.action_id:
            raise ScoreboardError(Code.TICKET_MISMATCH, "The ticket is for another action.", field="actionId")
        if parsed.score_delta is not None and parsed.score_delta != ticket.points:
            raise ScoreboardError(
                Code.DELTA_MISMATCH,
                f"'scoreDelta' must equal the ticket's points ({ticket.points}) or be left out.",
                field="scoreDelta",
            )
        refusal = check_window(ticket, self._clock())
        if refusal is not None and refusal.code is Code.TICKET_NOT_YET_VALID:
            raise refusal
        update = Update(
            ticket.action_id,
            identity.user_id,
            identity.name,
            ticket.points,
            Source.PLAYER,
            allow_credit=refusal is None,
            request_id=request_id.get(),
        )
        # An expired ticket is still answered if its action was credited
        # (a client retrying after a timeout); otherwise it is refused.
        return Prepared(update, refusal)

    def credit(self, identity: Identity, body: object) -> PendingCredit:
        """Validate, authorise and queue one update: the use case every transport calls.

        Raises ScoreboardError at once for a refusal that needs no store
        (validation, ticket, rate limit, storage down, queue full). Never
        waits: `await pending.answer()` for the outcome.
        """
        self._limit_player(identity, "u", self._updates_per_min, "score updates")
        prepared = self.prepare_update(identity, body)
        if not self.ack_commit:
            # Without waiting for the store the server cannot tell a retry
            # from a new action, so an expired ticket is refused outright.
            if prepared.if_new is not None:
                raise prepared.if_new
            self.writer.submit(prepared.update).add_done_callback(_log_unacknowledged)
            return PendingCredit(prepared, None)
        return PendingCredit(prepared, self.writer.submit(prepared.update))

    @staticmethod
    def answer(prepared: Prepared, result: Result) -> Result:
        """The result to give the client, or the refusal it earned."""
        if result.outcome is Outcome.CONFLICT:
            raise ScoreboardError(
                Code.ACTION_CONFLICT,
                "This actionId was already used for another user or score delta.",
                field="actionId",
            )
        if result.outcome is Outcome.NOT_CREDITED:
            raise prepared.if_new or ScoreboardError(Code.INTERNAL_ERROR, "The update was not credited.")
        return result

    # -- reads -----------------------------------------------------------

    async def standing(self, user_id: str) -> UserStanding:
        """A user's score and rank; raises user_not_found."""
        rank = self.board.rank_of(user_id)
        entry = self.board.get(user_id)
        if rank is not None and entry is not None:
            return UserStanding(entry, rank)
        try:
            found = await self.store.standing(user_id)
        except StorageError:
            raise ScoreboardError(
                Code.STORAGE_UNAVAILABLE, "Storage is unavailable.", retry_after=self.retry_after_s
            ) from None
        if found is None:
            raise ScoreboardError(Code.USER_NOT_FOUND, f"No score is recorded for user '{user_id}'.")
        return found


def _log_unacknowledged(future: asyncio.Future[Result]) -> None:
    # ACK=memory: the client already has its 202, so a failure can only be
    # logged (conflicts are logged as events when their batch commits).
    if not future.cancelled() and future.exception() is not None:
        events.warning("unacknowledged_update_failed", extra={"fields": {"error": repr(future.exception())}})


def record_commit(board: Board, updates: Sequence[Update], batch: BatchResult) -> None:
    """Move the board and log the events of a committed batch (the writer's on_commit)."""
    for entry in batch.credited:
        board.apply(entry)
    if not events.isEnabledFor(logging.INFO):
        return
    if batch.ledger:
        request_ids = {u.action_id: u.request_id for u in updates}
        events.info(
            "score_credited",
            extra={
                "events": [
                    {
                        "request_id": request_ids.get(row.action_id),
                        "user_id": row.user_id,
                        "delta": row.delta,
                        "score_after": row.score_after,
                        "action_id": row.action_id,
                        "source": row.source,
                    }
                    for row in batch.ledger
                ]
            },
        )
    for update, result in zip(updates, batch.results, strict=True):
        if result.outcome is Outcome.CONFLICT:
            events.warning(
                "action_conflict",
                extra={
                    "request_id": update.request_id,
                    "fields": {"user_id": update.user_id, "action_id": update.action_id},
                },
            )


async def resync(board: Board, store: Store) -> None:
    """Reload the board from the store (start-up, and after a storage outage)."""
    board.replace(await store.top(board.k))
