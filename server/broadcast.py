"""Fan-out of board changes to every subscriber, without ever waiting for one.

Changes are coalesced: at most one diff per `tick_s`, none when the board
did not change, and a change on a quiet board goes out on the next loop
iteration instead of waiting for a tick. Each event is encoded once
(`feed.Event`) and the same bytes are written straight to every
subscriber's transport: publishing is a loop of synchronous writes.

Who is written to, who falls behind and who is closed is decided by the
pure state machine in `fanout.py`; this module is its asyncio driver: it
keeps the timers, does the writes, and applies the closes after each loop
over the subscribers, so a subscriber that unsubscribes or aborts from
inside `send_event` cannot disturb the others.

A subscriber whose outgoing buffer is above `high_water` bytes is behind: it
is skipped (its diffs are conflated away) and, once its buffer has drained
to `high_water // 4`, it is sent one fresh snapshot, so its memory stays
bounded and it still converges to the right board. One that stays behind for
`stuck_timeout_s` is closed (code 1013) and logged with its connection id;
one whose buffer exceeds `hard_limit` is closed at once (code 1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from .board import Entry
from .fanout import NOT_READING, TOO_SLOW, Close, Fanout, State
from .feed import Event, Feed, parse_since

# Close code for a subscriber that resumed from a position this process has
# not reached within the wait (1013: try again later, here or elsewhere).
TRY_AGAIN = 1013

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


class BoardView(Protocol):
    """What the broadcaster reads from the board (`board.Board`)."""

    @property
    def version(self) -> int:
        """Grows on every change."""
        ...

    def entries(self) -> tuple[Entry, ...]:
        """The board, best first."""
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


def _buffered(sub: Subscriber) -> int:
    return sub.buffered()


class Broadcaster:
    """Publishes the board's changes to subscribers: the asyncio driver of a `fanout.Fanout`.

    Limits: `tick_s` between diffs; `high_water` bytes of backlog before a
    subscriber is conflated; `stuck_timeout_s` before a conflated subscriber
    that does not drain is closed; `hard_limit` bytes of backlog (None: no
    limit) before a subscriber is closed as not reading.
    """

    def __init__(
        self,
        feed: Feed,
        board: BoardView,
        *,
        clock: Callable[[], float],
        tick_s: float = 0.05,
        high_water: int = 64 * 1024,
        stuck_timeout_s: float = 15.0,
        hard_limit: int | None = None,
        wait_ahead_s: float = 10.0,
    ) -> None:
        self.feed = feed
        self._board = board
        self._clock = clock
        self._tick = tick_s
        self._high_water = high_water
        self._fanout: Fanout[Subscriber] = Fanout(
            high_water=high_water, stuck_timeout_s=stuck_timeout_s, hard_limit=hard_limit
        )
        self._last_publish = float("-inf")
        self._published_version = board.version
        self._scheduled: asyncio.Handle | None = None
        self._catch_up: asyncio.TimerHandle | None = None
        # The commit version the board is at (its hub sets this).
        self.committed: Callable[[], int] = lambda: 0
        # Several processes: the feed follows the board's shared sequence
        # (`sequencer.Relay` hands over each step); this process makes no
        # diffs of its own.
        self.relayed = False
        # Subscribers that resumed from a position this process has not
        # reached yet, with when to give up on them.
        self._waiting: dict[Subscriber, tuple[str, float]] = {}
        self._wait_s = wait_ahead_s

    def __len__(self) -> int:
        return len(self._fanout)

    @property
    def behind(self) -> int:
        """Subscribers currently conflated."""
        return self._fanout.behind

    @property
    def deliveries(self) -> int:
        """Events written to subscribers."""
        return self._fanout.deliveries

    @property
    def conflations(self) -> int:
        """Times a subscriber fell behind and had diffs conflated away."""
        return self._fanout.conflations

    def subscribe(self, sub: Subscriber, since: str | None = None) -> None:
        """Add `sub` (again) and send what it needs to reach the current board.

        A change not yet published is published first, so `sub` never starts
        from a board older than the current one. Missed diffs larger in all
        than the buffer bound are replaced by one snapshot: a long absence
        must not flood the new connection. Following a shared sequence, a
        position ahead of this process's (another process sent it) waits
        until this process has caught up.
        """
        if self.relayed and since is not None and self._ahead(since):
            self._waiting[sub] = (since, self._clock() + self._wait_s)
            self._schedule_catch_up()
            return
        self.flush()
        self._fanout.add(sub)
        events = self.feed.since(since)
        if len(events) > 1 and sum(len(e.json) for e in events) > self._high_water:
            events = [self.feed.snapshot()]
        closes: list[Close[Subscriber] | None] = []
        written = 0
        try:
            for event in events:
                if self._fanout.state(sub) is not State.CURRENT:
                    break  # it aborted itself while being written to
                sub.send_event(event)
                written += 1
        except Exception:
            log.exception("send_failed", extra={"fields": {"conn_id": sub.conn_id}})
            closes.append(self._fanout.failed(sub))
        closes.append(self._fanout.sent(sub, _buffered, events=written))
        self._apply(closes)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Stop sending to `sub` (idempotent; safe from inside `send_event` or `abort`)."""
        self._waiting.pop(sub, None)
        self._fanout.remove(sub)

    def _ahead(self, since: str) -> bool:
        position = parse_since(since)
        return position is not None and position[0] == self.feed.epoch and position[1] > self.feed.seq

    def _release_waiting(self) -> None:
        """Subscribe those waiting for a position this process has reached; close those waiting too long."""
        if not self._waiting:
            return
        now = self._clock()
        for sub, (since, deadline) in list(self._waiting.items()):
            if not self._ahead(since):
                del self._waiting[sub]
                self.subscribe(sub, since)
            elif now >= deadline:
                del self._waiting[sub]
                log.warning("subscriber_ahead", extra={"fields": {"conn_id": sub.conn_id, "since": since}})
                sub.abort(TRY_AGAIN, "this server has not reached your position yet; reconnect")

    def board_changed(self) -> None:
        """Note that the board may have moved; publish now or at the next tick."""
        if self.relayed or self._board.version == self._published_version or self._scheduled is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_publish + self._tick - self._clock()
        if wait <= 0:
            self._scheduled = loop.call_soon(self._publish)
        else:
            self._scheduled = loop.call_later(wait, self._publish)

    def flush(self) -> None:
        """Publish now if the board moved since the last publish (instead of at the next tick)."""
        if self.relayed or self._board.version == self._published_version:
            return
        self._cancel_scheduled()
        self._publish()

    def publish_events(self, events: Sequence[Event]) -> None:
        """Send events the feed built (say, a season change and a snapshot) to every current subscriber.

        In order, under the same policy as diffs. The board's current version
        counts as published: no diff is made for it afterwards. Subscribers
        that are behind get the feed's snapshot when they catch up.
        """
        self._cancel_scheduled()
        self._published_version = self._board.version
        if not events:
            return
        self._last_publish = self._clock()
        for event in events:
            self._deliver(event)
        self._release_waiting()

    def close(self) -> None:
        """Cancel timers; subscribers are closed by their own handlers."""
        self._cancel_scheduled()
        if self._catch_up is not None:
            self._catch_up.cancel()
            self._catch_up = None

    # -- driving the state machine ------------------------------------------

    def _cancel_scheduled(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None

    def _publish(self) -> None:
        self._scheduled = None
        self._published_version = self._board.version
        event = self.feed.publish(self._board.entries(), self.committed())
        if event is None:
            return
        self._last_publish = self._clock()
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        """Write `event` to every subscriber the state machine picks, then apply its closes."""
        plan = self._fanout.publish(self._clock(), _buffered)
        closes: list[Close[Subscriber] | None] = [*plan.close, *self._write(event, plan.send)]
        self._apply(closes)
        if self._fanout.behind:
            self._schedule_catch_up()

    def _write(self, event: Event, subs: Iterable[Subscriber]) -> list[Close[Subscriber] | None]:
        """Write `event` to `subs`; what to close is returned, to be done after the loop."""
        closes: list[Close[Subscriber] | None] = []
        for sub in subs:
            # Gone or closing since the plan was made (e.g. it, or an earlier
            # subscriber, unsubscribed from inside send_event).
            if self._fanout.state(sub) is not State.CURRENT:
                continue
            try:
                sub.send_event(event)
            except Exception:  # one broken connection must not stop the others
                log.exception("send_failed", extra={"fields": {"conn_id": sub.conn_id}})
                closes.append(self._fanout.failed(sub))
            else:
                closes.append(self._fanout.sent(sub, _buffered))
        return closes

    def _apply(self, closes: Iterable[Close[Subscriber] | None]) -> None:
        """Close the subscribers the state machine gave up on, and forget them."""
        for close in closes:
            if close is None:
                continue
            sub = close.sub
            self._fanout.remove(sub)
            if close.code == TOO_SLOW:
                log.warning(
                    "subscriber_stuck",
                    extra={
                        "fields": {
                            "conn_id": sub.conn_id,
                            "buffered": sub.buffered(),
                            "behind_s": close.behind_s,
                        }
                    },
                )
            elif close.code == NOT_READING:
                log.warning(
                    "subscriber_not_reading",
                    extra={"fields": {"conn_id": sub.conn_id, "buffered": sub.buffered()}},
                )
            try:
                sub.abort(close.code, close.reason)
            except Exception:  # the others must still be closed
                log.exception("abort_failed", extra={"fields": {"conn_id": sub.conn_id}})

    def _schedule_catch_up(self) -> None:
        if self._catch_up is None:
            self._catch_up = asyncio.get_running_loop().call_later(self._tick, self._run_catch_up)

    def _run_catch_up(self) -> None:
        """Send a snapshot to conflated subscribers that drained; close stuck ones."""
        self._catch_up = None
        self._release_waiting()
        decision = self._fanout.catch_up(self._clock(), _buffered)
        closes: list[Close[Subscriber] | None] = list(decision.close)
        if decision.snapshot:
            closes += self._write(self.feed.snapshot(), decision.snapshot)
        self._apply(closes)
        if self._fanout.behind or self._waiting:
            self._schedule_catch_up()
