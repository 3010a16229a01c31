"""Shared pieces of the load tests: the server as a pinned subprocess, generated
board catalogs, scratch databases (and copies) and what they hold after a
run, CPU and memory accounting, and the statistics and tables the scripts print.

Not run by itself. Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import orjson

REPO = Path(__file__).resolve().parent.parent

# Secrets shared by the load generators and the servers they start (each at
# least 32 bytes, as the server requires). They only ever protect throwaway
# servers on 127.0.0.1.
JWT_SECRET = "loadtest-jwt-secret-0123456789abcdef0123456789abcdef"
TICKET_SECRET = "loadtest-ticket-secret-0123456789abcdef0123456789ab"

PG_URL_ENV = "SCOREBOARD_BENCH_DATABASE_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVER_CPU = 0
CLIENT_CPU = 1
# The board the server's built-in catalog has, and the default of every
# catalog written here.
DEFAULT_BOARD = "global"


def default_pg_url() -> str:
    """The PostgreSQL server to create scratch databases on (an admin connection URL)."""
    return os.environ.get(PG_URL_ENV) or os.environ.get("SCOREBOARD_TEST_DATABASE_URL") or DEFAULT_PG_URL


def pin_to_cpu(cpu: int | None) -> None:
    """Pin this process (the load generator) to one CPU, if the machine has it."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    if cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- statistics ----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; NaN if empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float]) -> float:
    """Median of `values`, ignoring NaN; NaN if nothing is left."""
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return math.nan
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned columns (Markdown-compatible pipes)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table, '-' for NaN."""
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


# -- CPU accounting ----------------------------------------------------------------


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per-core (busy, total) jiffies from /proc/stat (empty where unavailable)."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *rest = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in rest]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        out[int(name[3:])] = (sum(values[:8]) - idle, sum(values[:8]))
    return out


def core_busy(
    before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]]
) -> dict[int, float]:
    """Per-core busy percentage between two `core_ticks()` samples (all processes)."""
    busy: dict[int, float] = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        busy[cpu] = 100.0 * (b1 - b0) / (t1 - t0) if t1 > t0 else math.nan
    return busy


def rss_bytes(pid: int) -> float:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), NaN if unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024  # reported in kB
    return math.nan


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (NaN if unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the server subprocess -----------------------------------------------------------


class ServerError(RuntimeError):
    """The server exited or never became ready."""


class ServerProcess:
    """`python -m server serve` in a subprocess, pinned with taskset, logging to a file.

    `flags` are `scoreboard serve` flags without the leading dashes, e.g.
    `{"flush-max-batch": "1"}`; `env` adds environment variables (e.g.
    `{"SCOREBOARD_RANKS": "store"}`, set after this class's own). The
    server's JSON log (stderr) goes to `log_path`, so a full pipe can never
    stall it. `tree` is the checkout whose `server` package runs (default:
    this repository).
    """

    def __init__(
        self,
        *,
        database_url: str,
        workdir: Path,
        flags: Mapping[str, str] | None = None,
        cpu: int | None = SERVER_CPU,
        log_level: str = "info",
        port: int | None = None,
        ack: str = "commit",
        tree: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.env = dict(env or {})
        self.workdir = workdir
        self.flags = dict(flags or {})
        self.cpu = cpu
        self.log_level = log_level
        self.port = port or free_port()
        self.ack = ack
        # `python -m server` imports the `server` package of the working
        # directory first, so another checkout (a patch to compare) can run.
        self.tree = tree or REPO
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = math.nan
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The argv that starts the server (with the taskset prefix when pinned)."""
        argv = [sys.executable, "-m", "server", "serve"]
        for name, value in self.flags.items():
            argv += [f"--{name}", value]
        taskset = shutil.which("taskset")
        if self.cpu is not None and taskset is not None and self.cpu < (os.cpu_count() or 1):
            argv = [taskset, "-c", str(self.cpu), *argv]
        return argv

    def environment(self) -> dict[str, str]:
        """The parent's environment without any SCOREBOARD_* setting, plus this server's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
        env.update(
            SCOREBOARD_HOST="127.0.0.1",
            SCOREBOARD_PORT=str(self.port),
            SCOREBOARD_DATABASE_URL=self.database_url,
            SCOREBOARD_DATA_DIR=str(self.workdir / "data"),
            SCOREBOARD_JWT_SECRET=JWT_SECRET,
            SCOREBOARD_TICKET_SECRET=TICKET_SECRET,
            SCOREBOARD_ACK=self.ack,
            SCOREBOARD_LOG_LEVEL=self.log_level,
        )
        env.update(self.env)
        return env

    def start(self) -> None:
        """Spawn the process; `started_at` is the perf_counter just before the spawn."""
        self._log = self.log_path.open("wb")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.tree,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        """The server's process id (taskset execs, so this is Python's)."""
        if self.proc is None:
            raise ServerError("the server was not started")
        return self.proc.pid

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")

    async def wait_ready(self, timeout_s: float = 30.0, poll_s: float = 0.005) -> float:
        """Poll GET /readyz until it answers 200; returns seconds since `start()`."""
        deadline = time.perf_counter() + timeout_s
        timeout = aiohttp.ClientTimeout(total=2.0)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while time.perf_counter() < deadline:
                self._check_alive()
                try:
                    async with session.get(self.url + "/readyz") as resp:
                        await resp.read()
                        if resp.status == 200:
                            return time.perf_counter() - self.started_at
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                await asyncio.sleep(poll_s)
        raise ServerError(f"the server was not ready within {timeout_s} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far (all threads)."""
        return process_cpu_seconds(self.pid)

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after `timeout_s`); returns the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode if proc.returncode is not None else -1

    def log_events(self) -> list[dict[str, Any]]:
        """The server's JSON log lines (non-JSON lines are skipped)."""
        events: list[dict[str, Any]] = []
        try:
            raw = self.log_path.read_bytes()
        except OSError:
            return events
        for line in raw.splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(line)
                if isinstance(doc, dict):
                    events.append(doc)
        return events

    def event(self, name: str) -> dict[str, Any] | None:
        """The last log event called `name`."""
        found = [e for e in self.log_events() if e.get("event") == name]
        return found[-1] if found else None

    def warnings(self) -> list[dict[str, Any]]:
        """Log events at warning level or above."""
        return [e for e in self.log_events() if e.get("level") in {"warning", "error", "critical"}]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# -- boards ----------------------------------------------------------------------------


def board_ids(count: int) -> list[str]:
    """`count` board ids: `global` (the default) and `board2` ... `board<count>`."""
    if count < 1:
        raise ValueError("a catalog needs at least one board")
    return [DEFAULT_BOARD, *(f"board{n}" for n in range(2, count + 1))]


def catalog_toml(boards: Sequence[str]) -> str:
    """A catalog of incr boards (higher first, never reset); the first is the default.

    Each board keeps the server's defaults otherwise: top 10, a delta of 1 to
    SCOREBOARD_MAX_DELTA (1000).
    """
    tables = [f"[boards.{board}]\n" for board in boards]
    tables[0] += "default = true\n"
    return "\n".join(tables)


def write_catalog(workdir: Path, boards: Sequence[str]) -> Path:
    """`catalog_toml(boards)` as a file in `workdir` (for `--catalog-file`); returns its path."""
    path = workdir / f"catalog-{len(boards)}-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(catalog_toml(boards), encoding="utf-8")
    return path


# -- scratch databases -----------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


def database_name(url: str) -> str:
    """The database a PostgreSQL URL points at."""
    return url.partition("?")[0].rpartition("/")[2]


async def create_pg_database(admin_url: str, prefix: str = "sb_bench") -> str:
    """A new empty PostgreSQL database; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    con = await asyncpg.connect(admin_url, timeout=10)
    try:
        await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    return with_database(admin_url, name)


async def drop_pg_database(admin_url: str, url: str) -> None:
    """Drop a database made by `create_pg_database` (closing its connections)."""
    con = await asyncpg.connect(admin_url, timeout=10)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
    finally:
        await con.close()


async def clone_database(url: str, pg_admin_url: str) -> str:
    """A copy of a SQLite or PostgreSQL database (nothing may be writing to it); returns its URL.

    SQLite: the backup API (WAL content included) into a new file next to it.
    PostgreSQL: `CREATE DATABASE ... TEMPLATE` (FILE_COPY: a copy of the files,
    faster than logging them for a large database), retried for a few seconds
    while the last sessions of a stopped server are still going away.
    Remove it with `discard_database`.
    """
    if url.startswith("sqlite:"):
        source = sqlite_file(url)
        target = source.with_name(f"{source.stem}-copy-{uuid.uuid4().hex[:8]}{source.suffix}")

        def copy() -> None:
            src = sqlite3.connect(source)
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()

        await asyncio.to_thread(copy)
        return f"sqlite:///{target}"
    name = f"{database_name(url)[:40]}_c{uuid.uuid4().hex[:8]}"
    con = await asyncpg.connect(pg_admin_url, timeout=10)
    try:
        # STRATEGY exists from PostgreSQL 15 on (before it, FILE_COPY was the only way).
        strategy = " STRATEGY FILE_COPY" if con.get_server_version().major >= 15 else ""
        for attempt in range(50):
            try:
                await con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{database_name(url)}"{strategy}')
                break
            except asyncpg.ObjectInUseError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await con.close()
    return with_database(pg_admin_url, name)


async def discard_database(url: str, pg_admin_url: str) -> None:
    """Remove a SQLite file (with its WAL) or drop a PostgreSQL database."""
    if url.startswith("sqlite:"):
        remove_sqlite(sqlite_file(url))
    else:
        await drop_pg_database(pg_admin_url, url)


def sqlite_file(url: str) -> Path:
    """The file of a `sqlite:///...` URL."""
    return Path(url[len("sqlite:///") :])


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite database with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


@asynccontextmanager
async def fresh_database(kind: str, *, workdir: Path, pg_admin_url: str) -> AsyncIterator[str]:
    """A new, empty database of `kind` ('sqlite' or 'postgres'), removed afterwards."""
    if kind == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:10]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            remove_sqlite(path)
        return
    if kind != "postgres":
        raise ValueError(f"unknown store {kind!r}; use sqlite or postgres")
    url = await create_pg_database(pg_admin_url)
    try:
        yield url
    finally:
        await drop_pg_database(pg_admin_url, url)


@dataclass(frozen=True, slots=True)
class BoardTotals:
    """What one board holds after a run (all its seasons: the runs never reset one)."""

    credits: int  # ledger rows crediting this board
    value_sum: int  # the sum of their values (deltas)
    score_sum: int  # the sum of the board's entries' scores
    entries: int


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """What a store holds after a run."""

    actions: int  # distinct actions credited (one per acknowledged update)
    # Every action of one batch carries the batch's commit time, so this counts transactions.
    transactions: int
    boards: Mapping[str, BoardTotals]

    @property
    def credits(self) -> int:
        """Ledger rows over all boards (an action writing 3 boards is 3 credits)."""
        return sum(b.credits for b in self.boards.values())


# The schema since boards: `actions` (one row per action) and `credits` (one per
# action and board) are the ledger, `entries` the boards' standings.
_NEW_TOTALS = (
    "SELECT count(*), count(DISTINCT created_at) FROM actions",
    "SELECT board, count(*), coalesce(sum(value), 0) FROM credits GROUP BY board",
    "SELECT board, count(*), coalesce(sum(score), 0) FROM entries GROUP BY board",
)
# The schema before boards (an older checkout run with `tree=`): `scores_log`
# and `users`, which the migration turns into the default board.
_OLD_TOTALS = (
    "SELECT count(*), count(DISTINCT created_at) FROM scores_log",
    f"SELECT '{DEFAULT_BOARD}', count(*), coalesce(sum(delta), 0) FROM scores_log",
    f"SELECT '{DEFAULT_BOARD}', count(*), coalesce(sum(score), 0) FROM users",
)
_HAS_SCORES_LOG = {
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'scores_log'",
    "postgres": "SELECT (to_regclass('scores_log') IS NOT NULL)::int",
}


async def fetch_all(url: str, queries: Sequence[str]) -> list[list[tuple[Any, ...]]]:
    """Run read-only queries on a SQLite or PostgreSQL database; the rows of each."""
    if url.startswith("sqlite:"):
        con = sqlite3.connect(sqlite_file(url))
        try:
            return [con.execute(q).fetchall() for q in queries]
        finally:
            con.close()
    pg = await asyncpg.connect(url, timeout=10)
    try:
        return [[tuple(r) for r in await pg.fetch(q)] for q in queries]
    finally:
        await pg.close()


async def ledger_totals(url: str) -> LedgerTotals:
    """Actions, transactions and per-board credits and scores (read after the server stopped).

    Reads either schema: the boards one (`actions`, `credits`, `entries`) or,
    for a server from a checkout made before boards, `scores_log` and `users`
    as the one board `DEFAULT_BOARD`.
    """
    dialect = "sqlite" if url.startswith("sqlite:") else "postgres"
    ((found,),) = (await fetch_all(url, [_HAS_SCORES_LOG[dialect]]))[0]
    head, credits, entries = await fetch_all(url, _OLD_TOTALS if found else _NEW_TOTALS)
    ((actions, transactions),) = head
    ledger = {str(b): (int(n), int(total)) for b, n, total in credits}
    standings = {str(b): (int(n), int(total)) for b, n, total in entries}
    boards = {
        board: BoardTotals(
            credits=ledger.get(board, (0, 0))[0],
            value_sum=ledger.get(board, (0, 0))[1],
            score_sum=standings.get(board, (0, 0))[1],
            entries=standings.get(board, (0, 0))[0],
        )
        for board in sorted(ledger.keys() | standings.keys())
    }
    return LedgerTotals(int(actions), int(transactions), boards)
