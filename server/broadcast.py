"""Fan-out of board changes to every subscriber, without ever waiting for one.

Changes are coalesced: at most one diff per `tick_s`, none when the board
did not change, and a change on a quiet board goes out on the next loop
iteration instead of waiting for a tick. Each event is encoded once
(`feed.Event`) and the same bytes are written straight to every
subscriber's transport: publishing is a loop of synchronous writes.

A subscriber whose outgoing buffer is above `high_water` bytes is behind: it
is skipped (its diffs are conflated away) and, once its buffer has drained
below `high_water / 4`, it is sent one fresh snapshot, so its memory stays
bounded and it still converges to the right board. One that stays behind for
`stuck_timeout_s` is closed (code 1013) and logged with its connection id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from .board import Board
from .feed import Event, Feed

log = logging.getLogger("scoreboard.broadcast")


class Subscriber(Protocol):
    """A connection that receives board events (a WebSocket or an SSE stream)."""

    @property
    def conn_id(self) -> str:
        """Identifies the connection in logs."""
        ...

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer's socket."""
        ...

    def send_event(self, event: Event) -> None:
        """Write `event` in this transport's encoding; never blocks."""
        ...

    def abort(self, code: int, reason: str) -> None:
        """Close the connection now (it is stuck); never blocks."""
        ...


def limit_send_buffer(transport: asyncio.BaseTransport, nbytes: int) -> None:
    """Cap the kernel's send buffer of a streaming connection (0: leave it to the kernel).

    Linux grows a socket's send buffer to megabytes when the peer does not
    read; capping it keeps a stuck subscriber's memory small and lets the
    broadcaster see the backlog (and conflate) early.
    """
    sock = transport.get_extra_info("socket")
    if nbytes > 0 and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, nbytes)


class Broadcaster:
    """Publishes the board's changes to subscribers.

    Limits: `tick_s` between diffs; `high_water` bytes of backlog before a
    subscriber is conflated; `stuck_timeout_s` before a conflated subscriber
    that does not drain is closed.
    """

    def __init__(
        self,
        feed: Feed,
        board: Board,
        *,
        clock: Callable[[], float],
        tick_s: float = 0.05,
        high_water: int = 64 * 1024,
        stuck_timeout_s: float = 15.0,
    ) -> None:
        self.feed = feed
        self._board = board
        self._clock = clock
        self._tick = tick_s
        self._high_water = high_water
        self._low_water = high_water // 4
        self._stuck_timeout = stuck_timeout_s
        # subscriber -> monotonic time it fell behind, or None when current
        self._subs: dict[Subscriber, float | None] = {}
        self._behind = 0
        self._last_publish = float("-inf")
        self._published_version = board.version
        self._scheduled: asyncio.Handle | None = None
        self._catch_up: asyncio.TimerHandle | None = None
        self.deliveries = 0
        self.conflations = 0

    def __len__(self) -> int:
        return len(self._subs)

    @property
    def behind(self) -> int:
        """Subscribers currently conflated."""
        return self._behind

    def subscribe(self, sub: Subscriber, since: str | None = None) -> None:
        """Add `sub` (again) and send what it needs to reach the current board.

        Missed diffs larger in all than the buffer bound are replaced by one
        snapshot: a long absence must not flood the new connection.
        """
        self._forget(sub)
        self._subs[sub] = None
        events = self.feed.since(since)
        if len(events) > 1 and sum(len(e.json) for e in events) > self._high_water:
            events = [self.feed.snapshot()]
        for event in events:
            sub.send_event(event)
            self.deliveries += 1

    def unsubscribe(self, sub: Subscriber) -> None:
        """Stop sending to `sub` (idempotent)."""
        self._forget(sub)

    def _forget(self, sub: Subscriber) -> None:
        if sub in self._subs and self._subs.pop(sub) is not None:
            self._behind -= 1

    def board_changed(self) -> None:
        """Note that the board may have moved; publish now or at the next tick."""
        if self._board.version == self._published_version or self._scheduled is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_publish + self._tick - self._clock()
        if wait <= 0:
            self._scheduled = loop.call_soon(self._publish)
        else:
            self._scheduled = loop.call_later(wait, self._publish)

    def _publish(self) -> None:
        self._scheduled = None
        self._published_version = self._board.version
        event = self.feed.publish(self._board.entries())
        if event is None:
            return
        now = self._clock()
        self._last_publish = now
        high = self._high_water
        sent = fell_behind = 0
        failed: list[Subscriber] = []
        for sub, behind_since in self._subs.items():
            if behind_since is not None:
                continue
            if sub.buffered() > high:
                self._subs[sub] = now
                fell_behind += 1
                continue
            try:
                sub.send_event(event)
            except Exception:  # one broken connection must not stop the others
                log.exception("send_failed", extra={"fields": {"conn_id": sub.conn_id}})
                failed.append(sub)
            else:
                sent += 1
        # Aborting unsubscribes, which must not happen while iterating.
        for sub in failed:
            self.unsubscribe(sub)
            sub.abort(1011, "send failed")
        self.deliveries += sent
        self._behind += fell_behind
        self.conflations += fell_behind
        if self._behind:
            self._schedule_catch_up()

    def _schedule_catch_up(self) -> None:
        if self._catch_up is None:
            self._catch_up = asyncio.get_running_loop().call_later(self._tick, self._run_catch_up)

    def _run_catch_up(self) -> None:
        """Send a snapshot to conflated subscribers that drained; close stuck ones."""
        self._catch_up = None
        now = self._clock()
        snapshot: Event | None = None
        for sub, since in list(self._subs.items()):
            if since is None:
                continue
            if sub.buffered() <= self._low_water:
                snapshot = snapshot or self.feed.snapshot()
                self._subs[sub] = None
                self._behind -= 1
                sub.send_event(snapshot)
                self.deliveries += 1
            elif now - since > self._stuck_timeout:
                log.warning(
                    "subscriber_stuck",
                    extra={
                        "fields": {
                            "conn_id": sub.conn_id,
                            "buffered": sub.buffered(),
                            "behind_s": now - since,
                        }
                    },
                )
                self.unsubscribe(sub)
                sub.abort(1013, "subscriber too slow")
        if self._behind:
            self._schedule_catch_up()

    def close(self) -> None:
        """Cancel timers; subscribers are closed by their own handlers."""
        for handle in (self._scheduled, self._catch_up):
            if handle is not None:
                handle.cancel()
        self._scheduled = self._catch_up = None
