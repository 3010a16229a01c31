"""Board hubs: one per board owns its season, its top K, its feed and its subscribers.

A hub changes only by applying values: `Committed` (a batch's part on this
board, a moderation) and `SeasonChange`, whoever produced them: the local
writer, or the bus carrying other processes' commits, through the same
`Hubs.offer`. Applying is idempotent: a value whose version is not newer than
what the hub holds is ignored, never an error. With several processes the
board's versions are gap-free and applied strictly in order: a value that
arrives ahead of a missing one waits (`Hub.offer`) until the gap is filled
from the bus or the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import orjson

from .board import Board, Entry
from .broadcast import Broadcaster
from .catalog import BoardSpec
from .errors import Code, ScoreboardError
from .feed import Feed, entry_json
from .ranks import RankIndex, Ranks
from .store import BatchResult, BoardState, Committed, SeasonChange

Change = Committed | SeasonChange

log = logging.getLogger("scoreboard.hub")


class Hub:
    """One board's live state: its current season's top K, feed and subscribers."""

    def __init__(
        self,
        spec: BoardSpec,
        state: BoardState,
        entries: Sequence[Entry],
        *,
        epoch: str,
        broadcaster: Callable[[Feed, Board], Broadcaster],
        history: int = 1024,
        ranks: bool = True,
    ) -> None:
        self.spec = spec
        # Every player's rank in memory (None: ranks are read from the store).
        self.index = RankIndex(desc=spec.desc) if ranks else None
        self.season = state.season
        self.version = state.version
        self.started_at = state.started_at
        self.ends_at = state.ends_at
        self.board = Board(spec.top_k, entries, desc=spec.desc)
        self.feed = Feed(epoch, self.board.entries(), history=history, board_id=spec.id, season=state.season)
        self.broadcaster = broadcaster(self.feed, self.board)
        self.broadcaster.committed = lambda: self.version
        self._encoded_version = -1
        self._encoded = orjson.Fragment(b"[]")
        self.ignored = 0
        # Values that came ahead of a missing version, by version.
        self._ahead: dict[int, Change] = {}
        # Told after every change (the board's sequencer, several processes).
        self.changed: Callable[[], None] | None = None

    def offer(self, change: Change) -> bool:
        """Apply `change` in version order; True while a version before one held here is missing.

        A value newer than the next version is held until the ones before it
        arrive; older ones are ignored.
        """
        if change.version <= self.version:
            self.ignored += 1
        else:
            self._ahead[change.version] = change
            self._drain()
        return bool(self._ahead)

    def _drain(self) -> None:
        while (ready := self._ahead.pop(self.version + 1, None)) is not None:
            if isinstance(ready, SeasonChange):
                self.season_changed(ready)
            else:
                self.apply(ready)
            # Whatever the value did, its version is this board's now.
            self.version = max(self.version, ready.version)

    @property
    def missing(self) -> tuple[int, int] | None:
        """The versions `(first, last)` missing before the earliest held value, if any."""
        if not self._ahead:
            return None
        return self.version + 1, min(self._ahead) - 1

    @property
    def id(self) -> str:
        """The board id."""
        return self.spec.id

    def apply(self, committed: Committed) -> bool:
        """Apply a board's part of a committed batch; False if it was not newer (ignored)."""
        if committed.version <= self.version:
            self.ignored += 1
            return False
        if committed.season < self.season:
            # A moderation of an archived season: nothing live changes, but
            # the version it took is this board's.
            self.version = committed.version
            return True
        if committed.season != self.season:
            # A commit from a season this hub has not seen start (a bus
            # message that overtook the season change): its top K is not
            # known here, so wait for the season change to be applied.
            log.warning(
                "commit_from_unknown_season",
                extra={"fields": {"board": self.id, "season": committed.season, "hub_season": self.season}},
            )
            self.ignored += 1
            return False
        self.version = committed.version
        if committed.top is not None:
            self.board.replace(committed.top)
        else:
            for entry in committed.standings:
                self.board.apply(entry)
        if self.index is not None:
            self.index.change(committed.version, committed.standings, committed.removed)
        self.broadcaster.board_changed()
        if self.changed is not None:
            self.changed()
        return True

    def season_changed(self, change: SeasonChange) -> bool:
        """Start the next season (empty); subscribers get `board:season` and a snapshot."""
        if change.season <= self.season:
            self.ignored += 1
            return False
        # Diffs of the ending season still waiting for the tick go out first.
        self.broadcaster.flush()
        self.season = change.season
        self.version = change.version
        self.started_at = change.started_at
        self.ends_at = change.ends_at
        self.board.clear()
        if self.index is not None:
            self.index.new_season()
        if not self.broadcaster.relayed:
            self.broadcaster.publish_events(
                self.feed.new_season(self.board.entries(), change.ended, change.season, change.version)
            )
        if self.changed is not None:
            self.changed()
        return True

    def reload(self, state: BoardState, entries: Sequence[Entry]) -> None:
        """Take the store's state as it is (start-up, recovery after a storage outage).

        The top K is exact at once; ranks must be loaded again by the caller
        when versions were skipped.
        """
        if state.season > self.season:
            self.season_changed(
                SeasonChange(
                    self.id, self.season, state.season, state.version, state.started_at, state.ends_at
                )
            )
        self.version = max(self.version, state.version)
        for version in [v for v in self._ahead if v <= self.version]:
            del self._ahead[version]
        self.ends_at = state.ends_at
        self.board.replace(entries)
        self.broadcaster.board_changed()
        if self.changed is not None:
            self.changed()
        self._drain()

    @property
    def ranks(self) -> Ranks | None:
        """Every player's rank of the current season, if complete in memory."""
        index = self.index
        return index.ranks if index is not None and index.ready else None

    def top_users(self) -> orjson.Fragment:
        """The current top K as pre-encoded JSON, encoded once per change."""
        if self._encoded_version != self.board.version:
            self._encoded = orjson.Fragment(
                orjson.dumps([entry_json(r.rank, r.entry) for r in self.board.ranked()])
            )
            self._encoded_version = self.board.version
        return self._encoded

    def describe(self) -> dict[str, object]:
        """The board as `GET /api/boards` lists it."""
        spec = self.spec
        return {
            "id": spec.id,
            "title": spec.title,
            "operator": spec.operator.value,
            "order": spec.order.value,
            "topK": spec.top_k,
            "reset": spec.reset or None,
            "default": spec.default,
            "season": {"id": self.season, "startedAt": self.started_at, "endsAt": self.ends_at},
        }


class Hubs:
    """Every board's hub, and the one door committed values come in through.

    Values this process committed come in through `apply`, `apply_one` and
    `season_changed` and are handed to `publish` (the bus, with several
    processes); values other processes committed come in through `offer`.
    `on_gap(hub)` is called when a hub holds a value ahead of a missing
    version (the bus repairs it from the database).
    """

    def __init__(self, hubs: Mapping[str, Hub], default: str) -> None:
        self._hubs = dict(hubs)
        self.default = self._hubs[default]
        self.on_gap: Callable[[Hub], None] | None = None
        self.publish: Callable[[Change], None] | None = None

    def __iter__(self) -> Iterator[Hub]:
        return iter(self._hubs.values())

    def __len__(self) -> int:
        return len(self._hubs)

    def find(self, board: str) -> Hub | None:
        """The hub of `board`, if there is such a board."""
        return self._hubs.get(board)

    def get(self, board: str) -> Hub:
        """The hub of `board`; raises board_not_found."""
        hub = self._hubs.get(board)
        if hub is None:
            raise ScoreboardError(Code.BOARD_NOT_FOUND, f"There is no board '{board}'.")
        return hub

    def apply(self, batch: BatchResult) -> None:
        """Apply every board's part of a batch this process committed."""
        for committed in batch.committed:
            self.local(committed)

    def apply_one(self, committed: Committed) -> None:
        """Apply one board's value this process committed (a moderation)."""
        self.local(committed)

    def season_changed(self, change: SeasonChange) -> None:
        """Apply a season change this process committed."""
        self.local(change)

    def local(self, change: Change) -> None:
        """Apply a value this process committed, and tell the other processes."""
        self.offer(change)
        if self.publish is not None:
            self.publish(change)

    def offer(self, change: Change) -> None:
        """Apply a committed value in its board's version order (see `Hub.offer`)."""
        hub = self._hubs.get(change.board)
        if hub is not None and hub.offer(change) and self.on_gap is not None:
            self.on_gap(hub)

    def close(self) -> None:
        """Stop every hub's timers."""
        for hub in self._hubs.values():
            hub.broadcaster.close()


class FanoutTotals:
    """Every hub's subscriber counters added up (what `/metrics` reads)."""

    def __init__(self, hubs: Hubs) -> None:
        self._hubs = hubs

    def __len__(self) -> int:
        return sum(len(hub.broadcaster) for hub in self._hubs)

    @property
    def behind(self) -> int:
        """Subscriptions currently conflated."""
        return sum(hub.broadcaster.behind for hub in self._hubs)

    @property
    def deliveries(self) -> int:
        """Events written to subscribers."""
        return sum(hub.broadcaster.deliveries for hub in self._hubs)

    @property
    def conflations(self) -> int:
        """Times a subscriber fell behind."""
        return sum(hub.broadcaster.conflations for hub in self._hubs)
