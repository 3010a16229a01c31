"""The use cases, independent of transport: start an action, credit a score,
read boards and a user's standing, end a season.

An update travels in a straight line: the transport authenticates and parses
JSON, `credit` validates and authorises it into a store `Update` and queues
it, the writer commits it in a batch, `record_commit` hands the committed
values to the board hubs, and `PendingCredit.answer` gives the one answer
shape every transport sends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .board import Entry
from .catalog import Catalog
from .errors import Code, ScoreboardError
from .hub import Hub, Hubs
from .identity import Identity, Role
from .limits import Limiter, LocalLimiter
from .logs import request_id
from .moderation import Moderation
from .standings import Standings
from .store import (
    Audit,
    BatchResult,
    Outcome,
    Result,
    SeasonChange,
    Source,
    StorageError,
    Store,
    Update,
)
from .tickets import Ticket, TicketKeys, check_window, parse_ticket, sign_ticket
from .validation import UpdateBody, parse_action_start, parse_update
from .writer import Writer

if TYPE_CHECKING:
    from .seasons import Seasons

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

    200 `{"success", "userId", "newScore", "duplicate", "visibleAt", "boards"}` once committed, or
    202 `{"success", "accepted", "userId", "actionId"}` with ACK=memory.
    Transports add their framing (`topUsers` over HTTP, `type`/`id` over
    WebSocket) and nothing else.
    """

    status: int
    body: dict[str, Any]
    # Whether the update wrote the default board (HTTP then adds its `topUsers`).
    default_board: bool = True


class PendingCredit:
    """An update handed to the writer; `answer()` waits for what to tell the client."""

    __slots__ = ("_default", "_future", "_prepared")

    def __init__(self, prepared: Prepared, future: asyncio.Future[Result] | None, default: str) -> None:
        self._prepared = prepared
        self._future = future
        self._default = default

    @property
    def update(self) -> Update:
        """The update as submitted."""
        return self._prepared.update

    async def answer(self) -> CreditAnswer:
        """The answer once committed (at once with ACK=memory); raises ScoreboardError."""
        update = self._prepared.update
        writes_default = any(board == self._default for board, _ in update.scores)
        if self._future is None:
            return CreditAnswer(
                202,
                {"success": True, "accepted": True, "userId": update.user_id, "actionId": update.action_id},
                writes_default,
            )
        result = ScoreService.answer(self._prepared, await self._future)
        body: dict[str, Any] = {"success": True, "userId": result.user_id}
        default = result.boards.get(self._default)
        if default is not None:
            body["newScore"] = default.score
        body["duplicate"] = result.outcome is Outcome.DUPLICATE
        if default is not None:
            # Read your writes: a subscriber or read showing `version` >= this
            # includes the update, on whichever process it is served.
            body["visibleAt"] = default.version
        body["boards"] = {
            board: {"season": c.season, "score": c.score, "improved": c.improved, "visibleAt": c.version}
            for board, c in result.boards.items()
        }
        return CreditAnswer(200, body, default is not None)


class ScoreService:
    """Holds the board and the writer; every transport calls into this."""

    def __init__(
        self,
        *,
        hubs: Hubs,
        writer: Writer,
        store: Store,
        catalog: Catalog,
        ticket_keys: TicketKeys,
        clock: Callable[[], float],
        max_delta: int,
        ack_commit: bool = True,
        retry_after_s: float = 1.0,
        rate_limit_keys: int = 100_000,
        limiter: Limiter | None = None,
        player_updates_per_min: int = 60,
        player_actions_per_min: int = 60,
        new_action_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        seasons: Seasons | None = None,
    ) -> None:
        self.seasons = seasons
        self.hubs = hubs
        self.store = store
        self._catalog = catalog
        self._default = catalog.default
        self._ticket_keys = ticket_keys
        self._clock = clock
        self._max_delta = max_delta
        self.ack_commit = ack_commit
        self.retry_after_s = retry_after_s
        # Per player (whatever the transport) and per player and action type,
        # one key space: "u"/"a" + user for updates and action starts, "t" +
        # user + type for max_per_minute (ids hold no \x00, so keys never
        # collide). The default holds in this process only; a RedisLimiter
        # holds across processes. Locally, keys of players idle for a minute
        # are evicted first, so memory stays within rate_limit_keys.
        self._limiter: Limiter = (
            LocalLimiter(window_s=60.0, max_keys=rate_limit_keys) if limiter is None else limiter
        )
        self._updates_per_min = player_updates_per_min
        self._actions_per_min = player_actions_per_min
        self._new_action_id = new_action_id
        self.writer = writer
        self.rate_limited = 0
        # `memory`, `loading` or `store` (GET /readyz); the app sets it.
        self.rank_state: Callable[[], str] = lambda: "store"
        # `up`, `down` (Redis unreachable: processes converge through the
        # database) or `off` (one process); the app sets it.
        self.bus_state: Callable[[], str] = lambda: "off"
        self.standings = Standings(hubs, store, season=self._season, unavailable=self._unavailable)
        self.moderation = Moderation(hubs, store, writer, clock=clock)

    @property
    def limiter(self) -> Limiter:
        """The per-player and per-action-type rate limits (local, or shared over Redis)."""
        return self._limiter

    # -- actions ---------------------------------------------------------

    async def _limit_player(self, identity: Identity, kind: str, per_min: int, what: str) -> None:
        if identity.role is Role.SERVICE or per_min == 0:
            return
        wait = await self._limiter.acquire(f"{kind}\x00{identity.user_id}", per_min, self._clock())
        if wait is not None:
            self.rate_limited += 1
            raise ScoreboardError(
                Code.RATE_LIMITED, f"At most {per_min} {what} per minute per player.", retry_after=wait
            )

    async def start_action(self, identity: Identity, body: object) -> ActionStart:
        """Issue a ticket for one action of the type named in `body`."""
        if self.store.is_blocked(identity.user_id):
            raise ScoreboardError(Code.USER_BLOCKED, "This player is blocked from earning scores.")
        await self._limit_player(identity, "a", self._actions_per_min, "action starts")
        name = parse_action_start(body)
        action = self._catalog.actions.get(name)
        if action is None:
            raise ScoreboardError(
                Code.UNKNOWN_ACTION_TYPE, f"There is no action type '{name}'.", field="type"
            )
        now = self._clock()
        if action.max_per_minute is not None:
            key = f"t\x00{identity.user_id}\x00{name}"
            wait = await self._limiter.acquire(key, action.max_per_minute, now)
            if wait is not None:
                self.rate_limited += 1
                raise ScoreboardError(
                    Code.RATE_LIMITED,
                    f"At most {action.max_per_minute} '{name}' actions may be started per minute.",
                    retry_after=wait,
                )
        issued = math.floor(now)
        # An action on the default board alone gets a ticket with `points`,
        # as before boards existed; others name their boards in `scores`.
        alone = action.boards in ((), (self._default,))
        ticket = Ticket(
            action_id=self._new_action_id(),
            user_id=identity.user_id,
            points=action.points if alone else None,
            not_before=issued + action.min_duration_s,
            expires_at=issued + action.ttl_s,
            action_type=name,
            scores=None if alone else tuple(sorted((b, action.points) for b in action.boards)),
        )
        return ActionStart(
            action_id=ticket.action_id,
            ticket=sign_ticket(self._ticket_keys, ticket),
            reward=action.points,
            not_before=ticket.not_before,
            expires_at=ticket.expires_at,
        )

    # -- updates ---------------------------------------------------------

    def _checked(self, scores: tuple[tuple[str, int], ...], field: str) -> tuple[tuple[str, int], ...]:
        """`scores` if every board exists and every value is within its board's bounds."""
        for board, value in scores:
            hub = self.hubs.find(board)
            if hub is None:
                raise ScoreboardError(
                    Code.UNKNOWN_BOARD, f"There is no board '{board}'.", field=f"{field}.{board}"
                )
            spec = hub.spec
            if not spec.min_value <= value <= spec.max_value:
                raise ScoreboardError(
                    Code.OUT_OF_RANGE,
                    f"The value for board '{board}' must be from {spec.min_value} to {spec.max_value}.",
                    field=f"{field}.{board}" if field == "scores" else field,
                )
        return scores

    def prepare_update(self, identity: Identity, body: object) -> Prepared:
        """Validate and authorise an update body; raises ScoreboardError."""
        if identity.role is Role.ADMIN:
            raise ScoreboardError(
                Code.FORBIDDEN, "Admin tokens moderate boards; credit scores with a player or service token."
            )
        parsed = parse_update(body, identity.role, max_delta=self._max_delta)
        if identity.role is Role.SERVICE:
            if parsed.user_id is None:
                raise AssertionError("service bodies always carry userId")
            if parsed.scores is not None:
                scores = self._checked(parsed.scores, "scores")
            elif parsed.score_delta is not None:
                scores = self._checked(((self._default, parsed.score_delta),), "scoreDelta")
            else:
                raise AssertionError("service bodies carry scoreDelta or scores")
            update = Update(
                parsed.action_id,
                parsed.user_id,
                parsed.username,
                scores,
                Source.SERVICE,
                metadata=parsed.metadata,
                request_id=request_id.get(),
            )
            return Prepared(update)
        return self._player_update(identity, parsed)

    def _player_update(self, identity: Identity, parsed: UpdateBody) -> Prepared:
        """A player's update: what its ticket proves, nothing more."""
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
                f"'scoreDelta' must equal the ticket's points ({ticket.points}) or be left out."
                if ticket.points is not None
                else "This ticket credits several boards: leave 'scoreDelta' out.",
                field="scoreDelta",
            )
        if ticket.scores is not None:
            scores = self._checked(ticket.scores, "scores")
        elif ticket.points is not None:
            scores = self._checked(((self._default, ticket.points),), "ticket")
        else:
            raise AssertionError("a ticket carries points or scores")
        refusal = check_window(ticket, self._clock())
        if refusal is not None and refusal.code is Code.TICKET_NOT_YET_VALID:
            raise refusal
        update = Update(
            ticket.action_id,
            identity.user_id,
            identity.name,
            scores,
            Source.PLAYER,
            metadata=ticket.metadata,
            allow_credit=refusal is None,
            request_id=request_id.get(),
        )
        # An expired ticket is still answered if its action was credited
        # (a client retrying after a timeout); otherwise it is refused.
        return Prepared(update, refusal)

    async def credit(self, identity: Identity, body: object) -> PendingCredit:
        """Validate, authorise and queue one update: the use case every transport calls.

        Raises ScoreboardError at once for a refusal that needs no store
        (validation, ticket, rate limit, storage down, queue full). Waits at
        most for a shared rate limit (one Redis round trip for players, none
        for service tokens), never for the store: `await pending.answer()`
        for the outcome.
        """
        await self._limit_player(identity, "u", self._updates_per_min, "score updates")
        prepared = self.prepare_update(identity, body)
        if not self.ack_commit:
            # Without waiting for the store the server cannot tell a retry
            # from a new action, so an expired ticket is refused outright,
            # and so is a blocked player.
            if prepared.if_new is not None:
                raise prepared.if_new
            if self.store.is_blocked(prepared.update.user_id):
                raise ScoreboardError(Code.USER_BLOCKED, "This player is blocked from earning scores.")
            self.writer.submit(prepared.update).add_done_callback(_log_unacknowledged)
            return PendingCredit(prepared, None, self._default)
        return PendingCredit(prepared, self.writer.submit(prepared.update), self._default)

    @staticmethod
    def answer(prepared: Prepared, result: Result) -> Result:
        """The result to give the client, or the refusal it earned."""
        if result.outcome is Outcome.CONFLICT:
            raise ScoreboardError(
                Code.ACTION_CONFLICT,
                "This actionId was already used for another user, other boards or other values.",
                field="actionId",
            )
        if result.outcome is Outcome.BLOCKED:
            raise ScoreboardError(Code.USER_BLOCKED, "This player is blocked from earning scores.")
        if result.outcome is Outcome.NOT_CREDITED:
            raise prepared.if_new or ScoreboardError(Code.INTERNAL_ERROR, "The update was not credited.")
        return result

    # -- seasons ---------------------------------------------------------

    async def end_season(self, board: str, season: int, audit: Audit | None = None) -> SeasonChange:
        """End `season` of `board` now (an admin's reset); raises season_conflict if not current."""
        if self.seasons is None:
            raise AssertionError("the service was built without seasons")
        return await self.seasons.force_end(board, season, audit)

    # -- reads -----------------------------------------------------------

    def _unavailable(self) -> ScoreboardError:
        return ScoreboardError(
            Code.STORAGE_UNAVAILABLE, "Storage is unavailable.", retry_after=self.retry_after_s
        )

    async def _season(self, hub: Hub, season: int | None) -> int:
        """`season`, checked to be kept (404 season_not_found), or the current one."""
        if season is None or season == hub.season:
            return hub.season
        if season < hub.season:
            try:
                if await self.store.season_started(hub.id, season) is not None:
                    return season
            except StorageError:
                raise self._unavailable() from None
        raise ScoreboardError(Code.SEASON_NOT_FOUND, f"Season {season} of board '{hub.id}' is not kept.")

    async def top(self, board: str, season: int | None = None) -> tuple[Hub, int, list[Entry] | None]:
        """A board's top K: None for the current season (the hub's encoded copy is current)."""
        hub = self.hubs.get(board)
        number = await self._season(hub, season)
        if number == hub.season:
            return hub, number, None
        try:
            return hub, number, await self.store.top(hub.id, number, hub.spec.top_k)
        except StorageError:
            raise self._unavailable() from None


def _log_unacknowledged(future: asyncio.Future[Result]) -> None:
    # ACK=memory: the client already has its 202, so a failure can only be
    # logged (conflicts are logged as events when their batch commits).
    if not future.cancelled() and future.exception() is not None:
        events.warning("unacknowledged_update_failed", extra={"fields": {"error": repr(future.exception())}})


def record_commit(hubs: Hubs, updates: Sequence[Update], batch: BatchResult) -> None:
    """Hand a committed batch's values to the hubs and log its events (the writer's on_commit)."""
    hubs.apply(batch)
    if not events.isEnabledFor(logging.INFO):
        return
    if batch.ledger:
        request_ids = {u.action_id: u.request_id for u in updates}
        sources = {u.action_id: u.source.value for u in updates}
        events.info(
            "score_credited",
            extra={
                "events": [
                    {
                        "request_id": request_ids.get(row.action_id),
                        "user_id": row.user_id,
                        "board": row.board,
                        "season": row.season,
                        "value": row.value,
                        "score_after": row.score_after,
                        "improved": row.improved,
                        "action_id": row.action_id,
                        "source": sources.get(row.action_id),
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


async def resync(hubs: Hubs, store: Store, now_s: int) -> None:
    """Reload every board from the store (after a storage outage)."""
    for hub in hubs:
        state = await store.ensure_board(hub.spec, now_s, hub.ends_at)
        hub.reload(state, await store.top(hub.id, state.season, hub.spec.top_k))
