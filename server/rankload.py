"""Loading every board's ranks into memory, in the background.

At start-up the server serves the top K and takes updates as soon as the
top K is read; the full ranks (a million players take about a second) come
after, one board at a time, from one snapshot of the store per board while
commits keep flowing (`RankIndex` replays the ones the snapshot missed).
Until a board's ranks are in, its rank reads are answered by the store. A
failed load is retried with backoff; a storage outage's recovery starts
every load again, as the boards themselves are reloaded then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .hub import Hub, Hubs
from .store import Store

log = logging.getLogger("scoreboard.ranks")


class RankLoader:
    """Fills each hub's `RankIndex` from the store; one task per board."""

    def __init__(
        self,
        hubs: Hubs,
        store: Store,
        *,
        chunk_rows: int = 5000,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        self._hubs = hubs
        self._store = store
        self._chunk = chunk_rows
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def state(self) -> str:
        """`memory` (every board's ranks in memory), `loading`, or `store` (ranks kept off)."""
        indexes = [hub.index for hub in self._hubs if hub.index is not None]
        if not indexes:
            return "store"
        return "memory" if all(index.ready for index in indexes) else "loading"

    def start(self, board: str | None = None) -> None:
        """(Re)load every board's ranks, or `board`'s."""
        for hub in self._hubs:
            if hub.index is None or board not in (None, hub.id):
                continue
            old = self._tasks.pop(hub.id, None)
            if old is not None:
                old.cancel()
            self._tasks[hub.id] = asyncio.get_running_loop().create_task(
                self._load(hub), name=f"scoreboard-ranks-{hub.id}"
            )

    async def _load(self, hub: Hub) -> None:
        index = hub.index
        if index is None:
            return
        delay = self._retry_s
        while True:
            token = index.start_load()
            started = time.perf_counter()
            season = hub.season
            snapshot = index.snapshot()
            version: int | None = None
            try:
                async with contextlib.aclosing(self._store.scan(hub.id, season, self._chunk)) as chunks:
                    async for chunk in chunks:
                        version = chunk.version
                        snapshot.add(chunk.rows)
                        await asyncio.sleep(0)  # other requests between chunks
            except asyncio.CancelledError:
                index.abandon_load(token)
                raise
            except Exception as exc:  # an outage (StorageError) or a driver's complaint
                index.abandon_load(token)
                log.warning("rank_load_failed", extra={"fields": {"board": hub.id, "error": repr(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_s)
                continue
            if version is None:
                # The season changed under the load: a new season's ranks are
                # complete (empty) at once; otherwise the store is ahead of
                # this hub, and its recovery reloads everything.
                index.abandon_load(token)
                return
            index.finish_load(token, snapshot, version)
            log.info(
                "ranks_loaded",
                extra={
                    "fields": {
                        "board": hub.id,
                        "season": season,
                        "players": len(snapshot),
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                    }
                },
            )
            return

    async def close(self) -> None:
        """Stop every load; idempotent."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        # A load cancelled inside a driver call may fail its cleanup with the
        # driver's own error (asyncpg releasing a busy connection): it is
        # stopped all the same, and closing goes on.
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.debug("rank_load_stopped", extra={"fields": {"error": repr(outcome)}})
