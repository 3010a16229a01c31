"""The pure board: exact top K under any sequence of updates, and diffs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoreboard.board import Board, Change, Entry, apply_diff, diff, rank_all

updates = st.lists(
    st.tuples(st.sampled_from([f"u{i}" for i in range(25)]), st.integers(min_value=1, max_value=5)),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(updates, st.integers(min_value=1, max_value=12))
def test_board_equals_brute_force_sort_after_any_updates(seq: list[tuple[str, int]], k: int) -> None:
    board = Board(k)
    everyone: dict[str, Entry] = {}
    for stamp, (user, delta) in enumerate(seq, start=1):
        before = everyone.get(user)
        entry = Entry(user, user.upper(), (before.score if before else 0) + delta, stamp)
        everyone[user] = entry
        board.apply(entry)
        assert list(board.entries()) == rank_all(everyone.values(), k)


@settings(max_examples=200, deadline=None)
@given(updates, updates, st.integers(min_value=1, max_value=10))
def test_diff_applied_to_old_board_gives_new_board(
    a: list[tuple[str, int]], b: list[tuple[str, int]], k: int
) -> None:
    board = Board(k)
    everyone: dict[str, Entry] = {}
    stamp = 0

    def run(seq: list[tuple[str, int]]) -> None:
        nonlocal stamp
        for user, delta in seq:
            stamp += 1
            prev = everyone.get(user)
            everyone[user] = Entry(user, user, (prev.score if prev else 0) + delta, stamp)
            board.apply(everyone[user])

    run(a)
    old = board.entries()
    run(b)
    new = board.entries()
    changes = diff(old, new)
    assert apply_diff(old, changes) == list(new)
    assert all(old[c.rank - 1] != c.entry if c.rank <= len(old) else True for c in changes)


def test_tie_rule_score_then_reached_at_then_user_id() -> None:
    a = Entry("a", "a", 10, 5)
    b = Entry("b", "b", 10, 3)
    c = Entry("c", "c", 10, 3)
    d = Entry("d", "d", 11, 9)
    assert rank_all([a, b, c, d], 10) == [d, b, c, a]


def test_apply_reports_changes_and_version() -> None:
    board = Board(2)
    assert board.apply(Entry("x", "x", 1, 1))
    assert board.version == 1
    assert not board.apply(Entry("x", "x", 1, 1))  # same standing
    assert board.apply(Entry("y", "y", 5, 2))
    assert not board.apply(Entry("z", "z", 1, 3))  # below a full board
    assert board.version == 2
    assert board.rank_of("y") == 1
    assert board.rank_of("z") is None
    assert board.apply(Entry("x", "Xavier", 1, 1))  # a new display name is a change
    assert board.get("x") == Entry("x", "Xavier", 1, 1)


def test_an_older_standing_is_ignored() -> None:
    # Places only improve on a monotonic board: a lower standing is not newer.
    board = Board(3, [Entry("a", "a", 10, 1)])
    version = board.version
    assert not board.apply(Entry("a", "a", 9, 2))
    assert not board.apply(Entry("a", "a", 10, 1))
    assert board.entries() == (Entry("a", "a", 10, 1),) and board.version == version


def test_ascending_boards_rank_lower_first() -> None:
    board = Board(2, desc=False)
    for e in (Entry("a", "a", 30, 1), Entry("b", "b", 10, 2), Entry("c", "c", 10, 3), Entry("d", "d", 5, 4)):
        board.apply(e)
    assert [e.user_id for e in board.entries()] == ["d", "b"]
    two = [Entry("a", "a", 30, 1), Entry("b", "b", 10, 2)]
    assert rank_all(two, 1, desc=False) == [Entry("b", "b", 10, 2)]


def test_replace_keeps_the_best_k() -> None:
    board = Board(2)
    assert board.replace([Entry("a", "a", 1, 1), Entry("b", "b", 3, 2), Entry("c", "c", 2, 3)])
    assert [e.user_id for e in board.entries()] == ["b", "c"]
    assert not board.replace([Entry("b", "b", 3, 2), Entry("c", "c", 2, 3)])


def test_diff_reports_removed_ranks() -> None:
    old = [Entry("a", "a", 3, 1), Entry("b", "b", 2, 2)]
    new = [Entry("a", "a", 3, 1)]
    assert diff(old, new) == [Change(2, None)]
    assert apply_diff(old, diff(old, new)) == new


def test_board_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Board(0)
