"""Fan-out policy: which board subscribers are sent an event, which fall behind, which are closed.

Pure and sans-I/O, like h11's `_state.py`: every state a subscriber can be in
and every rule that moves it lives in this module. The caller (the driver,
`broadcast.Broadcaster`) passes in the time and a way to read each
subscriber's buffered byte count, gets back plain decisions, and does the
writing and closing itself. Nothing here calls into a subscriber, so a
subscriber that unsubscribes while the driver writes to others cannot upset
a decision in progress.

States and transitions (`add` enters CURRENT from anywhere; `remove` leaves
from anywhere, at any time, and is idempotent)::

    CURRENT --publish: buffer > high_water----------> BEHIND (since now)
    CURRENT --publish or sent: buffer > hard_limit--> CLOSING 1008 "not reading"
    CURRENT --failed: the write raised--------------> CLOSING 1011 "send failed"
    BEHIND  --catch_up: buffer <= high_water // 4---> CURRENT, sent one snapshot
    BEHIND  --catch_up: buffer > hard_limit---------> CLOSING 1008 "not reading"
    BEHIND  --catch_up: behind > stuck_timeout_s----> CLOSING 1013 "subscriber too slow"

A CLOSING subscriber is sent nothing more; the driver closes it and then
removes it. A BEHIND subscriber is skipped (its diffs are conflated away)
and converges through the one snapshot it is sent once it has drained, so
its memory stays bounded by the high-water mark plus one event.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

# Any hashable object (a dict key); not bound to `Hashable`, which protocols
# such as `broadcast.Subscriber` do not declare.
S = TypeVar("S")

NOT_READING = 1008
SEND_FAILED = 1011
TOO_SLOW = 1013


class State(enum.Enum):
    """Where a subscriber stands."""

    CURRENT = "current"
    """Sent every published event."""
    BEHIND = "behind"
    """Skipped until its buffer drains to the low-water mark."""
    CLOSING = "closing"
    """To be closed by the driver; sent nothing more."""


@dataclass(frozen=True, slots=True)
class Close(Generic[S]):
    """A decision to close `sub` with a WebSocket close `code` and `reason`.

    `behind_s` is how long it had been behind, when that is why it is closed.
    """

    sub: S
    code: int
    reason: str
    behind_s: float | None = None


@dataclass(frozen=True, slots=True)
class Publish(Generic[S]):
    """What to do with one published event.

    Write the event to each of `send`, in order, and report each write with
    `Fanout.sent` or `Fanout.failed`; skip one whose state is no longer
    CURRENT by the time its turn comes (it was removed or closed meanwhile).
    `fell_behind` are now BEHIND (for logs and metrics: nothing to do);
    `close` are now CLOSING and must be closed.
    """

    send: tuple[S, ...]
    fell_behind: tuple[S, ...]
    close: tuple[Close[S], ...]


@dataclass(frozen=True, slots=True)
class CatchUp(Generic[S]):
    """What to do with the subscribers that were behind.

    `snapshot` drained and are CURRENT again: write one fresh snapshot to
    each (reported like any write). `close` are now CLOSING.
    """

    snapshot: tuple[S, ...]
    close: tuple[Close[S], ...]


class Fanout(Generic[S]):
    """The state of every subscriber of one board and the rules that change it.

    Limits: over `high_water` buffered bytes a subscriber is BEHIND and
    skipped; once drained to `high_water // 4` it is sent a snapshot; over
    `hard_limit` bytes (None: no such limit) it is closed (1008); BEHIND for
    longer than `stuck_timeout_s` it is closed (1013).

    `buffered(sub)`, passed to the transitions that look at buffers, returns
    the bytes written to `sub` but not yet taken by its peer. It may remove
    subscribers (its own or others) without harm.
    """

    def __init__(
        self,
        *,
        high_water: int = 64 * 1024,
        stuck_timeout_s: float = 15.0,
        hard_limit: int | None = None,
    ) -> None:
        if high_water < 0:
            raise ValueError("high_water must be >= 0")
        if stuck_timeout_s < 0:
            raise ValueError("stuck_timeout_s must be >= 0")
        if hard_limit is not None and hard_limit < 0:
            raise ValueError("hard_limit must be >= 0 or None")
        self.high_water = high_water
        self.low_water = high_water // 4
        self.hard_limit = hard_limit
        self.stuck_timeout_s = stuck_timeout_s
        self._states: dict[S, State] = {}
        # BEHIND subscribers -> monotonic time they fell behind; kept apart so
        # that catching up looks only at them, not at every subscriber.
        self._since: dict[S, float] = {}
        self._deliveries = 0
        self._conflations = 0

    # -- reading ----------------------------------------------------------

    def __len__(self) -> int:
        """Subscribers in any state (CLOSING ones until they are removed)."""
        return len(self._states)

    def __contains__(self, sub: object) -> bool:
        return sub in self._states

    def state(self, sub: S) -> State | None:
        """`sub`'s state, or None if it is not subscribed."""
        return self._states.get(sub)

    def behind_since(self, sub: S) -> float | None:
        """When `sub` fell behind, if it is BEHIND."""
        return self._since.get(sub)

    @property
    def behind(self) -> int:
        """Subscribers currently BEHIND."""
        return len(self._since)

    @property
    def deliveries(self) -> int:
        """Events reported written with `sent` (including those of subscribers gone since)."""
        return self._deliveries

    @property
    def conflations(self) -> int:
        """Times a subscriber fell behind and had events conflated away."""
        return self._conflations

    # -- transitions ------------------------------------------------------

    def add(self, sub: S) -> None:
        """Subscribe `sub` (again): it is CURRENT, whatever it was before."""
        self._since.pop(sub, None)
        self._states[sub] = State.CURRENT

    def remove(self, sub: S) -> bool:
        """Forget `sub`; True if it was subscribed. Safe at any time, also re-entrantly."""
        self._since.pop(sub, None)
        return self._states.pop(sub, None) is not None

    def publish(self, now: float, buffered: Callable[[S], int]) -> Publish[S]:
        """Decide who is sent the next event: each CURRENT subscriber not over the high water.

        One over `high_water` is BEHIND from `now` on; one over `hard_limit`
        is CLOSING. BEHIND and CLOSING subscribers are not looked at.
        """
        send: list[S] = []
        fell_behind: list[S] = []
        close: list[Close[S]] = []
        # A copy: `buffered` may remove subscribers while we iterate.
        for sub in list(self._states):
            if self._states.get(sub) is not State.CURRENT:
                continue
            size = buffered(sub)
            if self._states.get(sub) is not State.CURRENT:
                continue
            if self._over_hard_limit(size):
                close.append(self._close(sub, NOT_READING, "not reading"))
            elif size > self.high_water:
                self._states[sub] = State.BEHIND
                self._since[sub] = now
                self._conflations += 1
                fell_behind.append(sub)
            else:
                send.append(sub)
        return Publish(tuple(send), tuple(fell_behind), tuple(close))

    def sent(self, sub: S, buffered: Callable[[S], int], *, events: int = 1) -> Close[S] | None:
        """Record that `events` events were written to `sub`; close it if now over the hard limit.

        Counted even if `sub` was removed while it was written to (the bytes
        were handed over); its buffer is then not looked at.
        """
        self._deliveries += events
        state = self._states.get(sub)
        if state is None or state is State.CLOSING or self.hard_limit is None:
            return None
        size = buffered(sub)
        if self._states.get(sub) in (None, State.CLOSING):
            return None
        if self._over_hard_limit(size):
            return self._close(sub, NOT_READING, "not reading")
        return None

    def failed(self, sub: S) -> Close[S] | None:
        """Record that writing to `sub` raised: it is CLOSING (None if already gone or closing)."""
        if self._states.get(sub) in (None, State.CLOSING):
            return None
        return self._close(sub, SEND_FAILED, "send failed")

    def catch_up(self, now: float, buffered: Callable[[S], int]) -> CatchUp[S]:
        """Look at the BEHIND subscribers: drained ones are CURRENT again, stuck ones CLOSING.

        Call it every so often while `behind` is not zero (the driver's tick).
        """
        snapshot: list[S] = []
        close: list[Close[S]] = []
        for sub in list(self._since):
            if sub not in self._since:
                continue  # removed by `buffered` for an earlier one
            size = buffered(sub)
            since = self._since.get(sub)
            if since is None:
                continue  # removed by `buffered`
            if size <= self.low_water:
                del self._since[sub]
                self._states[sub] = State.CURRENT
                snapshot.append(sub)
            elif self._over_hard_limit(size):
                close.append(self._close(sub, NOT_READING, "not reading"))
            elif now - since > self.stuck_timeout_s:
                close.append(self._close(sub, TOO_SLOW, "subscriber too slow", behind_s=now - since))
        return CatchUp(tuple(snapshot), tuple(close))

    # -- helpers ----------------------------------------------------------

    def _over_hard_limit(self, size: int) -> bool:
        return self.hard_limit is not None and size > self.hard_limit

    def _close(self, sub: S, code: int, reason: str, *, behind_s: float | None = None) -> Close[S]:
        self._since.pop(sub, None)
        self._states[sub] = State.CLOSING
        return Close(sub, code, reason, behind_s)
