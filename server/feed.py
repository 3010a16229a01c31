"""A board's change feed: numbered snapshots and diffs, a bounded history
for resuming, and each event's wire encodings, made once.

Pure: no I/O, no clock. `epoch` names one history (a new one per server
start); `seq` grows by one per published change. A client that was at
`<epoch>:<seq>` gets the events it missed if they are all still in the
history, else a fresh snapshot: never a silent gap.

A season end is one numbered step: a `board:season` event and a snapshot of
the new (empty) season share the next `seq`, and both stay in the history, so
a client resuming across the boundary is told the season ended.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from .board import Change, Entry, apply_diff, diff

SNAPSHOT = "scoreboard:update"
DIFF = "scoreboard:diff"
SEASON = "board:season"


def entry_json(rank: int, e: Entry) -> dict[str, object]:
    """One board row as clients see it (`metadata` only when the record has some)."""
    row: dict[str, object] = {"rank": rank, "userId": e.user_id, "username": e.username, "score": e.score}
    if e.metadata is not None:
        row["metadata"] = orjson.Fragment(e.metadata)
    return row


def _entry(row: dict[str, object]) -> Entry:
    """A board row as clients see it, back as an entry (its stamp is not shown: 0)."""
    metadata = row.get("metadata")
    return Entry(
        str(row["userId"]),
        str(row["username"]),
        int(row["score"]),  # type: ignore[call-overload]
        0,
        None if metadata is None else orjson.dumps(metadata),
    )


def _change(row: dict[str, object]) -> Change:
    rank = int(row["rank"])  # type: ignore[call-overload]
    return Change(rank, None if row.get("removed") else _entry(row))


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455, server to client)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def http_chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (for a response sent with chunked encoding)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass(slots=True)
class Event:
    """One published message; its encodings are built on first use and shared."""

    kind: str
    epoch: str
    seq: int
    json: bytes
    _ws: bytes | None = field(default=None, repr=False)
    _sse: bytes | None = field(default=None, repr=False)
    _sse_chunk: bytes | None = field(default=None, repr=False)

    @property
    def event_id(self) -> str:
        """`<epoch>:<seq>`, the resume token."""
        return f"{self.epoch}:{self.seq}"

    def ws_frame(self) -> bytes:
        """The WebSocket text frame carrying this event."""
        if self._ws is None:
            self._ws = ws_text_frame(self.json)
        return self._ws

    def sse(self) -> bytes:
        """This event in Server-Sent Events format."""
        if self._sse is None:
            self._sse = b"event: %b\nid: %b\ndata: %b\n\n" % (
                self.kind.encode(),
                self.event_id.encode(),
                self.json,
            )
        return self._sse

    def sse_chunk(self) -> bytes:
        """The SSE bytes as an HTTP/1.1 chunk."""
        if self._sse_chunk is None:
            self._sse_chunk = http_chunk(self.sse())
        return self._sse_chunk


_POSITION = re.compile(r"^([A-Za-z0-9_-]{1,32}):([0-9]{1,18})$")


def parse_since(token: str) -> tuple[str, int] | None:
    """`(epoch, seq)` from `<epoch>:<seq>`, or None if malformed.

    Strict: ASCII only (`str.isdigit()` accepts '²' and '①', which `int()`
    refuses), bounded lengths, surrounding spaces tolerated.
    """
    match = _POSITION.match(token.strip()) if len(token) <= 64 else None
    if match is None:
        return None
    return match.group(1), int(match.group(2))


class Feed:
    """Turns successive boards into numbered diffs and keeps the recent ones.

    `history` bounds how many events are kept for resuming.
    """

    def __init__(
        self,
        epoch: str,
        board: Sequence[Entry],
        *,
        history: int = 1024,
        board_id: str = "global",
        season: int = 1,
    ) -> None:
        self.epoch = epoch
        self.seq = 0
        # The highest commit version the board as of `seq` includes.
        self.version = 0
        self.board_id = board_id
        self.season = season
        self._board: tuple[Entry, ...] = tuple(board)
        self._history: deque[Event] = deque(maxlen=history)
        self._snapshot: Event | None = None

    @property
    def board(self) -> tuple[Entry, ...]:
        """The board as of `seq`."""
        return self._board

    def publish(self, board: Sequence[Entry], version: int = 0) -> Event | None:
        """The diff from the last published board to `board` (as of commit `version`), or None if equal."""
        changes = diff(self._board, board)
        self.version = max(self.version, version)
        if not changes:
            return None
        self.seq += 1
        self._board = tuple(board)
        self._snapshot = None
        body = {
            "type": DIFF,
            "board": self.board_id,
            "season": self.season,
            "epoch": self.epoch,
            "seq": self.seq,
            "version": self.version,
            "changes": [
                {"rank": c.rank, "removed": True} if c.entry is None else entry_json(c.rank, c.entry)
                for c in changes
            ],
        }
        event = Event(DIFF, self.epoch, self.seq, orjson.dumps(body))
        self._history.append(event)
        return event

    def snapshot(self) -> Event:
        """The whole board as of `seq` (cached until the next change)."""
        if self._snapshot is None:
            body = {
                "type": SNAPSHOT,
                "board": self.board_id,
                "season": self.season,
                "epoch": self.epoch,
                "seq": self.seq,
                "version": self.version,
                "topUsers": [entry_json(i + 1, e) for i, e in enumerate(self._board)],
            }
            self._snapshot = Event(SNAPSHOT, self.epoch, self.seq, orjson.dumps(body))
        return self._snapshot

    def new_season(self, board: Sequence[Entry], ended: int, season: int, version: int = 0) -> list[Event]:
        """End season `ended`: a `board:season` event and the new season's snapshot, at the next seq."""
        self.seq += 1
        self.version = max(self.version, version)
        self.season = season
        self._board = tuple(board)
        self._snapshot = None
        body = {
            "type": SEASON,
            "board": self.board_id,
            "endedSeason": ended,
            "season": season,
            "epoch": self.epoch,
            "seq": self.seq,
            "version": self.version,
        }
        events = [Event(SEASON, self.epoch, self.seq, orjson.dumps(body)), self.snapshot()]
        self._history.extend(events)
        return events

    # -- a feed that follows a shared sequence (several processes) ---------

    def take(self, events: Sequence[Event]) -> None:
        """Follow one numbered step another process published (`sequencer.Relay`).

        `events` share one `seq`: a diff, a season change and its snapshot,
        or a snapshot alone (a new epoch). The board as of the step is
        rebuilt from them, for the snapshots this feed gives new subscribers.
        """
        for event in events:
            body = orjson.loads(event.json)
            if event.epoch != self.epoch:
                self.epoch = event.epoch
                self._history.clear()
            if event.kind == DIFF:
                self._board = tuple(apply_diff(self._board, [_change(c) for c in body["changes"]]))
            elif event.kind == SNAPSHOT:
                self._board = tuple(_entry(row) for row in body["topUsers"])
            self.season = int(body["season"])
            self.seq = event.seq
            self.version = max(self.version, int(body.get("version", 0)))
            self._snapshot = event if event.kind == SNAPSHOT else None
            self._history.append(event)

    def restart(
        self,
        epoch: str,
        seq: int,
        season: int,
        version: int,
        board: Sequence[Entry],
        *,
        history: Sequence[Event] = (),
    ) -> None:
        """Start following a shared sequence at `epoch:seq`, with the earlier events kept (oldest first)."""
        self.epoch = epoch
        self.seq = seq
        self.season = season
        self.version = version
        self._board = tuple(board)
        self._snapshot = None
        self._history.clear()
        self._history.extend(e for e in history if e.epoch == epoch and e.seq <= seq)

    def since(self, token: str | None) -> list[Event]:
        """What a client at `token` needs to reach `seq`: missed events, or a snapshot.

        No token, another epoch, a position ahead of ours, or events no
        longer in the history all give a snapshot. An up-to-date client gets
        nothing.
        """
        position = parse_since(token) if token else None
        if position is None or position[0] != self.epoch or position[1] > self.seq:
            return [self.snapshot()]
        after = position[1]
        if after == self.seq:
            return []
        missed: list[Event] = []
        for event in reversed(self._history):
            if event.seq <= after:
                break
            missed.append(event)
        if not missed or missed[-1].seq != after + 1:
            return [self.snapshot()]  # the history no longer reaches back to `after`
        missed.reverse()
        return missed
