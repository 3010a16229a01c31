"""A scale-out cluster as subprocesses, and what each party uses: for `loadtest/scaleout.py`.

`ClusterServer` is `common.ServerProcess` running `serve --workers N` over
PostgreSQL and (unless solo) Redis, counting the CPU of all its processes;
`Meters` reads the CPU of the server's processes, of the run's PostgreSQL
backends (plus PostgreSQL's shared background processes) and of Redis from
/proc, Redis's command counts and PostgreSQL's committed transactions.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from loadtest.common import (
    ServerProcess,
    board_ids,
    core_busy,
    core_ticks,
    database_name,
    fmt,
    median,
    process_cpu_seconds,
    write_catalog,
)
from tests.redisserver import RedisServer

# -- layouts and processes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """How the server runs: `--workers N`, N separate processes (`Nx`), or `solo` (no Redis)."""

    processes: int
    redis: bool = True
    separate: bool = False

    @classmethod
    def parse(cls, token: str) -> Layout:
        """`solo`, `N` or `Nx`."""
        token = token.strip()
        if token == "solo":
            return cls(1, redis=False)
        separate = token.endswith("x")
        count = int(token.removesuffix("x"))
        if count < 1:
            raise ValueError(f"a layout needs at least one process: {token!r}")
        return cls(count, separate=separate)

    def __str__(self) -> str:
        if not self.redis:
            return "solo"
        return f"{self.processes}x" if self.separate else str(self.processes)

    def describe(self) -> str:
        """What runs, in words."""
        if not self.redis:
            return "1 process, PostgreSQL, no Redis"
        if self.separate:
            return f"{self.processes} separate processes on {self.processes} ports, each fed its own board"
        if self.processes == 1:
            return "1 process (--workers 1), PostgreSQL + Redis"
        return f"--workers {self.processes}, PostgreSQL + Redis"


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc; empty if `root` is gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def postgres_pids(dbname: str) -> list[int]:
    """PostgreSQL processes working for database `dbname`: its backends and the shared ones.

    Client backends and autovacuum workers of other databases (other
    people's tests on this shared server) are left out; the postmaster,
    WAL writer, checkpointer and background writer are counted, since
    every commit uses them.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        other_db = "(" in cmdline or "[local]" in cmdline or "autovacuum worker" in cmdline
        if dbname in cmdline.split() or not other_db:
            pids.append(int(entry.name))
    return pids


def all_cpus() -> set[int]:
    """Every CPU of the machine (not just this process's affinity)."""
    return set(range(os.cpu_count() or 1))


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each process still alive."""
    out = {}
    for pid in pids:
        seconds = process_cpu_seconds(pid)
        if not math.isnan(seconds):
            out[pid] = seconds
    return out


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds used between two `cpu_of` samples (a process new since `before` counts whole)."""
    return sum(max(0.0, s - before.get(pid, 0.0)) for pid, s in after.items())


class ClusterServer(ServerProcess):
    """`python -m server serve --workers N` on PostgreSQL and, unless `redis_url` is None, Redis.

    `cpu_seconds()` counts the supervisor and every worker. `wait_ready()`
    also waits until every worker listens and relays each of `boards`, and
    `leads` boards have a sequencer (in this process group; separate
    processes of one cluster split the leases, see `wait_leads`).
    """

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str | None,
        prefix: str,
        workers: int,
        workdir: Path,
        cpu: int | None,
        boards: int = 1,
        leads: int | None = None,
        port: int | None = None,
        log_level: str = "info",
        flags: Mapping[str, str] | None = None,
    ) -> None:
        env = {"SCOREBOARD_MAX_CONNECTIONS_PER_IP": "0"}
        if redis_url is not None:
            env.update(SCOREBOARD_REDIS_URL=redis_url, SCOREBOARD_REDIS_PREFIX=prefix)
        super().__init__(
            database_url=database_url,
            workdir=workdir,
            flags={**(flags or {}), "workers": str(workers)},
            cpu=cpu,
            port=port,
            log_level=log_level,
            env=env,
        )
        self.workers = workers
        self.boards = boards
        self.relayed = redis_url is not None
        self.leads = (boards if leads is None else leads) if self.relayed else 0

    def command(self) -> list[str]:
        """`ServerProcess.command`, pinned to every CPU when `cpu` is None.

        A child inherits its parent's affinity, and this generator pins
        itself to one CPU: without the explicit mask, "not pinned" would
        mean the generator's CPU.
        """
        argv = super().command()
        taskset = shutil.which("taskset")
        if self.cpu is None and taskset is not None:
            argv = [taskset, "-c", ",".join(str(c) for c in sorted(all_cpus())), *argv]
        return argv

    def worker_pids(self) -> list[int]:
        """The serving processes: the workers, or the one process when N = 1."""
        if self.workers == 1:
            return [self.pid]
        return [pid for pid in process_tree(self.pid) if pid != self.pid]

    def cpu_seconds(self) -> float:
        """CPU seconds of the supervisor and all its workers."""
        return sum(cpu_of(process_tree(self.pid)).values())

    def count(self, event: str) -> int:
        """How many times the log has `event` (over all workers)."""
        return sum(1 for e in self.log_events() if e.get("event") == event)

    async def wait_ready(self, timeout_s: float = 30.0, poll_s: float = 0.005) -> float:
        """`/readyz` answers 200, and every worker listens, relays every board, `leads` boards led."""
        deadline = time.perf_counter() + timeout_s
        await super().wait_ready(timeout_s, poll_s)
        relays = self.workers * self.boards if self.relayed else 0
        while time.perf_counter() < deadline:
            self._check_alive()
            if (
                self.count("listening") >= self.workers
                and self.count("relay_synced") >= relays
                and self.count("sequencer_taken") >= self.leads
            ):
                return time.perf_counter() - self.started_at
            await asyncio.sleep(0.05)
        raise TimeoutError(f"not every worker was ready within {timeout_s} s:\n{self.log_tail()}")

    def committed(self) -> int | None:
        """Actions the writers committed, summed over the workers' `writer_closed` lines."""
        closed = [e for e in self.log_events() if e.get("event") == "writer_closed"]
        if len(closed) < self.workers:
            return None
        return sum(int(e.get("committed", 0)) for e in closed)


async def wait_leads(servers: Sequence[ClusterServer], boards: int, timeout_s: float = 15.0) -> None:
    """Until the processes of one cluster lead `boards` sequences between them."""
    deadline = time.monotonic() + timeout_s
    while sum(s.count("sequencer_taken") for s in servers) < boards:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {boards} boards got a sequencer within {timeout_s} s")
        await asyncio.sleep(0.05)


# -- what each party uses ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """CPU counters of the server, PostgreSQL and Redis at one instant."""

    t: float
    workers: dict[int, float]
    server_s: float
    pg: dict[int, float]
    redis_s: float
    ticks: dict[int, tuple[int, int]]


class Meters:
    """CPU of the server's processes, PostgreSQL's and Redis's; Redis's command counts; commits.

    `redis_client` and `admin` (an asyncpg connection to another database,
    so its own backend is not counted) are only needed for `redis_calls`
    and `xact_commit`.
    """

    def __init__(
        self,
        servers: Sequence[ClusterServer],
        redis: RedisServer,
        redis_client: aioredis.Redis | None = None,
        admin: asyncpg.Connection | None = None,
    ) -> None:
        self.servers = list(servers)
        self.redis = redis
        self.redis_client = redis_client
        self.admin = admin
        self.dbname = database_name(servers[0].database_url)

    def server_cpu(self) -> float:
        """CPU seconds of every server process."""
        return sum(s.cpu_seconds() for s in self.servers)

    def read(self) -> Reading:
        """One sample (synchronous: /proc only)."""
        redis_pid = self.redis.proc.pid if self.redis.proc is not None else -1
        return Reading(
            t=time.monotonic(),
            workers=cpu_of([pid for s in self.servers for pid in s.worker_pids()]),
            server_s=self.server_cpu(),
            pg=cpu_of(postgres_pids(self.dbname)),
            redis_s=process_cpu_seconds(redis_pid),
            ticks=core_ticks(),
        )

    async def redis_calls(self) -> dict[str, int]:
        """Calls per Redis command so far (`INFO commandstats`), plus `total`."""
        assert self.redis_client is not None
        info: dict[str, Any] = await self.redis_client.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
        calls["total"] = sum(calls.values())
        return calls

    async def xact_commit(self) -> int:
        """Transactions committed in the run's database so far (`pg_stat_database`)."""
        assert self.admin is not None
        sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = $1"
        return int(await self.admin.fetchval(sql, self.dbname) or 0)


@dataclass(slots=True)
class Usage:
    """CPU over a window, in % of one core."""

    server_pct: float = math.nan
    worker_pct: list[float] = field(default_factory=list)
    pg_pct: float = math.nan
    redis_pct: float = math.nan
    core_busy: dict[int, float] = field(default_factory=dict)


def usage(a: Reading, b: Reading) -> Usage:
    """What each party used between two readings."""
    window = b.t - a.t
    if window <= 0:
        return Usage()
    workers = [100 * (s - a.workers.get(pid, 0.0)) / window for pid, s in b.workers.items()]
    return Usage(
        server_pct=100 * (b.server_s - a.server_s) / window,
        worker_pct=sorted(workers, reverse=True),
        pg_pct=100 * cpu_delta(a.pg, b.pg) / window,
        redis_pct=100 * (b.redis_s - a.redis_s) / window,
        core_busy=core_busy(a.ticks, b.ticks),
    )


def other_pct(use: Usage, generator_pct: float) -> float:
    """Busy CPU (all cores, % of one) not charged to the server, PostgreSQL, Redis or the generator.

    Other people's processes on this shared machine, and interrupt work
    (loopback TCP's receive side runs in softirq context) not charged to
    whichever process was interrupted.
    """
    parties = use.server_pct + use.pg_pct + use.redis_pct + generator_pct
    return sum(use.core_busy.values()) - parties


def split(values: Sequence[float]) -> str:
    """Per-worker CPU, e.g. '62/58' ('-' for one process)."""
    return "/".join(fmt(v, 0) for v in values) if len(values) > 1 else "-"


def cores(busy: Mapping[int, float]) -> str:
    """Each core's busy %, e.g. '98/95'."""
    return "/".join(fmt(busy[c], 0) for c in sorted(busy)) or "-"


def median_each(columns: Sequence[Sequence[float]]) -> list[float]:
    """Position-wise medians of lists of different lengths (per-worker CPU over rounds)."""
    width = max((len(c) for c in columns), default=0)
    return [median([c[i] for c in columns if len(c) > i]) for i in range(width)]


def median_busy(uses: Sequence[Usage]) -> dict[int, float]:
    """Each core's median busy %."""
    cpus = sorted({c for u in uses for c in u.core_busy})
    return {c: median([u.core_busy.get(c, math.nan) for u in uses]) for c in cpus}


def ratio_text(pairs: Sequence[tuple[float, float]]) -> str:
    """Median of per-round ratios b/a, with their range when there are several."""
    ratios = [b / a for a, b in pairs if a and not math.isnan(a) and not math.isnan(b)]
    if not ratios:
        return "-"
    text = f"{median(ratios):.2f}x"
    return text + (f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")


def catalog_flags(workdir: Path, boards: int) -> dict[str, str]:
    """`--catalog-file` of `boards` boards (none for the built-in one-board catalog)."""
    return {"catalog-file": str(write_catalog(workdir, board_ids(boards)))} if boards > 1 else {}


def new_prefix() -> str:
    """A Redis key prefix of one run's cluster."""
    return f"sbscale-{uuid.uuid4().hex[:10]}"
