"""Throwaway PostgreSQL clusters and a TCP proxy that can cut or black-hole connections.

`PgCluster` runs `initdb` into a temporary directory and starts `postgres` on
a free port of 127.0.0.1 with `pg_ctl`; `stop()` (fast shutdown) and `start()`
again reuse the same port and data directory, and `close()` removes it all.
It never touches the shared server at 127.0.0.1:5432. PostgreSQL refuses to
run as root, so as root the binaries run as the `postgres` user (`runuser`)
in a directory owned by it. Missing binaries raise `RuntimeError`: tests that
need a cluster fail instead of silently skipping.

`TcpProxy` sits between the server and a cluster: `cut()` aborts every proxied
connection at once (as a crashed router or a killed backend would),
`blackhole()` keeps connections open but stops forwarding (new ones are
accepted and never connected), so queries hang as in a network partition, and
`forward()` heals it (connections that were black-holed are aborted, since
their byte streams lost data).

`read_state` reads what a store holds (ledger, users, top 10), straight from
the SQLite file or the PostgreSQL database, so tests can hold every
acknowledgement against the database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg


def pg_bindir() -> Path:
    """The directory of `initdb`, `pg_ctl` and `postgres`; raises RuntimeError if missing."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install postgresql "
        f"or put pg_config on PATH (looked in: {', '.join(map(str, candidates)) or 'nothing'})"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A private PostgreSQL cluster in a temporary directory (synchronous; use as a context manager)."""

    def __init__(self, *, port: int | None = None) -> None:
        self.bindir = pg_bindir()
        self.port = port or free_port()
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="sb-pgcluster-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.logfile = self.root / "postgres.log"
        self.running = False
        self._initialised = False

    @property
    def admin_url(self) -> str:
        """URL of the `postgres` database as the superuser (trust authentication)."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        """URL of `database` in this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} exited with {done.returncode}\n{done.stdout}\n{done.stderr}\n{log}"
            )
        return done

    def init(self) -> None:
        """Create the cluster (initdb) with settings for fast throwaway use."""
        self.sockets.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# throwaway test cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "max_connections = 50\n"
                "shared_buffers = 16MB\n"
            )
        self._initialised = True

    def start(self) -> None:
        """Start (or restart) postgres on the same port and data directory; waits until it accepts."""
        if not self._initialised:
            self.init()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start")
        self.running = True
        self._wait_accepting()

    def _wait_accepting(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop postgres (`fast`: abort transactions and close connections; `immediate`: crash)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def close(self) -> None:
        """Stop the cluster if running and delete its directory."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TcpProxy:
    """An asyncio TCP proxy on 127.0.0.1 with fault injection (`cut`, `blackhole`, `forward`)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.forwarding = True
        self.accepted = 0
        self._server: asyncio.Server | None = None
        # client writer -> upstream writer (None while black-holed or connecting)
        self._links: dict[asyncio.StreamWriter, asyncio.StreamWriter | None] = {}
        self._blackholed: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._links)

    def cut(self) -> int:
        """Abort every open connection on both sides; returns how many were cut."""
        n = len(self._links)
        for client, upstream in list(self._links.items()):
            client.transport.abort()
            if upstream is not None:
                upstream.transport.abort()
        self._links.clear()
        self._blackholed.clear()
        return n

    def blackhole(self) -> None:
        """Stop forwarding: bytes are read and dropped, new connections are never connected upstream."""
        self.forwarding = False
        self._blackholed.update(self._links)

    def forward(self) -> None:
        """Forward again; connections that lost bytes while black-holed are aborted."""
        for client in list(self._blackholed):
            upstream = self._links.pop(client, None)
            client.transport.abort()
            if upstream is not None:
                upstream.transport.abort()
        self._blackholed.clear()
        self.forwarding = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._links[writer] = None
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if not self.forwarding:
                self._blackholed.add(writer)
                await self._drain_forever(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            if writer not in self._links:  # cut while connecting
                up_writer.transport.abort()
                return
            self._links[writer] = up_writer
            await asyncio.gather(self._pump(reader, up_writer, writer), self._pump(up_reader, writer, writer))
        finally:
            upstream = self._links.pop(writer, None)
            self._blackholed.discard(writer)
            writer.transport.abort()
            if upstream is not None:
                upstream.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    async def _drain_forever(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if client in self._blackholed:
                    continue  # dropped, as by a partition
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            # Either side closing (or an abort) ends the whole link abruptly.
            dst.transport.abort()
            client.transport.abort()

    async def close(self) -> None:
        """Stop listening and abort everything."""
        if self._server is not None:
            self._server.close()
        self.cut()  # every link task ends once its transports are gone
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# -- what a store holds, read straight from the database ---------------------


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One credit of the default board (`credits` joined with `actions`); `id` is its commit time."""

    id: int
    action_id: str
    user_id: str
    delta: int
    score_after: int


@dataclass(frozen=True, slots=True)
class UserRow:
    """One entry of the default board's current season."""

    id: str
    username: str
    score: int
    reached_at: int


@dataclass(frozen=True, slots=True)
class StoredState:
    """The ledger and the users of a store, and its top 10 by the ranking rule."""

    ledger: dict[str, LedgerEntry]
    users: dict[str, UserRow]
    top10: list[dict[str, object]]

    def assert_consistent(self) -> None:
        """Each user's score is the sum of their ledger deltas; `score_after` runs those sums in order."""
        running: dict[str, int] = {}
        # Commit order: by batch, and within a batch a user's scores only rise.
        for row in sorted(self.ledger.values(), key=lambda r: (r.id, r.score_after)):
            running[row.user_id] = running.get(row.user_id, 0) + row.delta
            assert row.score_after == running[row.user_id], (row, running[row.user_id])
        assert {u.id: u.score for u in self.users.values()} == running

    def assert_holds(self, action_id: str, user_id: str, delta: int, new_score: int) -> None:
        """An acknowledged credit is in the ledger with the acknowledged score."""
        row = self.ledger.get(action_id)
        assert row is not None, f"acknowledged action {action_id} is missing from the ledger"
        assert (row.user_id, row.delta, row.score_after) == (user_id, delta, new_score), row


_LEDGER_SQL = (
    "SELECT a.created_at, c.action_id, c.user_id, c.value, c.score_after "
    "FROM credits c JOIN actions a ON a.action_id = c.action_id WHERE c.board = 'global'"
)
_USERS_SQL = (
    "SELECT user_id, COALESCE(username, user_id), score, reached_at FROM entries "
    "WHERE board = 'global' AND season = 1"
)
_TOP_SQL = _USERS_SQL + " ORDER BY sort_key, reached_at, user_id LIMIT 10"


def _state(
    ledger: list[tuple[Any, ...]], users: list[tuple[Any, ...]], top: list[tuple[Any, ...]]
) -> StoredState:
    return StoredState(
        ledger={r[1]: LedgerEntry(*r) for r in ledger},
        users={r[0]: UserRow(*r) for r in users},
        top10=[
            {"rank": i, "userId": r[0], "username": r[1], "score": r[2]} for i, r in enumerate(top, start=1)
        ],
    )


async def read_state(database_url: str) -> StoredState:
    """Everything the store at `database_url` holds (sqlite:/// or postgresql://)."""
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///").split("?", 1)[0]

        def read() -> StoredState:
            con = sqlite3.connect(path)
            try:
                return _state(*(con.execute(q).fetchall() for q in (_LEDGER_SQL, _USERS_SQL, _TOP_SQL)))
            finally:
                con.close()

        return await asyncio.to_thread(read)
    con = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = [[tuple(r) for r in await con.fetch(q)] for q in (_LEDGER_SQL, _USERS_SQL, _TOP_SQL)]
    finally:
        await con.close()
    return _state(*rows)
