"""The storage interface, its result types, and the batch plan both stores share.

A store applies a batch of updates in one transaction: it looks up which
action ids the ledger already holds, credits the rest (one set-based upsert of
the users, one insert into the ledger), and commits. The unique `action_id`
in the ledger is what makes crediting exactly-once across batches, races and
restarts; `plan_batch` and `finish_batch` are the pure halves of that logic so
SQLite and PostgreSQL decide identically.

The URL scheme picks the store: `sqlite:///path/file.db` or `postgresql://...`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from .board import Entry


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


INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Update:
    """One requested credit.

    `allow_credit=False` asks only for the outcome of an action already
    credited (a retry with an expired ticket); if the action is new it is
    reported as `Outcome.NOT_CREDITED` and nothing is written.
    """

    action_id: str
    user_id: str
    username: str | None
    delta: int
    source: Source
    allow_credit: bool = True
    # Carried only so the commit can be logged with the request that asked.
    request_id: str | None = field(default=None, compare=False)


class Outcome(StrEnum):
    """What became of one update."""

    CREDITED = "credited"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    NOT_CREDITED = "not_credited"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one update; `new_score` is the score after that action."""

    outcome: Outcome
    user_id: str
    new_score: int | None = None


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """A row of `scores_log` (existing or about to be inserted)."""

    action_id: str
    user_id: str
    delta: int
    score_after: int
    source: str = ""
    created_at: int = 0


@dataclass(frozen=True, slots=True)
class UserDelta:
    """The net increment of one user within a batch."""

    user_id: str
    username: str | None
    delta: int
    reached_at: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Results aligned with the batch, and final standings of credited users."""

    results: list[Result]
    credited: list[Entry]
    ledger: list[LedgerRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UserStanding:
    """A user's score and rank from the store."""

    entry: Entry
    rank: int


@dataclass(slots=True)
class BatchPlan:
    """Intermediate state between the ledger lookup and the user upsert."""

    batch: Sequence[Update]
    stamps: Sequence[int]
    results: list[Result | None]
    fresh: list[int]
    # index of a later in-batch duplicate -> index of the fresh update it repeats
    repeats: dict[int, int]
    users: list[UserDelta]


def plan_batch(
    batch: Sequence[Update],
    stamps: Sequence[int],
    existing: Mapping[str, LedgerRow],
) -> BatchPlan:
    """Classify each update against the ledger and the batch itself.

    `stamps[i]` is the `reached_at` stamp of update i if it is credited.
    """
    results: list[Result | None] = [None] * len(batch)
    fresh: list[int] = []
    repeats: dict[int, int] = {}
    first: dict[str, int] = {}
    for i, u in enumerate(batch):
        row = existing.get(u.action_id)
        if row is not None:
            same = row.user_id == u.user_id and row.delta == u.delta
            results[i] = (
                Result(Outcome.DUPLICATE, u.user_id, row.score_after)
                if same
                else Result(Outcome.CONFLICT, u.user_id)
            )
            continue
        j = first.get(u.action_id)
        if j is not None:
            original = batch[j]
            if original.user_id == u.user_id and original.delta == u.delta:
                repeats[i] = j
            else:
                results[i] = Result(Outcome.CONFLICT, u.user_id)
            continue
        if not u.allow_credit:
            results[i] = Result(Outcome.NOT_CREDITED, u.user_id)
            continue
        first[u.action_id] = i
        fresh.append(i)
    totals: dict[str, UserDelta] = {}
    for i in fresh:
        u = batch[i]
        prev = totals.get(u.user_id)
        total = u.delta + (prev.delta if prev else 0)
        if total > INT64_MAX:
            raise DataRefused(f"the credits of {u.user_id!r} in one batch exceed 2^63-1", overflow=True)
        totals[u.user_id] = UserDelta(
            user_id=u.user_id,
            username=u.username if u.username is not None else (prev.username if prev else None),
            delta=total,
            reached_at=stamps[i],
        )
    users = sorted(totals.values(), key=lambda d: d.user_id)
    return BatchPlan(batch, stamps, results, fresh, repeats, users)


def finish_batch(plan: BatchPlan, standings: Mapping[str, Entry], now_us: int) -> BatchResult:
    """Per-update results and ledger rows, given each user's score after the batch."""
    remaining = {user_id: entry.score for user_id, entry in standings.items()}
    after: dict[int, int] = {}
    # Walk backwards: the last credit of a user ends at the final score.
    for i in reversed(plan.fresh):
        u = plan.batch[i]
        after[i] = remaining[u.user_id]
        remaining[u.user_id] -= u.delta
    results = list(plan.results)
    ledger: list[LedgerRow] = []
    for i in plan.fresh:
        u = plan.batch[i]
        results[i] = Result(Outcome.CREDITED, u.user_id, after[i])
        ledger.append(LedgerRow(u.action_id, u.user_id, u.delta, after[i], u.source.value, now_us))
    for i, j in plan.repeats.items():
        results[i] = Result(Outcome.DUPLICATE, plan.batch[i].user_id, after[j])
    done = [r for r in results if r is not None]
    if len(done) != len(results):
        raise AssertionError("every update of a batch must have a result")
    return BatchResult(done, [standings[d.user_id] for d in plan.users], ledger)


class Store(Protocol):
    """What the service needs from a database."""

    async def apply_batch(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        """Credit a batch in one transaction.

        Raises StorageError if it did not commit because of an outage, and
        DataRefused (nothing committed) if the database refused its data.
        """
        ...

    async def top(self, k: int) -> list[Entry]:
        """The best `k` users by the ranking rule."""
        ...

    async def standing(self, user_id: str) -> UserStanding | None:
        """A user's entry and rank, or None if the user has no score."""
        ...

    async def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


async def open_store(
    url: str,
    *,
    timeout_s: float = 5.0,
    pool_min: int = 1,
    pool_max: int = 4,
    sqlite_synchronous: str = "FULL",
) -> Store:
    """Open (and migrate) the store named by `url`'s scheme."""
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        return await SqliteStore.open(url, timeout_s=timeout_s, synchronous=sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return await PostgresStore.open(url, timeout_s=timeout_s, pool_min=pool_min, pool_max=pool_max)
    raise ValueError(
        f"unsupported database URL scheme in {url.split(':', 1)[0]!r}; use sqlite:// or postgresql://"
    )
