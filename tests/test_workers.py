"""`scoreboard serve --workers N`: worker processes sharing one port, supervised.

The cluster tests run the real command over a fresh PostgreSQL database and
a throwaway Redis, and look at the kernel's view (/proc) to see which
process holds which socket: no endpoint names its process. The supervisor's
own rules (backoff, refusal, kill after the grace) are tested with small
stand-in worker commands.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scoreboard.workers import WORKER_ENV, Backoff, Supervisor, reserve_port
from tests.conftest import create_database, drop_database
from tests.helpers import JWT_SECRET, TICKET_SECRET, eventually
from tests.redisserver import RedisServer

_LISTEN, _ESTABLISHED = "0A", "01"


@pytest.fixture
def pg_database(pg_admin_url: str | None) -> Iterator[str]:
    """A fresh PostgreSQL database, for processes that are not this test's event loop."""
    if pg_admin_url is None:
        pytest.skip("SCOREBOARD_TEST_DATABASE_URL is not set")
    url = asyncio.run(create_database(pg_admin_url))
    try:
        yield url
    finally:
        asyncio.run(drop_database(pg_admin_url, url))


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def base_env(**settings: str) -> dict[str, str]:
    """This environment without any SCOREBOARD_ variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOREBOARD_", WORKER_ENV))}
    env.update(settings)
    return env


class Supervised:
    """`python -m scoreboard serve --workers N`, its JSON log (all processes) in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *flags: str) -> None:
        self.log_path = tmp_path / "serve.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scoreboard", "serve", *flags],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == name:
                found.append(doc)
        return found

    def wait_for(
        self,
        name: str,
        count: int = 1,
        timeout_s: float = 30.0,
        where: Callable[[dict[str, Any]], bool] = bool,
    ) -> list[dict[str, Any]]:
        """The first `count` `name` events matching `where`, once logged."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.events(name) if where(e)]
            if len(found) >= count:
                return found[:count]
            assert self.proc.poll() is None, f"the supervisor exited:\n{self.log_path.read_text()}"
            assert time.monotonic() < deadline, f"no {count} {name}:\n{self.log_path.read_text()}"
            time.sleep(0.05)

    @property
    def port(self) -> int:
        return int(self.wait_for("workers_starting")[0]["port"])

    def workers(self) -> dict[int, int]:
        """The latest pid of each worker index."""
        return {e["index"]: e["pid"] for e in self.events("worker_started")}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve(tmp_path: Path, pg_database: str, redis: RedisServer) -> Iterator[Callable[..., Supervised]]:
    """Start `serve --workers N` over the fresh database and Redis; stopped at the end."""
    started: list[Supervised] = []

    def _serve(*flags: str) -> Supervised:
        env = base_env(
            SCOREBOARD_HOST="127.0.0.1",
            SCOREBOARD_DATA_DIR=str(tmp_path / "data"),
            SCOREBOARD_DATABASE_URL=pg_database,
            SCOREBOARD_REDIS_URL=redis.url,
            SCOREBOARD_JWT_SECRET=JWT_SECRET,
            SCOREBOARD_TICKET_SECRET=TICKET_SECRET,
        )
        cluster = Supervised(tmp_path, env, "--port", "0", *flags)
        started.append(cluster)
        return cluster

    yield _serve
    for cluster in started:
        cluster.stop()


def get(port: int, path: str) -> int:
    """The status of GET `path` over a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_ready(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if get(port, "/readyz") == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.05)


def tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets on local `port` in `state` (/proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                cols = row.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == state:
                    inodes.add(int(cols[9]))
    return inodes


def held_by(pid: int, inodes: set[int]) -> int:
    """How many of `inodes` process `pid` holds open."""
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            held += 1
    return held


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_two_workers_share_one_port_and_both_take_connections(serve: Callable[..., Supervised]) -> None:
    # --metrics off: a flag given to the parent reaches the workers.
    cluster = serve("--workers", "2", "--metrics", "off")
    port = cluster.port
    started = cluster.wait_for("worker_started", 2)
    assert {e["index"] for e in started} == {0, 1}
    cluster.wait_for("listening", 2)
    wait_ready(port)
    pids = list(cluster.workers().values())
    assert len(set(pids)) == 2
    assert all(parent_of(pid) == cluster.proc.pid for pid in pids)
    assert {e["port"] for e in cluster.events("listening")} == {port}

    # Each worker listens on the port; the parent only holds it, unlistened.
    listening = tcp_sockets(port, _LISTEN)
    assert [held_by(pid, listening) for pid in pids] == [1, 1]
    assert held_by(cluster.proc.pid, listening) == 0

    # New connections land on both (a 2^-39 chance of all on one).
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(40)]
    try:
        for conn in conns:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        established = tcp_sockets(port, _ESTABLISHED)
        per_worker = [held_by(pid, established) for pid in pids]
        assert sum(per_worker) == 40 and min(per_worker) > 0, per_worker
    finally:
        for conn in conns:
            conn.close()
    assert {get(port, "/metrics") for _ in range(10)} == {404}


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(
    serve: Callable[..., Supervised],
) -> None:
    cluster = serve("--workers", "2")
    port = cluster.port
    cluster.wait_for("listening", 2)
    wait_ready(port)
    victim, survivor = cluster.workers()[0], cluster.workers()[1]

    os.kill(victim, signal.SIGKILL)
    (exited,) = cluster.wait_for("worker_exited", where=lambda e: e["pid"] == victim)
    assert (exited["index"], exited["code"], exited["signal"]) == (0, -9, "SIGKILL")
    # Before the new one is up, the survivor takes every new connection.
    assert [get(port, "/healthz") for _ in range(20)] == [200] * 20

    (restarting,) = cluster.wait_for("worker_restarting")
    assert (restarting["index"], restarting["delay_s"]) == (0, 0.5)
    cluster.wait_for("worker_started", 3)
    cluster.wait_for("listening", 3)
    replacement = cluster.workers()[0]
    assert replacement not in (victim, survivor) and alive(survivor)
    assert parent_of(replacement) == cluster.proc.pid
    assert held_by(replacement, tcp_sockets(port, _LISTEN)) == 1
    wait_ready(port)
    assert [get(port, "/healthz") for _ in range(20)] == [200] * 20


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_the_parent_exits_0(serve: Callable[..., Supervised]) -> None:
    cluster = serve("--workers", "3")
    port = cluster.port
    cluster.wait_for("listening", 3)
    wait_ready(port)
    pids = set(cluster.workers().values())
    assert len(pids) == 3

    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(60) == 0
    exits = cluster.events("worker_exited")
    assert {e["pid"] for e in exits} == pids and {e["code"] for e in exits} == {0}
    assert len(cluster.events("stopped")) == 3  # each worker shut down gracefully
    assert not any(alive(pid) for pid in pids)
    assert cluster.events("workers_stopped")[-1]["code"] == 0
    with pytest.raises(ConnectionRefusedError):
        get(port, "/healthz")


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("SCOREBOARD_DATABASE_URL", "SCOREBOARD_DATABASE_URL (--database-url): processes sharing the work"),
        ("SCOREBOARD_REDIS_URL", "SCOREBOARD_REDIS_URL (--redis-url): more than one worker needs"),
        ("SCOREBOARD_JWT_SECRET", "SCOREBOARD_JWT_SECRET (--jwt-secret): must be set"),
        ("SCOREBOARD_TICKET_SECRET", "SCOREBOARD_TICKET_SECRET (--ticket-secret), "),
    ],
)
@pytest.mark.parametrize("how", ["flag", "env"])
def test_workers_above_1_refuse_to_start_without_what_they_need(
    tmp_path: Path, missing: str, named: str, how: str
) -> None:
    complete = {
        "SCOREBOARD_DATA_DIR": str(tmp_path),
        # Never reached: the refusal comes first.
        "SCOREBOARD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "SCOREBOARD_REDIS_URL": "redis://127.0.0.1:1/0",
        "SCOREBOARD_JWT_SECRET": JWT_SECRET,
        "SCOREBOARD_TICKET_SECRET": TICKET_SECRET,
    }
    env = base_env(**{k: v for k, v in complete.items() if k != missing})
    argv = ["--workers", "2"] if how == "flag" else []
    if how == "env":
        env["SCOREBOARD_WORKERS"] = "2"
    result = subprocess.run(
        [sys.executable, "-m", "scoreboard", "serve", "--port", "0", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith("scoreboard: configuration error: ") and named in line, line
    assert not (tmp_path / "jwt-secret").exists()


def test_a_bad_catalog_is_refused_once_before_any_worker_starts(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.toml"
    bad.write_text("[boards.weekly]\nreset = 'every tuesday'\n")
    env = base_env(
        SCOREBOARD_DATABASE_URL="postgresql://postgres@127.0.0.1:1/none",
        SCOREBOARD_REDIS_URL="redis://127.0.0.1:1/0",
        SCOREBOARD_JWT_SECRET=JWT_SECRET,
        SCOREBOARD_TICKET_SECRET=TICKET_SECRET,
        SCOREBOARD_CATALOG_FILE=str(bad),
    )
    result = subprocess.run(
        [sys.executable, "-m", "scoreboard", "serve", "--workers", "2", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"scoreboard: configuration error: {bad}: "), line


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, reset_after_s=30.0)
    assert [backoff.delay(uptime_s=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(uptime_s=30.0) == 0.5
    assert backoff.delay(uptime_s=0.1) == 1.0


def test_a_reserved_port_is_shared_by_reuse_port_listeners_only() -> None:
    import socket

    with reserve_port("127.0.0.1", 0) as reserved:
        port = reserved.getsockname()[1]
        assert port != 0
        # A listener without SO_REUSEPORT cannot take it...
        with socket.socket() as plain, pytest.raises(OSError, match="Address already in use"):
            plain.bind(("127.0.0.1", port))
        # ...a worker's can, and the reservation itself takes no connection.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                conn, _ = worker.accept()
                conn.close()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of the supervisor's `event` records."""
    return [vars(r)["fields"] for r in caplog.records if r.getMessage() == event]


async def test_a_worker_refusing_its_configuration_stops_all_with_2(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "scoreboard.workers")
    supervisor = Supervisor(python("import sys, time; time.sleep(0.2); sys.exit(2)"), count=2, env=os.environ)
    assert await asyncio.wait_for(supervisor.run(), 10) == 2
    assert not logged(caplog, "worker_restarting")


async def test_a_crashing_worker_is_restarted_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "scoreboard.workers")
    supervisor = Supervisor(
        python("import sys; sys.exit(1)"),
        count=1,
        env=os.environ,
        restart_initial_s=0.05,
        restart_max_s=0.2,
    )
    run = asyncio.create_task(supervisor.run())

    def delays() -> list[float]:
        return [e["delay_s"] for e in logged(caplog, "worker_restarting")]

    assert await eventually(lambda: len(delays()) >= 5, timeout_s=10)
    supervisor.stop()
    # A worker waiting to be started again is simply not started: a clean stop.
    assert await asyncio.wait_for(run, 10) == 0
    assert delays()[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]
    exited = logged(caplog, "worker_exited")
    assert exited and {e["code"] for e in exited} == {1}


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "scoreboard.workers")
    ready = tmp_path / "ready"
    stubborn = python(
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r} + os.environ[{WORKER_ENV!r}], 'w').close(); time.sleep(60)"
    )
    supervisor = Supervisor(stubborn, count=2, env=os.environ, stop_grace_s=0.5)
    run = asyncio.create_task(supervisor.run())
    assert await eventually(lambda: all(Path(f"{ready}{i}").exists() for i in (0, 1)), timeout_s=10)
    pids = set(supervisor.pids.values())
    supervisor.stop()
    assert await asyncio.wait_for(run, 10) == 1
    killed = {e["pid"] for e in logged(caplog, "worker_killed")}
    assert killed == pids and not any(alive(pid) for pid in pids)
