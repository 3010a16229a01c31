"""A hub applies its board's versions strictly in order, whatever order they arrive in.

With several processes the bus may deliver version 7 before version 6; the
hub holds 7 until 6 arrives, reports the gap meanwhile, ignores what it
already has, and ends exactly where in-order application ends: the same top
K, the same ranks and the same version. Checked with hypothesis over random
arrival orders, duplicates included.
"""

from __future__ import annotations

import asyncio
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from scoreboard.board import Board, Entry
from scoreboard.broadcast import Broadcaster
from scoreboard.catalog import BoardSpec, Operator
from scoreboard.feed import Feed
from scoreboard.hub import Hub, Hubs
from scoreboard.store import BoardState, Committed, SeasonChange

SPEC = BoardSpec("global", "All time", operator=Operator.LATEST, top_k=3, default=True)


def hub() -> Hub:
    def broadcaster(feed: Feed, board: Board) -> Broadcaster:
        return Broadcaster(feed, board, clock=time.monotonic)

    return Hub(SPEC, BoardState("global", 1, 0, 0, None), (), epoch="e", broadcaster=broadcaster)


def history(seed: int, length: int) -> list[Committed | SeasonChange]:
    """Versions 1..length: entries set on a `latest` board, and one season end."""
    rng = random.Random(seed)
    season = 1
    values: list[Committed | SeasonChange] = []
    for version in range(1, length + 1):
        if version == length // 2:
            values.append(SeasonChange("global", season, season + 1, version, 0, None))
            season += 1
            continue
        user = f"u{rng.randint(0, 5)}"
        values.append(Committed("global", season, version, (Entry(user, user, rng.randint(0, 50), version),)))
    return values


def state(h: Hub) -> tuple[object, ...]:
    ranks = h.ranks
    return (
        h.version,
        h.season,
        h.board.entries(),
        None if ranks is None else [(r.entry.user_id, r.rank) for r in ranks.page(0, 100)],
    )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(2, 30), shuffle=st.randoms(use_true_random=False))
def test_any_arrival_order_ends_where_the_version_order_does(
    seed: int, length: int, shuffle: random.Random
) -> None:
    async def run() -> None:
        values = history(seed, length)
        expected = hub()
        expected.index.new_season()  # type: ignore[union-attr]  # ranks complete from empty
        for value in values:
            assert not expected.offer(value)
        arrivals = values + shuffle.sample(values, k=len(values) // 2)  # with duplicates
        shuffle.shuffle(arrivals)
        got = hub()
        got.index.new_season()  # type: ignore[union-attr]
        gaps: list[tuple[int, int]] = []
        hubs = Hubs({"global": got}, "global")
        hubs.on_gap = lambda h: gaps.append(h.missing or (0, 0))
        for value in arrivals:
            hubs.offer(value)
            missing = got.missing
            if missing is not None:
                # Everything up to the hub's version is applied; the gap is right after it.
                assert missing[0] == got.version + 1 <= missing[1]
        assert got.missing is None
        assert state(got) == state(expected)
        assert all(first <= last for first, last in gaps)

    asyncio.run(run())


def test_values_it_already_has_are_ignored_and_reload_drops_what_it_covers() -> None:
    async def run() -> None:
        h = hub()
        values = history(1, 20)  # the season ends at version 10
        assert h.offer(values[3]) is True and h.missing == (1, 3)
        assert h.offer(values[0]) is True and h.missing == (2, 3)
        h.reload(BoardState("global", 1, 3, 0, None), [])  # a snapshot at version 3 covers 2 and 3
        assert h.missing is None and h.version == 4  # the held version 4 was applied after it
        assert h.offer(values[0]) is False and h.ignored == 1

    asyncio.run(run())
