"""The broadcaster with in-process subscribers (the transports are tested over real sockets elsewhere)."""

from __future__ import annotations

import asyncio
import time

from scoreboard.board import Board, Entry
from scoreboard.broadcast import Broadcaster
from scoreboard.feed import Event, Feed


class Recorder:
    """A subscriber that records the seqs it was sent; it may be told to fail."""

    def __init__(self, name: str, broadcaster: Broadcaster | None = None, *, fail: bool = False) -> None:
        self.conn_id = name
        self.seqs: list[int] = []
        self.aborted: int | None = None
        self._fail = fail
        self._broadcaster = broadcaster

    def buffered(self) -> int:
        return 0

    def send_event(self, event: Event) -> None:
        if self._fail and event.kind == "scoreboard:diff":
            raise ConnectionResetError("peer vanished")
        self.seqs.append(event.seq)

    def abort(self, code: int, reason: str) -> None:
        self.aborted = code
        if self._broadcaster is not None:  # as a WebSocket connection does
            self._broadcaster.unsubscribe(self)


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
