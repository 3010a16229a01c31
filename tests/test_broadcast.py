"""The broadcaster with in-process subscribers (the transports are tested over real sockets elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import orjson
import pytest

from scoreboard.board import Board, Entry
from scoreboard.broadcast import Broadcaster
from scoreboard.feed import DIFF, SNAPSHOT, Event, Feed


class Recorder:
    """A subscriber that records the events it was sent; it may be told to fail.

    `buffer` is what `buffered()` reports; `grow` bytes are added to it per
    event, as a peer that does not read would let them pile up. `on_send`
    runs inside `send_event`, after the write.
    """

    def __init__(
        self,
        name: str,
        broadcaster: Broadcaster | None = None,
        *,
        fail: bool = False,
        grow: int = 0,
        on_send: Callable[[Recorder, Event], None] | None = None,
    ) -> None:
        self.conn_id = name
        self.events: list[Event] = []
        self.aborted: int | None = None
        self.buffer = 0
        self._fail = fail
        self._grow = grow
        self._on_send = on_send
        self._broadcaster = broadcaster

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]

    def buffered(self) -> int:
        return self.buffer

    def send_event(self, event: Event) -> None:
        if self._fail and event.kind == DIFF:
            raise ConnectionResetError("peer vanished")
        self.events.append(event)
        self.buffer += self._grow
        if self._on_send is not None:
            self._on_send(self, event)

    def abort(self, code: int, reason: str) -> None:
        self.aborted = code
        if self._broadcaster is not None:  # as a WebSocket connection does
            self._broadcaster.unsubscribe(self)


class FakeClock:
    """A clock that only moves when told to (tests.helpers has one too, but imports the whole app)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def user(n: int, score: int) -> Entry:
    return Entry(f"u{n}", f"user {n}", score, score * 1000 + n)


async def change_and_publish(board: Board, broadcaster: Broadcaster, entry: Entry) -> None:
    """Change the board and let the broadcaster publish the change (a quiet board: next iteration)."""
    board.apply(entry)
    broadcaster.board_changed()
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_failing_subscriber_does_not_cost_the_others_their_events() -> None:
    board = Board(3)
    broadcaster = Broadcaster(Feed("ep", board.entries()), board, clock=time.monotonic, tick_s=0.001)
    broken = Recorder("broken", broadcaster, fail=True)
    others = [Recorder(f"ok{i}") for i in range(3)]
    for sub in (broken, *others):
        broadcaster.subscribe(sub)
    board.apply(Entry("a", "a", 1, 1))
    broadcaster.board_changed()
    await asyncio.sleep(0.01)
    assert [o.seqs for o in others] == [[0, 1]] * 3
    assert broken.aborted == 1011
    assert len(broadcaster) == 3


async def test_subscribers_leaving_from_inside_send_event_cost_the_others_nothing() -> None:
    """Regression: unsubscribing re-entrantly used to change the dict being iterated.

    The publish loop died with RuntimeError and the subscribers after the
    leaver never got that diff (a gap in their seqs).
    """
    board = Board(5)
    clock = FakeClock(0.0)
    broadcaster = Broadcaster(Feed("ep", board.entries()), board, clock=clock, tick_s=0.0)
    seen: list[Recorder] = []

    def abort_on_second_diff(sub: Recorder, event: Event) -> None:
        if event.seq == 2:  # as a WebSocket that went over its own buffer limit
            sub.abort(1008, "not reading")

    def leave_on_first_diff(sub: Recorder, event: Event) -> None:
        if event.seq == 1:
            broadcaster.unsubscribe(sub)

    def drop_the_next_one(sub: Recorder, event: Event) -> None:
        if event.seq == 3:
            broadcaster.unsubscribe(victim)
        seen.append(sub)

    # The leavers come first, so that the others are iterated after them.
    aborter = Recorder("aborter", broadcaster, on_send=abort_on_second_diff)
    leaver = Recorder("leaver", broadcaster, on_send=leave_on_first_diff)
    dropper = Recorder("dropper", broadcaster, on_send=drop_the_next_one)
    victim = Recorder("victim", broadcaster)
    others = [Recorder(f"ok{i}", broadcaster) for i in range(3)]
    for sub in (aborter, leaver, dropper, victim, *others):
        broadcaster.subscribe(sub)
    for n in range(1, 6):
        await change_and_publish(board, broadcaster, user(n, n))
    assert broadcaster.feed.seq == 5
    assert [o.seqs for o in others] == [[0, 1, 2, 3, 4, 5]] * 3
    assert dropper.seqs == [0, 1, 2, 3, 4, 5]
    assert aborter.seqs == [0, 1, 2] and aborter.aborted == 1008
    assert leaver.seqs == [0, 1] and leaver.aborted is None
    assert victim.seqs == [0, 1, 2]  # removed before its turn came: not written to
    assert len(broadcaster) == 4
    broadcaster.close()


async def test_a_subscriber_over_the_hard_limit_is_closed_after_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="scoreboard.broadcast")
    board = Board(5)
    broadcaster = Broadcaster(
        Feed("ep", board.entries()),
        board,
        clock=FakeClock(0.0),
        tick_s=0.0,
        high_water=1000,
        hard_limit=150,
    )
    hog = Recorder("hog", broadcaster, grow=100)
    others = [Recorder(f"ok{i}", broadcaster) for i in range(3)]
    for sub in (hog, *others):
        broadcaster.subscribe(sub)
    for n in range(1, 4):
        await change_and_publish(board, broadcaster, user(n, n))
    assert hog.seqs == [0, 1] and hog.aborted == 1008
    assert [o.seqs for o in others] == [[0, 1, 2, 3]] * 3
    assert len(broadcaster) == 3
    assert [r.fields["conn_id"] for r in caplog.records if r.getMessage() == "subscriber_not_reading"] == [  # type: ignore[attr-defined]
        "hog"
    ]
    broadcaster.close()


async def test_subscribe_publishes_a_pending_change_first() -> None:
    board = Board(5)
    clock = FakeClock(0.0)  # never moves: the tick is always a whole `tick_s` away
    broadcaster = Broadcaster(Feed("ep", board.entries()), board, clock=clock, tick_s=60.0)
    early = Recorder("early")
    broadcaster.subscribe(early)
    await change_and_publish(board, broadcaster, user(1, 10))  # quiet board: out at once
    board.apply(user(2, 20))
    broadcaster.board_changed()  # waits for the tick, a minute away
    await asyncio.sleep(0)
    assert early.seqs == [0, 1]

    late = Recorder("late")
    broadcaster.subscribe(late)
    assert [(e.kind, e.seq) for e in late.events] == [(SNAPSHOT, 2)]
    top = orjson.loads(late.events[0].json)["topUsers"]
    assert [(u["userId"], u["score"]) for u in top] == [("u2", 20), ("u1", 10)]
    # The existing subscriber got the change as a diff, before the newcomer's snapshot.
    assert early.seqs == [0, 1, 2]
    # The scheduled publish was cancelled: nothing more to send, now or later.
    broadcaster.board_changed()
    await asyncio.sleep(0.01)
    assert early.seqs == [0, 1, 2] and late.seqs == [2]
    broadcaster.flush()  # nothing pending: a no-op
    assert broadcaster.feed.seq == 2
    broadcaster.close()


class CountingFeed(Feed):
    """A feed that counts how often the broadcaster asks it for a diff."""

    def __init__(self, epoch: str, board: Sequence[Entry]) -> None:
        super().__init__(epoch, board)
        self.publishes = 0

    def publish(self, board: Sequence[Entry], version: int = 0) -> Event | None:
        self.publishes += 1
        return super().publish(board, version)


async def test_publish_events_sends_prebuilt_events_in_order_and_counts_the_version_published() -> None:
    board = Board(5, [user(1, 10)])
    clock = FakeClock(0.0)
    feed = CountingFeed("ep", board.entries())
    broadcaster = Broadcaster(feed, board, clock=clock, tick_s=0.01, high_water=1000)
    current = [Recorder(f"ok{i}", broadcaster) for i in range(2)]
    slow = Recorder("slow", broadcaster)
    for sub in (*current, slow):
        broadcaster.subscribe(sub)
    slow.buffer = 5000  # over the high water: conflated from now on

    # A new season: the board is replaced, and the feed builds the events for it.
    board.replace([user(7, 1)])
    broadcaster.board_changed()
    feed.publish(board.entries())
    season = Event("scoreboard:season", feed.epoch, feed.seq, b'{"type":"scoreboard:season"}')
    broadcaster.publish_events([season, feed.snapshot()])
    for sub in current:
        assert [(e.kind, e.seq) for e in sub.events] == [
            (SNAPSHOT, 0),
            ("scoreboard:season", 1),
            (SNAPSHOT, 1),
        ]
    assert slow.seqs == [0]
    assert broadcaster.behind == 1
    assert broadcaster.conflations == 1

    # No diff is made for that version: the scheduled publish was cancelled,
    # and the board's version counts as published.
    publishes = feed.publishes
    broadcaster.board_changed()
    await asyncio.sleep(0.05)
    assert feed.publishes == publishes
    assert [len(sub.events) for sub in current] == [3, 3]

    # The slow one catches up with the feed's snapshot once it drained.
    slow.buffer = 0
    clock.advance(1.0)
    await asyncio.sleep(0.05)
    assert [(e.kind, e.seq) for e in slow.events] == [(SNAPSHOT, 0), (SNAPSHOT, 1)]
    assert broadcaster.behind == 0

    # Diffs go on from there as usual.
    board.apply(user(8, 2))
    broadcaster.board_changed()
    await asyncio.sleep(0.05)
    assert all(sub.seqs[-1] == 2 for sub in (*current, slow))
    assert broadcaster.deliveries == 3 * 1 + 2 * 2 + 1 + 3
    broadcaster.close()


async def test_a_stuck_subscriber_is_closed_with_1013_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="scoreboard.broadcast")
    board = Board(5)
    clock = FakeClock(0.0)
    broadcaster = Broadcaster(
        Feed("ep", board.entries()), board, clock=clock, tick_s=0.001, high_water=100, stuck_timeout_s=5.0
    )
    stuck = Recorder("stuck", broadcaster)
    ok = Recorder("ok", broadcaster)
    for sub in (stuck, ok):
        broadcaster.subscribe(sub)
    stuck.buffer = 1000
    await change_and_publish(board, broadcaster, user(1, 1))
    assert broadcaster.behind == 1
    clock.advance(4.0)
    await asyncio.sleep(0.01)
    assert stuck.aborted is None
    clock.advance(2.0)
    await asyncio.sleep(0.01)
    assert stuck.aborted == 1013
    assert (len(broadcaster), broadcaster.behind) == (1, 0)
    logs = [r for r in caplog.records if r.getMessage() == "subscriber_stuck"]
    assert len(logs) == 1
    assert logs[0].fields["conn_id"] == "stuck"  # type: ignore[attr-defined]
    assert ok.seqs == [0, 1]
    broadcaster.close()


async def test_following_a_shared_sequence_a_position_ahead_waits_then_gives_up_with_1013() -> None:
    # Several processes: a client may resume here from a position another
    # process already sent it; it is subscribed once this process reaches
    # it, never sent an older board, and closed (try again) if that takes
    # longer than the wait.
    board = Board(3)
    clock = FakeClock(100.0)
    other = Feed("shared", [])  # the sequence as another process made it
    steps = [other.publish([user(1, s)], s) for s in (5, 6, 7)]
    feed = Feed("local", [])
    feed.restart("shared", 1, 1, 5, [user(1, 5)], history=[e for e in steps[:1] if e is not None])
    broadcaster = Broadcaster(feed, board, clock=clock, tick_s=0.01, wait_ahead_s=1.0)
    broadcaster.relayed = True
    ahead, stuck = Recorder("ahead", broadcaster), Recorder("stuck", broadcaster)
    broadcaster.subscribe(ahead, "shared:2")
    broadcaster.subscribe(stuck, "shared:3")
    assert ahead.events == [] and stuck.events == []  # nothing older than their positions
    step = steps[1]
    assert step is not None
    feed.take([step])
    broadcaster.publish_events([step])
    assert ahead.events == [] and len(broadcaster) == 1  # at seq 2 now: subscribed, nothing missed
    clock.advance(1.5)
    await asyncio.sleep(0.05)
    assert stuck.aborted == 1013 and stuck.events == []
    last = steps[2]
    assert last is not None
    feed.take([last])
    broadcaster.publish_events([last])
    assert ahead.seqs == [3]
    broadcaster.close()
