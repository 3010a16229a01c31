"""The storage interface, its value types, and the batch logic both stores share.

A store applies a batch of updates in one transaction: it looks up which
action ids the ledger already holds, takes the next version of every board
the batch writes (which also tells the season current at commit), reads the
records it will change, computes their new values here (`plan_batch`,
`apply_plan`: pure, so SQLite and PostgreSQL decide identically), writes
them with the ledger rows, and commits. The unique `action_id` of the ledger
is what makes crediting exactly-once across batches, races and restarts, for
every board an action writes at once.

A committed batch comes back as values: each update's `Result`, and one
`Committed` per board written (its season, its new version and the changed
standings), which the board hubs apply.

The store factory (`open_store`, picking SQLite or PostgreSQL by URL scheme)
lives in `stores.py`, outside this interface module.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Container, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from .board import Entry, RankedEntry
from .catalog import BoardSpec, Operator

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


class Source(StrEnum):
    """Who asked for a credit: a player's ticket or a trusted backend."""

    PLAYER = "player"
    SERVICE = "service"


class StorageError(Exception):
    """The database could not be reached or failed the transaction (an outage)."""


class DataRefused(Exception):
    """The database refused a batch for its data, not for an outage.

    Validation keeps such data out of batches; this is the defence in depth:
    the writer splits the batch until only the offending update fails, and
    storage is not marked down. `overflow` is set when a score would leave
    the signed 64-bit range.
    """

    def __init__(self, message: str, *, overflow: bool = False) -> None:
        super().__init__(message)
        self.overflow = overflow


@dataclass(frozen=True, slots=True)
class Update:
    """One requested credit: a value for each board it writes, exactly once for its action id.

    `scores` is `(board, value)` pairs sorted by board: the delta on `incr`
    boards, the submitted value on `best` and `latest` ones.
    `allow_credit=False` asks only for the outcome of an action already
    credited (a retry with an expired ticket); if the action is new it is
    reported as `Outcome.NOT_CREDITED` and nothing is written.
    """

    action_id: str
    user_id: str
    username: str | None
    scores: tuple[tuple[str, int], ...]
    source: Source
    metadata: bytes | None = None
    allow_credit: bool = True
    # Carried only so the commit can be logged with the request that asked.
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def single(
        cls,
        action_id: str,
        user_id: str,
        username: str | None,
        value: int,
        source: Source,
        *,
        board: str = "global",
        metadata: bytes | None = None,
        allow_credit: bool = True,
        request_id: str | None = None,
    ) -> Update:
        """An update of one board."""
        return cls(
            action_id, user_id, username, ((board, value),), source, metadata, allow_credit, request_id
        )


class Outcome(StrEnum):
    """What became of one update."""

    CREDITED = "credited"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    NOT_CREDITED = "not_credited"
    # A new action of a player an admin has blocked (retries of older ones
    # still get their original answer).
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class BoardCredit:
    """What an action did to one board: the season it counted in, the record after it,
    whether the record changed, and the board version that includes it (0: credited before
    versions were recorded)."""

    season: int
    score: int
    improved: bool
    version: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one update, with what it did on each board it wrote."""

    outcome: Outcome
    user_id: str
    boards: Mapping[str, BoardCredit] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CreditRow:
    """A ledger row: one action's value on one board."""

    action_id: str
    board: str
    season: int
    user_id: str
    value: int
    score_after: int
    improved: bool
    version: int = 0


@dataclass(frozen=True, slots=True)
class StoredAction:
    """An action already in the ledger."""

    user_id: str
    credits: Mapping[str, CreditRow]


@dataclass(frozen=True, slots=True)
class Record:
    """A player's stored record on one board and season (`username` as stored, maybe None)."""

    user_id: str
    username: str | None
    score: int
    reached_at: int
    metadata: bytes | None = None

    def entry(self) -> Entry:
        """The record as a board entry (the display name falls back to the user id)."""
        return Entry(self.user_id, self.username or self.user_id, self.score, self.reached_at, self.metadata)


@dataclass(frozen=True, slots=True)
class Committed:
    """One board's part of a committed batch: the value the board's hub applies.

    `version` numbers the board's commits (one counter per board in the
    database); `standings` are the new entries of the players written;
    `top` is the whole top K re-read in the same transaction, given for
    boards where a place can worsen (see `BoardSpec.monotonic`) and with
    every moderation; `removed` are the players whose entry was deleted
    (a removal, a block, a revert that left no credit).
    """

    board: str
    season: int
    version: int
    standings: tuple[Entry, ...]
    top: tuple[Entry, ...] | None = None
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScanChunk:
    """Rows of a board's season in ranking order, and the board version their snapshot includes."""

    version: int
    rows: list[tuple[str, str | None, int, int, bytes | None]]


@dataclass(frozen=True, slots=True)
class BoardState:
    """A board's row: its current season, last version, and the season's schedule (Unix seconds)."""

    board: str
    season: int
    version: int
    started_at: int
    ends_at: int | None
    reset: str = ""


@dataclass(frozen=True, slots=True)
class SeasonChange:
    """A season ended and the next one started: the value the board's hub applies."""

    board: str
    ended: int
    season: int
    version: int
    started_at: int
    ends_at: int | None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Results aligned with the batch, one `Committed` per board written, and the ledger rows."""

    results: list[Result]
    committed: list[Committed] = field(default_factory=list)
    ledger: list[CreditRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Audit:
    """One admin operation, as the append-only audit table records it (`at` in Unix seconds)."""

    at: int
    actor: str
    operation: str
    target: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A recorded admin operation and its number."""

    id: int
    audit: Audit


@dataclass(frozen=True, slots=True)
class Removed:
    """An entry a moderation deleted, as it was, with its rank then."""

    board: str
    season: int
    rank: int
    entry: Entry


@dataclass(frozen=True, slots=True)
class Moderated:
    """What a moderation changed: the values the hubs apply, and what to tell the admin.

    `boards` (reverts): each board the action wrote, with the season it
    counted in and the player's score there now (None: no entry left).
    """

    user_id: str
    changed: bool
    committed: list[Committed] = field(default_factory=list)
    removed: list[Removed] = field(default_factory=list)
    boards: dict[str, tuple[int, int | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ranked:
    """A page of a board's season as the store reads it: ranked players and how many there are."""

    total: int
    entries: list[RankedEntry]


@dataclass(frozen=True, slots=True)
class UserStanding:
    """A user's entry and rank from the store."""

    entry: Entry
    rank: int


@dataclass(slots=True)
class BatchPlan:
    """The batch classified against the ledger and itself."""

    batch: Sequence[Update]
    results: list[Result | None]
    fresh: list[int]
    # index of a later in-batch duplicate -> index of the fresh update it repeats
    repeats: dict[int, int]

    def boards(self) -> list[str]:
        """The boards the fresh updates write, sorted (the order their rows are locked in)."""
        return sorted({board for i in self.fresh for board, _ in self.batch[i].scores})

    def keys(self, seasons: Mapping[str, int]) -> list[tuple[str, int, str]]:
        """`(board, season, user_id)` of every record the fresh updates write, sorted."""
        return sorted(
            {
                (board, seasons[board], self.batch[i].user_id)
                for i in self.fresh
                for board, _ in self.batch[i].scores
            }
        )


@dataclass(slots=True)
class Applied:
    """The writes of a planned batch: records to store, ledger rows, and the results."""

    results: list[Result]
    records: dict[tuple[str, str], Record]
    ledger: list[CreditRow]


def plan_batch(
    batch: Sequence[Update], existing: Mapping[str, StoredAction], blocked: Container[str] = frozenset()
) -> BatchPlan:
    """Classify each update: a duplicate or conflict of the ledger or of the batch, not to be
    credited (an expired ticket, a blocked player), or fresh.

    The same action id with another user, or another set of boards or
    values, is a conflict; with the same ones it is a duplicate and gets the
    original result.
    """
    results: list[Result | None] = [None] * len(batch)
    fresh: list[int] = []
    repeats: dict[int, int] = {}
    first: dict[str, int] = {}
    for i, u in enumerate(batch):
        stored = existing.get(u.action_id)
        if stored is not None:
            same = stored.user_id == u.user_id and {b: c.value for b, c in stored.credits.items()} == dict(
                u.scores
            )
            results[i] = (
                Result(
                    Outcome.DUPLICATE,
                    u.user_id,
                    {
                        b: BoardCredit(c.season, c.score_after, c.improved, c.version)
                        for b, c in stored.credits.items()
                    },
                )
                if same
                else Result(Outcome.CONFLICT, u.user_id)
            )
            continue
        j = first.get(u.action_id)
        if j is not None:
            original = batch[j]
            if original.user_id == u.user_id and original.scores == u.scores:
                repeats[i] = j
            else:
                results[i] = Result(Outcome.CONFLICT, u.user_id)
            continue
        if not u.allow_credit:
            results[i] = Result(Outcome.NOT_CREDITED, u.user_id)
            continue
        if u.user_id in blocked:
            results[i] = Result(Outcome.BLOCKED, u.user_id)
            continue
        first[u.action_id] = i
        fresh.append(i)
    return BatchPlan(batch, results, fresh, repeats)


def better(value: int, than: int, desc: bool) -> bool:
    """Whether `value` ranks before `than` on a board of that order."""
    return value > than if desc else value < than


@dataclass(frozen=True, slots=True)
class Credit:
    """One credit of a player on one board, as the ledger holds it: what a record is folded from."""

    user_id: str
    value: int
    stamp: int
    username: str | None
    metadata: bytes | None


def step(spec: BoardSpec, old: Record | None, credit: Credit) -> tuple[Record, bool]:
    """A record after one credit, and whether the credit changed it.

    `incr` adds; `best` keeps the strictly better value (the first to reach
    a value keeps its place); `latest` takes the value. A changed record
    takes the credit's stamp, metadata and (if given) display name. Raises
    DataRefused (overflow) when an `incr` record would leave int64.
    """
    username = credit.username if credit.username is not None else (old.username if old else None)
    if spec.operator is Operator.INCR:
        score = credit.value + (old.score if old else 0)
        if not INT64_MIN <= score <= INT64_MAX:
            raise DataRefused(
                f"the score of {credit.user_id!r} on {spec.id!r} would leave int64", overflow=True
            )
    elif spec.operator is Operator.LATEST or old is None or better(credit.value, old.score, spec.desc):
        score = credit.value
    else:
        return old, False
    return Record(credit.user_id, username, score, credit.stamp, credit.metadata), True


def replay(spec: BoardSpec, credits: Sequence[Credit]) -> Record | None:
    """The record folded from a player's live credits on one board and season, in order."""
    record: Record | None = None
    for credit in credits:
        record, _ = step(spec, record, credit)
    return record


def apply_plan(
    plan: BatchPlan,
    stamps: Sequence[int],
    specs: Mapping[str, BoardSpec],
    seasons: Mapping[str, int],
    current: Mapping[tuple[str, str], Record],
    *,
    versions: Mapping[str, int] | None = None,
) -> Applied:
    """Apply the fresh updates, in batch order, to the current records.

    `stamps[i]` is the `reached_at` of update i; `current` holds the stored
    record of `(board, user_id)` in its season, if any; `versions` the board
    versions this batch took (what each credit's `visibleAt` is). Raises
    DataRefused (overflow) when an `incr` record would leave int64.
    """
    versions = versions or {}
    records: dict[tuple[str, str], Record] = {}
    ledger: list[CreditRow] = []
    results = list(plan.results)
    for i in plan.fresh:
        u = plan.batch[i]
        credits: dict[str, BoardCredit] = {}
        for board, value in u.scores:
            key = (board, u.user_id)
            old = records.get(key) or current.get(key)
            new, improved = step(
                specs[board], old, Credit(u.user_id, value, stamps[i], u.username, u.metadata)
            )
            if improved:
                records[key] = new
            version = versions.get(board, 0)
            credits[board] = BoardCredit(seasons[board], new.score, improved, version)
            ledger.append(
                CreditRow(u.action_id, board, seasons[board], u.user_id, value, new.score, improved, version)
            )
        results[i] = Result(Outcome.CREDITED, u.user_id, credits)
    for i, j in plan.repeats.items():
        original = results[j]
        if original is None:
            raise AssertionError("a repeat follows its original")
        results[i] = Result(Outcome.DUPLICATE, original.user_id, original.boards)
    done = [r for r in results if r is not None]
    if len(done) != len(results):
        raise AssertionError("every update of a batch must have a result")
    return Applied(done, records, ledger)


def committed_values(
    applied: Applied,
    seasons: Mapping[str, int],
    versions: Mapping[str, int],
    tops: Mapping[str, Sequence[Entry]],
) -> list[Committed]:
    """One `Committed` per board written, sorted by board."""
    standings: dict[str, list[Entry]] = {board: [] for board in versions}
    for (board, _), record in applied.records.items():
        standings[board].append(record.entry())
    return [
        Committed(
            board,
            seasons[board],
            versions[board],
            tuple(standings[board]),
            tuple(tops[board]) if board in tops else None,
        )
        for board in sorted(versions)
    ]


class Store(Protocol):
    """What the service needs from a database."""

    async def apply_batch(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        """Credit a batch in one transaction.

        Raises StorageError if it did not commit because of an outage, and
        DataRefused (nothing committed) if the database refused its data.
        """
        ...

    async def ensure_board(self, spec: BoardSpec, now_s: int, ends_at: int | None) -> BoardState:
        """The board's row, created at season 1 if new.

        `ends_at` is the end of the current season under `spec.reset` as of
        `now_s`; it replaces the stored one only when the schedule changed.
        """
        ...

    async def end_season(
        self, spec: BoardSpec, season: int, ended_at: int, ends_at: int | None, audit: Audit | None = None
    ) -> SeasonChange | None:
        """End `season` of the board at `ended_at` and start the next (ending at `ends_at`).

        None if `season` is not the current one (a retried or raced end).
        Seasons beyond `spec.archive` finished ones are deleted. `audit`
        (an admin's reset) is recorded in the same transaction.
        """
        ...

    async def season_started(self, board: str, season: int) -> int | None:
        """When a kept season started (Unix seconds), or None if it is not kept."""
        ...

    async def top(self, board: str, season: int, k: int) -> list[Entry]:
        """The best `k` entries of a board's season by the ranking rule."""
        ...

    async def load_board(self, board: str, k: int) -> tuple[BoardState, list[Entry]]:
        """A board's row and its current season's top `k`, from one snapshot."""
        ...

    async def standing(self, board: str, season: int, user_id: str) -> UserStanding | None:
        """A user's entry and rank, or None if the user has no entry."""
        ...

    async def count(self, board: str, season: int) -> int:
        """How many players are ranked on a board's season."""
        ...

    async def page(self, board: str, season: int, offset: int, limit: int) -> Ranked:
        """The entries ranked `offset + 1` to `offset + limit`, read in one transaction."""
        ...

    async def around(self, board: str, season: int, user_id: str, count: int) -> Ranked | None:
        """A player's entry and `count` on each side (filled from the other side at an edge)."""
        ...

    async def many(self, board: str, season: int, user_ids: Sequence[str]) -> Ranked:
        """The ranked ones of `user_ids`, best first, with the board's total."""
        ...

    def scan(self, board: str, season: int, chunk: int) -> AsyncGenerator[ScanChunk, None]:
        """Every entry of a board's season in ranking order, from one snapshot, in chunks.

        Each chunk carries the board's version the snapshot includes (the
        same for all chunks) and rows `(user_id, username, score,
        reached_at, metadata)`; the first comes even when there are no rows,
        and none at all if `season` is not the board's current one.
        """
        ...

    def is_blocked(self, user_id: str) -> bool:
        """Whether an admin has blocked the player (kept in memory, loaded at open)."""
        ...

    async def remove_entry(self, spec: BoardSpec, user_id: str, audit: Audit) -> Moderated | None:
        """Delete a player's entry from the board's current season; None if there is none."""
        ...

    async def block(self, user_id: str, audit: Audit) -> Moderated:
        """Block a player and delete their entries from every board's current season."""
        ...

    async def unblock(self, user_id: str, audit: Audit) -> bool:
        """Lift a block; False if the player was not blocked."""
        ...

    async def revert(self, action_id: str, audit: Audit) -> Moderated | None:
        """Undo an action on every board it wrote; None if the ledger has no such action."""
        ...

    async def audit_log(self, limit: int) -> list[AuditRow]:
        """The latest recorded admin operations, latest first."""
        ...

    async def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...
