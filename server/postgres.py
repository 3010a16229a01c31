"""PostgreSQL store on an asyncpg pool (the production store).

Each batch is one transaction of three statements: a ledger lookup by
`action_id = ANY($1)`, a set-based user upsert over `unnest` arrays, and a
set-based ledger insert. If another process inserted one of the batch's action
ids between the lookup and the insert, the unique constraint aborts the
transaction and the batch is planned again, so nothing is credited twice even
with two writers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from .board import Entry
from .store import (
    BatchResult,
    DataRefused,
    LedgerRow,
    StorageError,
    Update,
    UserStanding,
    finish_batch,
    plan_batch,
)

# (version, statements). Applied in order under an advisory lock.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            id          text COLLATE "C" PRIMARY KEY,
            username    text,
            score       bigint NOT NULL,
            reached_at  bigint NOT NULL,
            updated_at  bigint NOT NULL
        );
        CREATE INDEX users_by_rank ON users (score DESC, reached_at, id);
        CREATE TABLE scores_log (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            action_id   text COLLATE "C" NOT NULL UNIQUE,
            user_id     text COLLATE "C" NOT NULL,
            delta       bigint NOT NULL CHECK (delta > 0),
            score_after bigint NOT NULL,
            source      text NOT NULL CHECK (source IN ('player', 'service')),
            created_at  bigint NOT NULL
        );
        CREATE INDEX scores_log_by_user ON scores_log (user_id, id);
        """,
    ),
]
_MIGRATION_LOCK = 0x5C0EB0A4D

_EXISTING = """
SELECT action_id, user_id, delta, score_after FROM scores_log WHERE action_id = ANY($1::text[])
"""
_UPSERT_USERS = """
INSERT INTO users AS t (id, username, score, reached_at, updated_at)
SELECT u.id, u.username, u.delta, u.reached_at, $5
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(id, username, delta, reached_at)
ON CONFLICT (id) DO UPDATE SET
    score = t.score + EXCLUDED.score,
    username = COALESCE(EXCLUDED.username, t.username),
    reached_at = EXCLUDED.reached_at,
    updated_at = EXCLUDED.updated_at
RETURNING id, COALESCE(username, id), score, reached_at
"""
_INSERT_LEDGER = """
INSERT INTO scores_log (action_id, user_id, delta, score_after, source, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[])
"""
_TOP = """
SELECT id, COALESCE(username, id), score, reached_at FROM users
ORDER BY score DESC, reached_at, id LIMIT $1
"""
_STANDING = """
SELECT u.id, COALESCE(u.username, u.id), u.score, u.reached_at,
       (SELECT count(*) FROM users WHERE score > u.score)
     + (SELECT count(*) FROM users
        WHERE score = u.score AND (reached_at < u.reached_at OR (reached_at = u.reached_at AND id < u.id)))
     + 1 AS rank
FROM users u WHERE u.id = $1
"""
_CONFLICT_RETRIES = 3
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(user_id=row[0], username=row[1], score=row[2], reached_at=row[3])


class PostgresStore:
    """The Store interface on a PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._closed = False

    @classmethod
    async def open(
        cls, url: str, *, timeout_s: float = 5.0, pool_min: int = 1, pool_max: int = 4
    ) -> PostgresStore:
        """Create the pool and apply migrations."""
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=pool_min,
                max_size=pool_max,
                timeout=timeout_s,
                command_timeout=timeout_s,
                server_settings={
                    "application_name": "scoreboard",
                    # A prepared statement's generic plan, chosen while the
                    # ledger was new and tiny, is a sequential scan that
                    # PostgreSQL keeps for the connection's life; planning
                    # each execution keeps the action-id lookup on its index
                    # as the table grows (tests/test_store.py reads the scan
                    # counters). Planning costs tens of microseconds a batch.
                    "plan_cache_mode": "force_custom_plan",
                },
            )
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc
        store = cls(pool, timeout_s=timeout_s)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        try:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r[0] for r in await con.fetch("SELECT version FROM schema_migrations")}
                for version, script in MIGRATIONS:
                    if version in done:
                        continue
                    await con.execute(script)
                    await con.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def apply_batch(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        """Credit a batch in one transaction; DataRefused if PostgreSQL refused its data."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return await self._apply(batch, stamps, now_us)
            except asyncpg.UniqueViolationError:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise StorageError("postgresql: action ids kept colliding with another writer") from None
            except asyncpg.NumericValueOutOfRangeError as exc:  # a score sum past bigint
                raise DataRefused(f"postgresql: {exc}", overflow=True) from exc
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # Class 22 (NUL in text, a value asyncpg cannot encode: lone
                # surrogates, ints past int64) and 23 (CHECK, NOT NULL).
                raise DataRefused(f"postgresql: {exc}", overflow="int64" in str(exc)) from exc
            except _DRIVER_ERRORS as exc:
                raise StorageError(f"postgresql: {exc}") from exc
        raise AssertionError("unreachable")

    async def _apply(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        async with self._pool.acquire() as con, con.transaction():
            rows = await con.fetch(_EXISTING, [u.action_id for u in batch])
            existing = {r[0]: LedgerRow(r[0], r[1], r[2], r[3]) for r in rows}
            plan = plan_batch(batch, stamps, existing)
            standings: dict[str, Entry] = {}
            if plan.users:
                users = plan.users
                returned = await con.fetch(
                    _UPSERT_USERS,
                    [d.user_id for d in users],
                    [d.username for d in users],
                    [d.delta for d in users],
                    [d.reached_at for d in users],
                    now_us,
                )
                standings = {r[0]: _entry(r) for r in returned}
            result = finish_batch(plan, standings, now_us)
            if result.ledger:
                ledger = result.ledger
                await con.execute(
                    _INSERT_LEDGER,
                    [r.action_id for r in ledger],
                    [r.user_id for r in ledger],
                    [r.delta for r in ledger],
                    [r.score_after for r in ledger],
                    [r.source for r in ledger],
                    [r.created_at for r in ledger],
                )
        return result

    async def top(self, k: int) -> list[Entry]:
        """The best `k` users."""
        try:
            return [_entry(r) for r in await self._pool.fetch(_TOP, k)]
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def standing(self, user_id: str) -> UserStanding | None:
        """A user's entry and rank."""
        try:
            row = await self._pool.fetchrow(_STANDING, user_id)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc
        return None if row is None else UserStanding(_entry(row), row[4])

    async def ping(self) -> None:
        """Check that a pooled connection answers."""
        try:
            await self._pool.fetchval("SELECT 1")
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def close(self) -> None:
        """Close the pool, terminating it if a graceful close fails; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout_s)
        except BaseException:
            self._pool.terminate()
            raise
