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

from .board import Board
from .catalog import ActionType
from .errors import Code, ScoreboardError
from .logs import request_id
from .ratelimit import RateLimiter
from .store import BatchResult, Outcome, Result, Source, StorageError, Store, Update, UserStanding
from .tickets import Ticket, check_window, parse_ticket, sign_ticket
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


class ScoreService:
    """Holds the board and the writer; every transport calls into this."""

    def __init__(
        self,
        *,
        board: Board,
        writer: Writer,
        store: Store,
        catalog: Mapping[str, ActionType],
        ticket_secret: bytes,
        clock: Callable[[], float],
        max_delta: int,
        ack_commit: bool = True,
        retry_after_s: float = 1.0,
        rate_limit_keys: int = 100_000,
        new_action_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.board = board
        self.store = store
        self._catalog = catalog
        self._ticket_secret = ticket_secret
        self._clock = clock
        self._max_delta = max_delta
        self.ack_commit = ack_commit
        self.retry_after_s = retry_after_s
        self._limiter = RateLimiter(window_s=60.0, max_keys=rate_limit_keys)
        self._new_action_id = new_action_id
        self.writer = writer

    # -- actions ---------------------------------------------------------

    def start_action(self, identity: Identity, body: object) -> ActionStart:
        """Issue a ticket for one action of the type named in `body`."""
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
            ticket=sign_ticket(self._ticket_secret, ticket),
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
        ticket = parse_ticket(self._ticket_secret, parsed.ticket)
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

    def submit(self, prepared: Prepared) -> asyncio.Future[Result]:
        """Queue a prepared update; raises at once if storage cannot take it."""
        return self.writer.submit(prepared.update)

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
