"""Storage outages under load: the server fails fast, loses nothing it acknowledged, and heals itself.

PostgreSQL tests run against a throwaway cluster (tests/pgcluster.py) that
they stop, restart, or reach through a TCP proxy that cuts or black-holes the
connections; the shared server at 127.0.0.1:5432 is never touched. The SQLite
tests fill a small tmpfs under the database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scoreboard.tokens import Role
from tests.conftest import StartServer, create_database, drop_database
from tests.helpers import ServerHandle, bearer, service_update, token
from tests.pgcluster import PgCluster, StoredState, TcpProxy, read_state

pytestmark = pytest.mark.slow

STORE_TIMEOUT_S = 1.5
# Time a refused update may take once the writer knows storage is down.
FAST_S = 0.5
# How long an update queued behind a hung transaction may wait for its 503.
HUNG_BOUND_S = STORE_TIMEOUT_S + 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL cluster for the module (stopped and restarted by tests)."""
    with PgCluster() as c:
        yield c


@pytest.fixture
async def cluster_db(cluster: PgCluster) -> AsyncIterator[str]:
    """A fresh database in the private cluster."""
    if not cluster.running:
        await asyncio.to_thread(cluster.start)
    url = await create_database(cluster.admin_url)
    try:
        yield url
    finally:
        if not cluster.running:
            await asyncio.to_thread(cluster.start)
        await drop_database(cluster.admin_url, url)


@pytest.fixture
async def proxy(cluster: PgCluster) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the private cluster."""
    async with TcpProxy(cluster.port) as p:
        yield p


def via(proxy: TcpProxy, url: str) -> str:
    """`url` with its host:port replaced by the proxy's."""
    scheme, rest = url.split("://", 1)
    user, _, hostpath = rest.rpartition("@")
    path = hostpath.split("/", 1)[1]
    return f"{scheme}://{user}@127.0.0.1:{proxy.port}/{path}"


@dataclass
class Reply:
    """One update request: what was sent, when, and the answer."""

    action_id: str
    user_id: str
    delta: int
    sent: float
    latency: float
    status: int
    body: dict[str, Any]
    retry_after: str | None

    @property
    def done(self) -> float:
        return self.sent + self.latency

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None


async def post_update(server: ServerHandle, action_id: str, user_id: str, delta: int) -> Reply:
    """POST one service update and time it."""
    sent = time.monotonic()
    async with server.session.post(
        server.url + "/scores/update",
        json=service_update(user_id, delta, action_id),
        headers=bearer(server.service_token),
    ) as resp:
        body = await resp.json()
        return Reply(
            action_id,
            user_id,
            delta,
            sent,
            time.monotonic() - sent,
            resp.status,
            body,
            resp.headers.get("Retry-After"),
        )


async def get(server: ServerHandle, path: str) -> tuple[int, dict[str, Any], str | None, float]:
    """GET `path`: status, JSON body, Retry-After and latency."""
    sent = time.monotonic()
    async with server.session.get(server.url + path) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After"), time.monotonic() - sent


class Load:
    """Concurrent senders of fresh service updates, recording every reply."""

    def __init__(self, server: ServerHandle, *, senders: int = 8, users: int = 30, prefix: str = "a") -> None:
        self.server = server
        self.replies: list[Reply] = []
        self._senders = senders
        self._users = users
        self._prefix = prefix
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._send(i)) for i in range(self._senders)]
        return self

    async def _send(self, i: int) -> None:
        seq = 0
        while not self._stop:
            seq += 1
            user = f"user{(i * 7 + seq * 3) % self._users:02d}"
            reply = await post_update(self.server, f"{self._prefix}{i}-{seq}", user, 1 + (i + seq) % 9)
            self.replies.append(reply)
            self._changed.set()
            if reply.status != 200:
                await asyncio.sleep(0.02)  # a client honouring the 503 a little

    async def wait_for(self, predicate: Callable[[list[Reply]], bool], within_s: float, what: str) -> float:
        """Wait until `predicate(replies)`; returns when it became true."""
        deadline = time.monotonic() + within_s
        while not predicate(self.replies):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {within_s}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.1)
        return time.monotonic()

    async def acks_after(self, t: float, n: int, within_s: float = 10.0) -> float:
        """Wait for `n` 200s to requests sent after `t`."""
        return await self.wait_for(
            lambda rs: sum(1 for r in rs if r.status == 200 and r.sent > t) >= n,
            within_s,
            f"{n} acknowledged updates",
        )

    async def stop(self) -> list[Reply]:
        self._stop = True
        await asyncio.gather(*self._tasks)
        return self.replies

    async def __aenter__(self) -> Load:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def assert_refusal(reply: Reply, code: str = "storage_unavailable") -> None:
    """A 503 with the error code and a Retry-After of the configured 1 s."""
    assert (reply.status, reply.code, reply.retry_after) == (503, code, "1"), reply
    assert reply.body["success"] is False


def check_replies(replies: list[Reply]) -> None:
    """Every update was either acknowledged or refused with storage_unavailable."""
    for r in replies:
        if r.status != 200:
            assert_refusal(r)
        else:
            assert (r.body["success"], r.body["duplicate"], r.body["userId"]) == (True, False, r.user_id)


async def assert_nothing_lost(server: ServerHandle, url: str, replies: list[Reply]) -> StoredState:
    """Acknowledged updates are stored; retrying the refused ones credits each exactly once."""
    state = await read_state(url)
    for r in replies:
        if r.status == 200:
            state.assert_holds(r.action_id, r.user_id, r.delta, r.body["newScore"])
    state.assert_consistent()
    acked = {r.action_id for r in replies if r.status == 200}
    refused = [r for r in replies if r.status != 200]
    # Only a refused update may have committed anyway (its reply lost after COMMIT).
    assert set(state.ledger) - acked <= {r.action_id for r in refused}
    assert (await server.top()) == state.top10, "the board drifted from the database"
    # The client's retry of each refused update: a duplicate if it had committed.
    retries = await asyncio.gather(*(post_update(server, r.action_id, r.user_id, r.delta) for r in refused))
    for r in retries:
        assert r.status == 200, r
        stored = state.ledger.get(r.action_id)
        if stored is None:
            assert r.body["duplicate"] is False
        else:
            assert (r.body["duplicate"], r.body["newScore"]) == (True, stored.score_after)
    after = await read_state(url)
    after.assert_consistent()
    assert set(after.ledger) == {r.action_id for r in replies}
    assert (await server.top()) == after.top10
    return after


async def wait_ready(server: ServerHandle, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while (status := (await get(server, "/readyz"))[0]) != 200:
        assert status == 503
        if time.monotonic() > deadline:
            pytest.fail("/readyz did not recover")
        await asyncio.sleep(0.05)


async def test_database_stopped_and_restarted_under_load(
    cluster: PgCluster, cluster_db: str, start: StartServer
) -> None:
    server = await start(cluster_db, store_timeout_s=STORE_TIMEOUT_S, probe_interval_s=0.1)
    async with Load(server) as load:
        await load.acks_after(0, 100)

        stopping = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        down = await load.wait_for(
            lambda rs: any(r.status == 503 and r.sent > stopping for r in rs), 5, "a 503 after the stop"
        )
        # While down: every update is refused at once, reads of the board still work.
        await asyncio.sleep(0.5)
        probes = await asyncio.gather(*(post_update(server, f"probe-{i}", "prober", 1) for i in range(10)))
        for r in probes:
            assert_refusal(r)
            assert r.latency < FAST_S, r
        status, body, retry_after, latency = await get(server, "/readyz")
        assert (status, body["error"]["code"], retry_after) == (503, "storage_unavailable", "1")
        assert latency < STORE_TIMEOUT_S + 0.5
        status, body, _, _ = await get(server, "/scores")
        assert status == 200
        assert len(body["topUsers"]) == 10

        restarting = time.monotonic()
        await asyncio.to_thread(cluster.start)
        await load.acks_after(time.monotonic(), 20)
        await wait_ready(server)
        replies = await load.stop()

    while_down = [r for r in replies if down < r.sent and r.done < restarting]
    assert len(while_down) >= 10
    for r in while_down:
        assert_refusal(r)
        assert r.latency < FAST_S, r
    check_replies([*replies, *probes])
    await assert_nothing_lost(server, cluster_db, replies)


async def test_connection_cut_and_black_hole(cluster_db: str, proxy: TcpProxy, start: StartServer) -> None:
    server = await start(via(proxy, cluster_db), store_timeout_s=STORE_TIMEOUT_S, probe_interval_s=0.1)
    async with Load(server) as load:
        await load.acks_after(0, 50)

        # Connections cut mid-load: at worst some 503s, and the service carries on by itself.
        for _ in range(3):
            cut_at = time.monotonic()
            assert proxy.cut() >= 1
            await load.acks_after(cut_at, 20)

        # Black hole: the batch in flight hangs; cutting its connection fails it at once.
        holed = time.monotonic()
        proxy.blackhole()
        await asyncio.sleep(0.4)
        assert not [r for r in load.replies if r.sent > holed], "an update was answered through a black hole"
        cut_at = time.monotonic()
        proxy.cut()
        await load.wait_for(lambda rs: any(r.done > cut_at for r in rs), 2, "the hung updates to fail")
        await asyncio.sleep(FAST_S)
        hung = [r for r in load.replies if r.sent < cut_at < r.done]
        assert hung
        for r in hung:
            assert_refusal(r)
            assert r.done - cut_at < FAST_S, "a cut connection was not noticed at once"
        healed = time.monotonic()
        proxy.forward()
        await load.acks_after(healed, 20)

        # Black hole held: updates fail within about the store timeout, and readiness says so.
        holed = time.monotonic()
        proxy.blackhole()
        down = await load.wait_for(
            lambda rs: any(r.status == 503 and r.done > holed for r in rs), HUNG_BOUND_S + 1, "a 503"
        )
        status, body, retry_after, latency = await get(server, "/readyz")
        assert (status, body["error"]["code"], retry_after) == (503, "storage_unavailable", "1")
        assert latency < STORE_TIMEOUT_S + 0.5
        healed = time.monotonic()
        proxy.forward()
        await load.acks_after(healed, 20)
        await wait_ready(server)
        replies = await load.stop()

    # Updates in flight when the hole opened either made it through just before or
    # were refused once the transaction timed out; later ones were refused too.
    caught = [r for r in replies if r.sent < holed < r.done and r.status != 200]
    assert caught
    for r in caught:
        assert_refusal(r)
        assert r.done - holed < HUNG_BOUND_S, r
    in_hole = [r for r in replies if holed < r.sent < healed]
    assert in_hole
    for r in in_hole:
        assert_refusal(r)
        assert r.latency < HUNG_BOUND_S, r
    # Once the writer knows, nothing waits for the dead link any more.
    known_down = [r for r in in_hole if r.sent > down]
    assert len(known_down) >= 10
    for r in known_down:
        assert r.latency < FAST_S, r
    check_replies(replies)
    await assert_nothing_lost(server, cluster_db, replies)


async def test_hung_database_fails_updates_within_the_store_timeout(
    cluster_db: str, proxy: TcpProxy, start: StartServer
) -> None:
    server = await start(via(proxy, cluster_db), store_timeout_s=STORE_TIMEOUT_S, probe_interval_s=0.1)
    await server.credit("warm", 1, "warm-1")
    proxy.blackhole()
    replies = await asyncio.gather(*(post_update(server, f"hung-{i}", "h", 1) for i in range(4)))
    for r in replies:
        assert_refusal(r)
    assert max(r.latency for r in replies) < STORE_TIMEOUT_S + 0.5, [round(r.latency, 2) for r in replies]


async def test_full_queue_refuses_at_once(cluster_db: str, proxy: TcpProxy, start: StartServer) -> None:
    queue_max, batch = 8, 4
    server = await start(
        via(proxy, cluster_db),
        store_timeout_s=STORE_TIMEOUT_S,
        probe_interval_s=0.1,
        queue_max=queue_max,
        flush_max_batch=batch,
    )
    await server.credit("warm", 1, "warm-1")
    proxy.blackhole()
    burst = 40
    replies = await asyncio.gather(*(post_update(server, f"burst-{i}", f"b{i % 5}", 2) for i in range(burst)))

    overloaded = [r for r in replies if r.code == "overloaded"]
    waited = [r for r in replies if r.code != "overloaded"]
    # A full queue waited (plus one batch in flight, if the writer took it before
    # the burst filled the queue); the rest were turned away at once.
    assert queue_max <= len(waited) <= queue_max + batch
    for r in overloaded:
        assert_refusal(r, "overloaded")
        assert r.latency < FAST_S, r
    for r in waited:
        assert_refusal(r, "storage_unavailable")
        assert STORE_TIMEOUT_S * 0.8 < r.latency < HUNG_BOUND_S, r

    proxy.forward()
    await wait_ready(server)
    state = await read_state(cluster_db)
    assert set(state.ledger) == {"warm-1"}
    # Retried one at a time (the queue is tiny), every one is new to the store.
    retries = [await post_update(server, r.action_id, r.user_id, r.delta) for r in replies]
    assert {(r.status, r.body.get("duplicate")) for r in retries} == {(200, False)}
    state = await read_state(cluster_db)
    state.assert_consistent()
    assert len(state.ledger) == burst + 1
    assert await server.top() == state.top10


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (skips the test if mounting is not permitted)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


async def test_sqlite_disk_full(tmp_path: Path, start: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        url = f"sqlite:///{disk / 'scoreboard.db'}"
        server = await start(url, store_timeout_s=STORE_TIMEOUT_S, probe_interval_s=0.1)
        try:
            async with Load(server, senders=4) as load:
                await load.acks_after(0, 50)
                filled = time.monotonic()
                filler = await asyncio.to_thread(fill, disk)
                await load.wait_for(
                    lambda rs: sum(1 for r in rs if r.status == 503 and r.sent > filled) >= 20,
                    10,
                    "updates refused on a full disk",
                )
                full_since = time.monotonic()
                await asyncio.sleep(0.3)
                freed = time.monotonic()
                filler.unlink()
                await load.acks_after(freed, 20)
                replies = await load.stop()
            failures = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "batch_failed"]
            assert failures
            assert all("database or disk is full" in f["error"] for f in failures), failures
            while_full = [r for r in replies if full_since < r.sent and r.done < freed]
            assert while_full
            for r in while_full:
                assert_refusal(r)
                assert r.latency < FAST_S, r
            check_replies(replies)
            await assert_nothing_lost(server, url, replies)
        finally:
            await server.stop()  # before the unmount


async def test_sqlite_full_disk_is_not_ready(tmp_path: Path, start: StartServer) -> None:
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        url = f"sqlite:///{disk / 'scoreboard.db'}"
        server = await start(url, store_timeout_s=STORE_TIMEOUT_S, probe_interval_s=0.1)
        try:
            await server.credit("x", 1, "x-1")
            filler = await asyncio.to_thread(fill, disk)
            assert_refusal(await post_update(server, "x-2", "x", 1))
            # Several probe intervals later the disk is still full: still not ready.
            await asyncio.sleep(0.5)
            status, body, retry_after, _ = await get(server, "/readyz")
            assert (status, body.get("error", {}).get("code"), retry_after) == (
                503,
                "storage_unavailable",
                "1",
            )
            assert_refusal(await post_update(server, "x-2", "x", 1))
            filler.unlink()
            await wait_ready(server)
            assert (await server.credit("x", 1, "x-2"))["newScore"] == 2
        finally:
            await server.stop()  # before the unmount


async def test_a_season_end_during_an_outage_is_503_and_works_after(
    cluster_db: str, proxy: TcpProxy, start: StartServer
) -> None:
    server = await start(via(proxy, cluster_db), store_timeout_s=STORE_TIMEOUT_S, probe_interval_s=0.1)
    await server.credit("warm", 1, "season-warm")
    admin = token("ops", role=Role.ADMIN)
    proxy.blackhole()
    started = time.monotonic()
    status, body = await server.post("/api/boards/global/reset", {"season": 1}, admin)
    assert (status, body["error"]["code"]) == (503, "storage_unavailable"), body
    assert time.monotonic() - started < STORE_TIMEOUT_S + 1
    # Storage is now known to be down: refused at once, as updates are.
    status, body = await server.post("/api/boards/global/reset", {"season": 1}, admin)
    assert (status, body["error"]["code"]) == (503, "storage_unavailable"), body
    proxy.forward()
    for _ in range(100):
        status, body = await server.post("/api/boards/global/reset", {"season": 1}, admin)
        if status != 503:
            break
        await asyncio.sleep(0.1)
    # Ended exactly once: either by this request, or by the one whose reply was lost.
    assert (status, body.get("season", 2)) in ((200, 2), (409, 2)), body
    status, boards = await server.get("/api/boards")
    assert boards["boards"][0]["season"]["id"] == 2
