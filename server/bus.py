"""The bus: every process's committed values reach every other process's hubs.

Redis is the fast path, the database the truth. A process publishes each
value it commits (`changes.encode`, the bytes its transaction also stored in
the `changes` table) on one Redis channel; every process applies what it
hears through `Hubs.offer`, which applies each board's versions strictly in
order. Whatever Redis loses is read back from the database by version:

- a value that arrives ahead of a missing version (a lost or late message)
  makes its board catch up from the database after `repair_delay_s`;
- every `poll_s` each process reads the boards' versions and catches up any
  board behind, so a lost last message, a paused process or Redis being
  down costs at most one poll;
- when the kept values no longer reach back (a process paused past the
  retention), the board is reloaded from one snapshot and its ranks loaded
  again (`on_reload`).

While Redis is down, writes go on (they never wait for the bus) and every
process converges by polling; `state` says `down` until Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import changes
from .board import Entry
from .changes import Change
from .hub import Hub, Hubs
from .store import BoardState, StorageError

log = logging.getLogger("scoreboard.bus")


class ChangeLog(Protocol):
    """What the bus reads from the database (the PostgreSQL store)."""

    async def changes_since(self, board: str, version: int, limit: int) -> list[bytes]:
        """Encoded values of `board` after `version`, in order."""
        ...

    async def versions(self) -> dict[str, tuple[int, int]]:
        """Every board's `(season, version)`."""
        ...

    async def load_board(self, board: str, k: int) -> tuple[BoardState, list[Entry]]:
        """A board's row and top `k` from one snapshot."""
        ...

    async def prune_changes(self, older_than_s: int) -> int:
        """Forget values kept longer than needed."""
        ...

    async def refresh_blocks(self) -> None:
        """Reload the blocked players (blocks made by other processes)."""
        ...


class Bus:
    """Publishes this process's committed values and applies everyone else's, repairing from the database.

    Limits: `poll_s` between two reads of the board versions; `repair_delay_s`
    a gap may wait for a late message before the database is read;
    `batch_rows` values read at a time; `retention_s` how long the database
    keeps values (pruned every `prune_every_s`); `queue_max` values waiting
    to be published (beyond it they are dropped: the database has them).
    """

    def __init__(
        self,
        hubs: Hubs,
        log_store: ChangeLog,
        client: aioredis.Redis,
        *,
        prefix: str,
        on_reload: Callable[[Hub], None],
        poll_s: float = 1.0,
        repair_delay_s: float = 0.05,
        batch_rows: int = 1000,
        retention_s: float = 3600.0,
        prune_every_s: float = 60.0,
        queue_max: int = 10_000,
        reconnect_s: float = 0.2,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._hubs = hubs
        self._store = log_store
        self._redis = client
        self.channel = f"{prefix}:changes"
        self._on_reload = on_reload
        self._poll_s = poll_s
        self._repair_delay_s = repair_delay_s
        self._batch = batch_rows
        self._retention_s = retention_s
        self._prune_every_s = prune_every_s
        self._reconnect_s = reconnect_s
        self._close_timeout_s = close_timeout_s
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_max)
        self._locks: dict[str, asyncio.Lock] = {hub.id: asyncio.Lock() for hub in hubs}
        self._repairs: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._listening = False
        self._publishing_ok = True
        self.received = 0
        self.repaired = 0
        self.reloads = 0
        self.dropped = 0

    @property
    def state(self) -> str:
        """`up` while Redis carries values both ways, else `down` (the database still converges)."""
        return "up" if self._listening and self._publishing_ok else "down"

    def start(self) -> None:
        """Listen, publish and poll in the background."""
        loop = asyncio.get_running_loop()
        self._hubs.on_gap = self._gap
        self._hubs.publish = self.publish
        self._tasks = [
            loop.create_task(self._listen(), name="scoreboard-bus-listen"),
            loop.create_task(self._publisher(), name="scoreboard-bus-publish"),
            loop.create_task(self._poller(), name="scoreboard-bus-poll"),
        ]

    def publish(self, change: Change) -> None:
        """Send a value this process committed to the others (never waits)."""
        try:
            self._outbox.put_nowait(changes.encode(change))
        except asyncio.QueueFull:
            self.dropped += 1  # the others read it from the database at their next poll

    async def close(self) -> None:
        """Stop; idempotent."""
        self._hubs.on_gap = None
        self._hubs.publish = None
        for handle in self._repairs.values():
            handle.cancel()
        self._repairs.clear()
        tasks = [*self._tasks, *self._background]
        self._tasks = []
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self._close_timeout_s)
        if pending:
            log.warning("bus_close_timeout", extra={"fields": {"tasks": len(pending)}})
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("bus_task_stopped", extra={"fields": {"error": repr(task.exception())}})

    # -- catching up from the database ---------------------------------------

    async def catch_up(self, hub: Hub) -> None:
        """Apply every value of `hub`'s board the database has after the hub's version."""
        async with self._locks[hub.id]:
            while True:
                rows = await self._store.changes_since(hub.id, hub.version, self._batch)
                if not rows:
                    return
                values = [changes.decode(r) for r in rows]
                # The hub may have moved on while the rows were read (the bus
                # kept applying): only a first value beyond its next version
                # means the kept values no longer reach back.
                if values[0].version > hub.version + 1:
                    await self._reload(hub)
                    return
                for value in values:
                    hub.offer(value)
                self.repaired += len(values)
                if len(rows) < self._batch:
                    return

    async def _reload(self, hub: Hub) -> None:
        """The kept values no longer reach back to this hub: start again from one snapshot."""
        before = hub.version
        state, top = await self._store.load_board(hub.id, hub.spec.top_k)
        hub.reload(state, top)
        self.reloads += 1
        log.warning(
            "board_reloaded",
            extra={"fields": {"board": hub.id, "from_version": before, "version": hub.version}},
        )
        self._on_reload(hub)

    def _gap(self, hub: Hub) -> None:
        """A value came ahead of a missing one: wait briefly for it, then read the database."""
        if hub.id in self._repairs:
            return
        loop = asyncio.get_running_loop()
        self._repairs[hub.id] = loop.call_later(self._repair_delay_s, self._repair, hub)

    def _repair(self, hub: Hub) -> None:
        self._repairs.pop(hub.id, None)
        if hub.missing is None:
            return  # the late message came
        task = asyncio.get_running_loop().create_task(
            self._repair_now(hub), name=f"scoreboard-repair-{hub.id}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _repair_now(self, hub: Hub) -> None:
        try:
            await self.catch_up(hub)
        except (StorageError, ValueError) as exc:
            log.warning("bus_repair_failed", extra={"fields": {"board": hub.id, "error": repr(exc)}})

    async def catch_up_all(self) -> None:
        """Catch every board up with the database (the poll, and after Redis comes back)."""
        versions = await self._store.versions()
        for hub in self._hubs:
            found = versions.get(hub.id)
            if found is not None and found[1] > hub.version:
                await self.catch_up(hub)

    async def _poller(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.catch_up_all()
                await self._store.refresh_blocks()
                if time.monotonic() - last_prune >= self._prune_every_s:
                    last_prune = time.monotonic()
                    await self._store.prune_changes(int(time.time() - self._retention_s))
            except (StorageError, ValueError) as exc:
                log.warning("bus_poll_failed", extra={"fields": {"error": repr(exc)}})
            if not self._publishing_ok:
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.ping()
                    self._set_publishing(True)

    # -- Redis ----------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._set_listening(True)
                # Whatever was published while not subscribed is in the database.
                await self._catch_up_quietly()
                while True:
                    message = await pubsub.get_message(timeout=self._poll_s)
                    if message is None or message.get("type") != "message":
                        continue
                    self.received += 1
                    try:
                        value = changes.decode(message["data"])
                    except ValueError as exc:
                        log.warning("bus_message_refused", extra={"fields": {"error": str(exc)}})
                        continue
                    self._hubs.offer(value)
            except (RedisError, OSError) as exc:
                if self._listening:
                    log.warning("bus_down", extra={"fields": {"error": repr(exc)}})
                self._set_listening(False)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._reconnect_s)

    async def _catch_up_quietly(self) -> None:
        try:
            await self.catch_up_all()
        except (StorageError, ValueError) as exc:
            log.warning("bus_poll_failed", extra={"fields": {"error": repr(exc)}})

    async def _publisher(self) -> None:
        while True:
            data = [await self._outbox.get()]
            while not self._outbox.empty() and len(data) < 256:
                data.append(self._outbox.get_nowait())
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for item in data:
                        pipe.publish(self.channel, item)
                    await pipe.execute()
                self._set_publishing(True)
            except (RedisError, OSError) as exc:
                # Lost for the bus, not for the others: they read these values
                # from the database at their next poll.
                self.dropped += len(data)
                if self._publishing_ok:
                    log.warning("bus_publish_failed", extra={"fields": {"error": repr(exc)}})
                self._set_publishing(False)

    def _set_listening(self, up: bool) -> None:
        was = self.state
        self._listening = up
        self._log_state(was)

    def _set_publishing(self, up: bool) -> None:
        was = self.state
        self._publishing_ok = up
        self._log_state(was)

    def _log_state(self, was: str) -> None:
        if self.state != was:
            log.info("bus_state", extra={"fields": {"state": self.state, "was": was}})


def redis_client(url: str, *, timeout_s: float) -> aioredis.Redis:
    """A Redis client for the bus, the sequencers and the rate limits (connects lazily)."""
    return aioredis.Redis.from_url(
        url,
        # Names this process's connections in CLIENT LIST (operators, tests).
        client_name=f"scoreboard-{os.getpid()}",
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=max(1, int(timeout_s)),
    )
