"""Start-up time with a large user table: process start until the server is useful.

For each store it prepares two databases, migrated by the server's own code:
an empty one (the baseline) and one seeded with `--users` users (default
1,000,000) with distinct ids, skewed scores (many ties at the bottom, few at
the top) and distinct `reached_at` stamps spread over 30 days. Seeding is done
in the database: a recursive CTE on SQLite, generate_series on PostgreSQL
(the rank index is dropped during the load and rebuilt from its own
definition afterwards), then ANALYZE.

Each run starts `python -m server serve` pinned to CPU 0 and, from CPU 1,
measures the time from just before the spawn until `GET /readyz` answers 200
(polled every 2 ms) and until `GET /scores` returns the expected top 10 (the
expected board is computed in Python from the same formula, not read from
the database). It also reads the server's own `storage_ready` figure (store
open, migrations check and board load) and times one `GET /api/users/{id}`
(median of 5) for users ranked mid-table (a rank query over the table). The variants
alternate: empty, seeded, empty, seeded, ...

Run (from the repository root, in the venv):

    python -m loadtest.startup                            # both stores, 1M users, 5 runs each
    python -m loadtest.startup --stores sqlite --users 200000 --runs 3

Prints the seeding time per store, one line per run, and a table of medians
(ready, board correct, storage_ready, mid-table rank lookup), marking whether
the seeded start-up meets `--target` seconds (default 2). Exits 1 if a board
was wrong or the target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

from loadtest.common import (
    CLIENT_CPU,
    SERVER_CPU,
    ServerProcess,
    create_pg_database,
    default_pg_url,
    drop_pg_database,
    fmt,
    format_table,
    median,
    pin_to_cpu,
    remove_sqlite,
    sqlite_file,
)
from scoreboard.store import open_store

BASE_US = 1_700_000_000_000_000
STEP_US = 2_592_000  # 1,000,003 steps of 2.592 s: 30 days
TOP_K = 10

# The seed formula, once per dialect and once in Python (for the expected board).
# h is a multiplicative hash of i; score = 1 + a^2 / 10^6 with a = h mod 10^6 is
# skewed towards low scores; reached_at is a permutation of i (1,000,003 is prime).
_SQLITE_SEED = f"""
INSERT INTO users (id, username, score, reached_at, updated_at)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?),
h(i, a) AS (SELECT i, ((i * 2654435761) % 4294967296) % 1000000 FROM s)
SELECT printf('u%07d', i), 'Player ' || i, 1 + (a * a) / 1000000,
       {BASE_US} + ((i * 40503) % 1000003) * {STEP_US},
       {BASE_US} + ((i * 40503) % 1000003) * {STEP_US}
FROM h
"""
_PG_SEED = f"""
INSERT INTO users (id, username, score, reached_at, updated_at)
SELECT 'u' || lpad(i::text, 7, '0'), 'Player ' || i, 1 + (a * a) / 1000000,
       {BASE_US} + ((i * 40503) % 1000003) * {STEP_US},
       {BASE_US} + ((i * 40503) % 1000003) * {STEP_US}
FROM (SELECT i, ((i * 2654435761) % 4294967296) % 1000000 AS a
      FROM generate_series(1::bigint, $1::bigint) AS i) AS h
"""


@dataclass(frozen=True, slots=True)
class Seeded:
    """What the formula gives user i."""

    user_id: str
    username: str
    score: int
    reached_at: int


def seeded_user(i: int) -> Seeded:
    """User i of the seed (the same formula as the SQL)."""
    a = ((i * 2654435761) % 4294967296) % 1000000
    reached = BASE_US + ((i * 40503) % 1000003) * STEP_US
    return Seeded(f"u{i:07d}", f"Player {i}", 1 + (a * a) // 1000000, reached)


def expected_board(users: int, k: int = TOP_K) -> list[dict[str, Any]]:
    """The top k of the seed by the ranking rule, as GET /scores shows it."""
    best = heapq.nsmallest(
        k, (seeded_user(i) for i in range(1, users + 1)), key=lambda u: (-u.score, u.reached_at, u.user_id)
    )
    return [
        {"rank": n, "userId": u.user_id, "username": u.username, "score": u.score}
        for n, u in enumerate(best, start=1)
    ]


def mid_table_users(users: int, count: int = 5) -> list[str]:
    """Users ranked near the middle of the table (for the rank-query timing)."""
    scores = sorted((seeded_user(i).score, i) for i in range(1, users + 1, max(1, users // 2000)))
    mid = len(scores) // 2
    return [seeded_user(i).user_id for _, i in scores[mid : mid + count]]


# -- seeding ------------------------------------------------------------------------------


async def migrate(url: str) -> None:
    """Create the schema with the server's own migrations."""
    store = await open_store(url)
    await store.close()


def seed_sqlite(url: str, users: int) -> None:
    """Insert `users` users with one recursive-CTE INSERT, index rebuilt after."""
    con = sqlite3.connect(sqlite_file(url), isolation_level=None)
    try:
        con.execute("PRAGMA synchronous = OFF")
        con.execute("PRAGMA cache_size = -262144")
        (index_sql,) = con.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'users_by_rank'"
        ).fetchone()
        con.execute("BEGIN")
        con.execute("DROP INDEX users_by_rank")
        con.execute(_SQLITE_SEED, (users,))
        con.execute(index_sql)
        con.execute("COMMIT")
        con.execute("ANALYZE")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


async def seed_postgres(url: str, users: int) -> None:
    """Insert `users` users from generate_series, index rebuilt after, then VACUUM ANALYZE."""
    con = await asyncpg.connect(url, timeout=10)
    try:
        index_sql = await con.fetchval("SELECT pg_get_indexdef('users_by_rank'::regclass)")
        async with con.transaction():
            await con.execute("DROP INDEX users_by_rank")
            await con.execute(_PG_SEED, users)
            await con.execute(index_sql)
        await con.execute("VACUUM (ANALYZE) users")
    finally:
        await con.close()


async def prepare(store: str, users: int, workdir: Path, pg_admin_url: str) -> tuple[str, float]:
    """A migrated database with `users` seeded users; returns its URL and the seconds it took."""
    started = time.perf_counter()
    if store == "sqlite":
        url = f"sqlite:///{workdir / f'startup-{users}.db'}"
    else:
        url = await create_pg_database(pg_admin_url, prefix="sb_bench_startup")
    await migrate(url)
    if users:
        if store == "sqlite":
            await asyncio.to_thread(seed_sqlite, url, users)
        else:
            await seed_postgres(url, users)
    return url, time.perf_counter() - started


async def discard(url: str, pg_admin_url: str) -> None:
    """Remove a database made by `prepare`."""
    if url.startswith("sqlite:"):
        remove_sqlite(sqlite_file(url))
    else:
        await drop_pg_database(pg_admin_url, url)


# -- one start -----------------------------------------------------------------------------


@dataclass(slots=True)
class Start:
    """One measured start."""

    store: str
    users: int
    run: int
    ready_s: float
    board_s: float
    board_ok: bool
    storage_ready_ms: float
    lookup_ms: float


async def measure_start(
    *,
    store: str,
    url: str,
    users: int,
    run: int,
    expected: list[dict[str, Any]],
    probe_users: Sequence[str],
    workdir: Path,
    tree: Path | None = None,
) -> Start:
    """Start the server, time readiness and a correct board, time one rank lookup, stop."""
    server = ServerProcess(database_url=url, workdir=workdir, cpu=SERVER_CPU, tree=tree)
    server.start()
    try:
        ready_s = await server.wait_ready(timeout_s=60, poll_s=0.002)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(server.url + "/scores") as resp:
                body = await resp.json()
            board_s = time.perf_counter() - server.started_at
            board_ok = resp.status == 200 and body.get("topUsers") == expected
            lookups: list[float] = []
            for user in probe_users:
                t0 = time.perf_counter()
                async with session.get(f"{server.url}/api/users/{user}") as resp:
                    await resp.read()
                    if resp.status == 200:
                        lookups.append((time.perf_counter() - t0) * 1000)
            lookup_ms = median(lookups)
    finally:
        await server.stop()
    event = server.event("storage_ready")
    storage_ms = float(event["ms"]) if event else math.nan
    return Start(store, users, run, ready_s, board_s, board_ok, storage_ms, lookup_ms)


# -- the comparison -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupConfig:
    """What to compare."""

    stores: Sequence[str]
    users: int
    runs: int
    pg_admin_url: str
    workdir: Path
    target_s: float = 2.0
    tree: Path | None = None


async def compare(
    cfg: StartupConfig, echo: Callable[[str], None] = print
) -> tuple[list[Start], dict[str, float]]:
    """Seed, then alternate empty and seeded starts per store; returns the starts and seed times."""
    starts: list[Start] = []
    seed_s: dict[str, float] = {}
    expected = {0: [], cfg.users: expected_board(cfg.users)}
    probe: dict[int, list[str]] = {0: [], cfg.users: mid_table_users(cfg.users)}
    for store in cfg.stores:
        urls: dict[int, str] = {}
        try:
            for users in (0, cfg.users):
                urls[users], took = await prepare(store, users, cfg.workdir, cfg.pg_admin_url)
                if users:
                    seed_s[store] = took
                    echo(f"{store}: seeded {users:,} users in {took:.1f} s")
            for run in range(1, cfg.runs + 1):
                for users in (0, cfg.users):
                    s = await measure_start(
                        store=store,
                        url=urls[users],
                        users=users,
                        run=run,
                        expected=expected[users],
                        probe_users=probe[users],
                        workdir=cfg.workdir,
                        tree=cfg.tree,
                    )
                    starts.append(s)
                    echo(
                        f"[run {run}] {store:8} {users:>9,} users: ready {s.ready_s * 1000:7.0f} ms, "
                        f"board {'correct' if s.board_ok else 'WRONG'} at {s.board_s * 1000:7.0f} ms, "
                        f"storage_ready {fmt(s.storage_ready_ms, 1)} ms, rank lookup {fmt(s.lookup_ms, 1)} ms"
                    )
        finally:
            for url in urls.values():
                await discard(url, cfg.pg_admin_url)
    return starts, seed_s


def summary(starts: Sequence[Start], seed_s: dict[str, float], cfg: StartupConfig) -> str:
    """Medians per store and database size."""
    rows: list[list[object]] = []
    for store in cfg.stores:
        for users in (0, cfg.users):
            runs = [s for s in starts if s.store == store and s.users == users]
            if not runs:
                continue
            ready = median([s.ready_s for s in runs])
            low, high = min(s.ready_s for s in runs), max(s.ready_s for s in runs)
            board = median([s.board_s for s in runs])
            verdict = "-" if not users else ("yes" if board < cfg.target_s else "NO")
            rows.append(
                [
                    store,
                    f"{users:,}",
                    fmt(ready * 1000, 0),
                    f"{fmt(low * 1000, 0)}-{fmt(high * 1000, 0)}",
                    fmt(board * 1000, 0),
                    f"{sum(s.board_ok for s in runs)}/{len(runs)}",
                    fmt(median([s.storage_ready_ms for s in runs]), 1),
                    fmt(median([s.lookup_ms for s in runs]), 1),
                    fmt(seed_s.get(store, math.nan), 1) if users else "-",
                    verdict,
                ]
            )
    headers = ["store", "users", "ready ms", "range", "board ok ms", "board correct", "storage_ready ms"]
    headers += ["mid-rank lookup ms", "seed s", f"< {cfg.target_s:g} s"]
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--users", type=int, default=1_000_000, help="users to seed (default 1000000)")
    p.add_argument("--runs", type=int, default=5, help="starts per database (default 5)")
    p.add_argument("--target", type=float, default=2.0, help="seconds the seeded start must beat (default 2)")
    p.add_argument("--pg-url", default=default_pg_url(), help="admin URL to create scratch databases with")
    p.add_argument("--tree", type=Path, help="checkout whose server package runs (default: this one)")
    p.add_argument("--client-cpu", type=int, default=CLIENT_CPU, help="CPU for this process (default 1)")
    args = p.parse_args(argv)
    pin_to_cpu(args.client_cpu)
    with tempfile.TemporaryDirectory(prefix="sb-startup-") as tmp:
        cfg = StartupConfig(
            stores=[s.strip() for s in args.stores.split(",") if s.strip()],
            users=args.users,
            runs=args.runs,
            pg_admin_url=args.pg_url,
            workdir=Path(tmp),
            target_s=args.target,
            tree=args.tree.resolve() if args.tree else None,
        )
        print(
            f"start-up: empty vs {cfg.users:,} users, {cfg.runs} alternated runs per store, server on CPU 0"
        )
        starts, seed_s = uvloop.run(compare(cfg))
    print()
    print(summary(starts, seed_s, cfg))
    ok = all(s.board_ok for s in starts)
    seeded = [s for s in starts if s.users]
    met = all(median([s.board_s for s in seeded if s.store == store]) < cfg.target_s for store in cfg.stores)
    return 0 if ok and met else 1


if __name__ == "__main__":
    raise SystemExit(main())
