"""Season ends: scheduled, caught up at start, and forced by an operator.

Every end goes through the writer (`Writer.run_job`, or its hook before each
batch), so it is serialised with the batches: an update counts in the season
current when its batch commits, and in exactly one season. A scheduled end
at instant E is recorded as ending at E (also when the server was down then:
at start every end that has passed is replayed in order), and the next
season ends at the schedule's next instant after E. A forced end does not
move the schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping

from .errors import Code, ScoreboardError
from .hub import Hub, Hubs
from .schedule import Schedule
from .store import Audit, SeasonChange, StorageError, Store
from .writer import Writer

log = logging.getLogger("scoreboard.seasons")


class Seasons:
    """Ends seasons on time, and on request.

    Limits: `max_sleep_s` bounds how long the timer sleeps before looking
    again (a wall clock that jumps is noticed within it).
    """

    def __init__(
        self,
        hubs: Hubs,
        store: Store,
        schedules: Mapping[str, Schedule | None],
        *,
        clock: Callable[[], float],
        max_sleep_s: float = 30.0,
        sync: Callable[[Hub], Awaitable[None]] | None = None,
    ) -> None:
        self._hubs = hubs
        self._store = store
        self._schedules = dict(schedules)
        self._clock = clock
        self._max_sleep = max_sleep_s
        # How a hub catches up when another process ended its season (with
        # several processes: the bus, in version order; else a reload).
        self._sync = sync
        self._writer: Writer | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.ended = 0

    def _next_end(self, hub: Hub, after: int) -> int | None:
        schedule = self._schedules.get(hub.id)
        return None if schedule is None else schedule.next_after(after)

    async def roll_due(self) -> None:
        """End every season whose scheduled end has passed (the writer runs this before each batch)."""
        now = self._clock()
        for hub in self._hubs:
            while hub.ends_at is not None and hub.ends_at <= now:
                ended_at = hub.ends_at
                change = await self._store.end_season(
                    hub.spec, hub.season, ended_at, self._next_end(hub, ended_at)
                )
                if change is None:
                    # Another process ended it: take the board's state as stored.
                    season = hub.season
                    await self._reload(hub)
                    if hub.season == season:  # not ended after all: never spin
                        raise StorageError(f"season {season} of {hub.id!r} could not be ended")
                    continue
                self._apply(change)

    def _apply(self, change: SeasonChange) -> None:
        self._hubs.season_changed(change)
        self.ended += 1
        log.info(
            "season_ended",
            extra={
                "fields": {
                    "board": change.board,
                    "ended_season": change.ended,
                    "season": change.season,
                    "ends_at": change.ends_at,
                }
            },
        )
        self._wake.set()

    async def _reload(self, hub: Hub) -> None:
        if self._sync is not None:
            await self._sync(hub)
            return
        state = await self._store.ensure_board(hub.spec, math.floor(self._clock()), hub.ends_at)
        hub.reload(state, await self._store.top(hub.id, state.season, hub.spec.top_k))

    async def force_end(self, board: str, season: int, audit: Audit | None = None) -> SeasonChange:
        """End `season` of `board` now (an operator's reset); raises season_conflict if not current."""
        hub = self._hubs.get(board)
        writer = self._require_writer()

        async def end() -> SeasonChange:
            await self.roll_due()
            if season != hub.season:
                raise ScoreboardError(
                    Code.SEASON_CONFLICT,
                    f"Season {season} of board '{board}' is not the current one ({hub.season}).",
                    field="season",
                )
            change = await self._store.end_season(
                hub.spec, season, math.floor(self._clock()), hub.ends_at, audit
            )
            if change is None:
                await self._reload(hub)
                raise ScoreboardError(
                    Code.SEASON_CONFLICT,
                    f"Season {season} of board '{board}' has already ended.",
                    field="season",
                )
            self._apply(change)
            return change

        try:
            return await writer.run_job(end)
        except StorageError:
            raise ScoreboardError(
                Code.STORAGE_UNAVAILABLE, "Storage is unavailable; the season did not end.", retry_after=1
            ) from None

    def _require_writer(self) -> Writer:
        if self._writer is None:
            raise AssertionError("Seasons.start() was not called")
        return self._writer

    def start(self, writer: Writer) -> None:
        """Start the timer that wakes the writer at each scheduled end."""
        self._writer = writer
        if self._task is None and any(s is not None for s in self._schedules.values()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scoreboard-seasons")

    async def _run(self) -> None:
        writer = self._require_writer()
        while True:
            ends = [hub.ends_at for hub in self._hubs if hub.ends_at is not None]
            wait = self._max_sleep if not ends else min(ends) - self._clock()
            if wait > 0:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows
                # a cancellation that arrives as the event is set.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait, self._max_sleep)):
                        await self._wake.wait()
                continue
            try:
                await writer.run_job(self.roll_due)
            except (ScoreboardError, StorageError) as err:  # storage down or shutting down
                log.info("season_end_deferred", extra={"fields": {"error": repr(err)}})
                await asyncio.sleep(min(1.0, self._max_sleep))
            except Exception:
                log.exception("season_end_failed")
                await asyncio.sleep(min(1.0, self._max_sleep))

    async def close(self) -> None:
        """Stop the timer; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
