"""The in-memory rank structure against a brute-force ranking, without an event loop.

`Ranks` keeps each player as one packed `bytes` value whose byte order is the
ranking rule; these tests check that order, the packing round trip, every
read (rank, around, pages, friends) after any sequence of puts and removals,
and the loading protocol of `RankIndex` (a snapshot plus the commits that
came while it was read).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scoreboard.board import Entry, rank_all
from scoreboard.ranks import RankIndex, Ranks, Snapshot, pack, unpack, window_start

INT64 = 2**63
users = st.sampled_from([f"u{i}" for i in range(12)] + ["é", "ü-1", "u1\u00e9", "\U0001f600", "u"])
scores = st.one_of(st.integers(-5, 5), st.integers(-INT64, INT64 - 1))
stamps = st.integers(0, 50)
names = st.one_of(st.none(), st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t))
metadata = st.one_of(st.none(), st.sampled_from([b'{"car":"red"}', b"{}", b'{"a":[1,2]}']))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    user = draw(users)
    name = draw(names)
    return Entry(user, name or user, draw(scores), draw(stamps), draw(metadata))


ops = st.lists(st.one_of(entries(), users.map(lambda u: ("remove", u))), max_size=60)


def brute(model: dict[str, Entry], desc: bool) -> list[Entry]:
    return rank_all(model.values(), len(model) + 1, desc=desc)


@settings(max_examples=300, deadline=None)
@given(ops, st.booleans())
def test_every_read_matches_a_brute_force_ranking(sequence: list[object], desc: bool) -> None:
    ranks = Ranks(desc=desc)
    model: dict[str, Entry] = {}
    for op in sequence:
        if isinstance(op, Entry):
            ranks.put(op)
            model[op.user_id] = op
        else:
            assert isinstance(op, tuple)
            assert ranks.remove(op[1]) == (model.pop(op[1], None) is not None)
    expected = brute(model, desc)
    assert ranks.entries() == expected
    assert len(ranks) == len(expected)
    for i, entry in enumerate(expected):
        assert ranks.rank(entry.user_id) == i + 1
        standing = ranks.standing(entry.user_id)
        assert standing is not None and standing.entry == entry and standing.rank == i + 1
        for count in (0, 1, 2, 5):
            window = ranks.around(entry.user_id, count)
            assert window is not None
            start = window_start(i + 1, count, len(expected))
            assert [r.entry for r in window] == expected[start : start + 2 * count + 1]
            assert len(window) == min(len(expected), 2 * count + 1)
            assert entry in [r.entry for r in window]
    for offset in (0, 1, 3, len(expected), len(expected) + 5):
        for limit in (1, 3, 100):
            page = ranks.page(offset, limit)
            assert [r.entry for r in page] == expected[offset : offset + limit]
            assert [r.rank for r in page] == list(range(offset + 1, offset + 1 + len(page)))
    friends = ["u1", "u3", "u1", "nobody", "é"]
    assert [r.entry for r in ranks.many(friends)] == [e for e in expected if e.user_id in friends]
    assert ranks.rank("nobody") is None and ranks.around("nobody", 3) is None


@settings(max_examples=300, deadline=None)
@given(entries(), st.booleans())
def test_a_packed_entry_comes_back_whole(entry: Entry, desc: bool) -> None:
    assert unpack(pack(entry, desc), desc) == entry


@settings(max_examples=500, deadline=None)
@given(entries(), entries(), st.booleans())
def test_byte_order_is_the_ranking_rule(a: Entry, b: Entry, desc: bool) -> None:
    if a.user_id == b.user_id:
        return
    assert (pack(a, desc) < pack(b, desc)) == (a.key_for(desc) < b.key_for(desc))


def test_a_load_replays_only_the_commits_its_snapshot_missed() -> None:
    index = RankIndex(desc=True)
    token = index.start_load()
    assert not index.ready and index.loading
    # Commits while the snapshot is read: version 5 is in the snapshot, 6 and 7 are not.
    index.change(5, (Entry("a", "a", 10, 1),), ())
    index.change(6, (Entry("b", "b", 30, 2),), ())
    index.change(7, (), ("a",))
    snapshot = Snapshot(desc=True)
    snapshot.add([("a", None, 10, 1, None), ("c", "Cee", 5, 3, b"{}")])
    assert index.finish_load(token, snapshot, 5)
    assert index.ready and not index.loading
    assert index.ranks.entries() == [Entry("b", "b", 30, 2), Entry("c", "Cee", 5, 3, b"{}")]
    index.change(8, (Entry("c", "Cee", 50, 4),), ())
    assert index.ranks.rank("c") == 1


def test_a_stale_load_is_dropped_and_a_new_season_is_complete_at_once() -> None:
    index = RankIndex(desc=False)
    token = index.start_load()
    index.new_season()  # the season ended while the old one was being read
    assert index.ready and len(index.ranks) == 0
    snapshot = Snapshot(desc=False)
    snapshot.add([("a", None, 10, 1, None)])
    assert not index.finish_load(token, snapshot, 3)
    assert len(index.ranks) == 0


def test_an_abandoned_load_leaves_reads_to_the_store() -> None:
    index = RankIndex(desc=True)
    token = index.start_load()
    index.abandon_load(token)
    assert not index.ready and not index.loading
    index.change(1, (Entry("a", "a", 1, 1),), ())  # not kept: a new load will read it
    token = index.start_load()
    snapshot = Snapshot(desc=True)
    snapshot.add([("a", None, 1, 1, None)])
    assert index.finish_load(token, snapshot, 1)
    assert index.ranks.entries() == [Entry("a", "a", 1, 1)]
