"""The change feed (pure): numbered diffs, bounded history, resume, encodings."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from scoreboard.board import Board, Entry
from scoreboard.client import BoardState
from scoreboard.feed import Feed, http_chunk, parse_since, ws_text_frame


def e(user: str, score: int, at: int) -> Entry:
    return Entry(user, user.upper(), score, at)


def test_publish_numbers_diffs_and_skips_no_change() -> None:
    feed = Feed("ep", [e("a", 5, 1)], history=10)
    assert feed.snapshot().json == orjson.dumps(
        {
            "type": "scoreboard:update",
            "board": "global",
            "season": 1,
            "epoch": "ep",
            "seq": 0,
            "version": 0,
            "topUsers": [{"rank": 1, "userId": "a", "username": "A", "score": 5}],
        }
    )
    assert feed.publish([e("a", 5, 1)]) is None
    event = feed.publish([e("b", 9, 2), e("a", 5, 1)], 7)
    assert event is not None
    assert (event.seq, event.event_id) == (1, "ep:1")
    assert orjson.loads(event.json) == {
        "type": "scoreboard:diff",
        "board": "global",
        "season": 1,
        "epoch": "ep",
        "seq": 1,
        "version": 7,
        "changes": [
            {"rank": 1, "userId": "b", "username": "B", "score": 9},
            {"rank": 2, "userId": "a", "username": "A", "score": 5},
        ],
    }
    removal = feed.publish([e("b", 9, 2)])
    assert removal is not None
    assert orjson.loads(removal.json)["changes"] == [{"rank": 2, "removed": True}]


def test_since_gives_missed_diffs_or_a_snapshot() -> None:
    feed = Feed("ep", [], history=3)
    for i in range(1, 6):
        assert feed.publish([e("a", i, i)]) is not None
    assert feed.seq == 5
    assert [ev.seq for ev in feed.since("ep:3")] == [4, 5]
    assert [ev.seq for ev in feed.since("ep:2")] == [3, 4, 5]
    assert feed.since("ep:5") == []
    # Too old, another epoch, from the future, malformed, or none: a snapshot.
    for token in ("ep:1", "other:4", "ep:9", "garbage", "ep:-1", None):
        (only,) = feed.since(token)
        assert (only.kind, only.seq) == ("scoreboard:update", 5), token


def test_snapshot_is_cached_until_the_next_change() -> None:
    feed = Feed("ep", [e("a", 1, 1)])
    first = feed.snapshot()
    assert feed.snapshot() is first
    feed.publish([e("a", 2, 2)])
    assert feed.snapshot() is not first
    assert feed.snapshot().seq == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 9)), max_size=80), st.integers(1, 6))
def test_snapshot_plus_diffs_equals_the_board(updates: list[tuple[int, int]], k: int) -> None:
    board = Board(k)
    feed = Feed("ep", board.entries(), history=1000)
    client = BoardState()
    assert client.apply(orjson.loads(feed.snapshot().json))
    scores: dict[str, int] = {}
    for stamp, (user, delta) in enumerate(updates, start=1):
        uid = f"u{user}"
        scores[uid] = scores.get(uid, 0) + delta
        board.apply(Entry(uid, uid, scores[uid], stamp))
        if stamp % 3 == 0:  # coalesce a few updates per publish
            event = feed.publish(board.entries())
            if event is not None:
                assert client.apply(orjson.loads(event.json))
    event = feed.publish(board.entries())
    if event is not None:
        assert client.apply(orjson.loads(event.json))
    expected = orjson.loads(feed.snapshot().json)["topUsers"]
    assert client.entries == expected
    assert client.seq == feed.seq


def test_a_gap_is_detected() -> None:
    state = BoardState()
    assert state.apply({"type": "scoreboard:update", "epoch": "ep", "seq": 3, "topUsers": []})
    assert not state.apply({"type": "scoreboard:diff", "epoch": "ep", "seq": 5, "changes": []})
    assert not state.apply({"type": "scoreboard:diff", "epoch": "new", "seq": 4, "changes": []})
    assert state.apply({"type": "scoreboard:diff", "epoch": "ep", "seq": 4, "changes": []})


def test_encodings() -> None:
    assert ws_text_frame(b"hi") == b"\x81\x02hi"
    assert ws_text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert ws_text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert http_chunk(b"hello") == b"5\r\nhello\r\n"
    feed = Feed("ep", [])
    snap = feed.snapshot()
    expected = b"event: scoreboard:update\nid: ep:0\ndata: " + snap.json + b"\n\n"
    assert snap.sse() == expected
    assert snap.json == (
        b'{"type":"scoreboard:update","board":"global","season":1,"epoch":"ep","seq":0,"version":0,'
        b'"topUsers":[]}'
    )
    assert snap.sse_chunk() == http_chunk(snap.sse())
    assert parse_since("ab:12") == ("ab", 12)
    assert parse_since("a:b:3") is None  # epochs are [A-Za-z0-9_-]
    assert parse_since("12") is None


def test_a_season_end_is_one_numbered_step_kept_for_resuming() -> None:
    feed = Feed("ep", [e("a", 5, 1)], history=10, board_id="weekly", season=3)
    feed.publish([e("a", 6, 2)], 5)
    season, snapshot = feed.new_season([], 3, 4, 6)
    assert orjson.loads(season.json) == {
        "type": "board:season",
        "board": "weekly",
        "endedSeason": 3,
        "season": 4,
        "epoch": "ep",
        "seq": 2,
        "version": 6,
    }
    assert (snapshot.kind, snapshot.seq, orjson.loads(snapshot.json)["topUsers"]) == (
        "scoreboard:update",
        2,
        [],
    )
    assert orjson.loads(snapshot.json)["season"] == 4
    assert feed.since("ep:1") == [season, snapshot]
    assert [ev.kind for ev in feed.since("ep:0")] == ["scoreboard:diff", "board:season", "scoreboard:update"]
    assert feed.since("ep:2") == []
    diff = feed.publish([e("b", 1, 3)])
    assert diff is not None and diff.seq == 3 and orjson.loads(diff.json)["season"] == 4
    # Once the history no longer reaches back, a snapshot.
    short = Feed("ep", [], history=1)
    short.publish([e("a", 1, 1)])
    short.new_season([], 1, 2)
    assert [ev.kind for ev in short.since("ep:0")] == ["scoreboard:update"]
    assert [ev.kind for ev in short.since("ep:1")] == ["scoreboard:update"]
