"""The Python client (`scoreboard.client`) against real servers, proxies and misbehaving peers.

Failures are staged for real: a TCP proxy between client and server cuts
connections or plays a reverse proxy during an outage (HTML 502, 503 with
Retry-After, garbage instead of HTTP), and a tiny aiohttp WebSocket server
plays a server that drops updates or sends junk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from websockets.datastructures import Headers

import scoreboard.client
from scoreboard.client import BoardState, ClientError, ScoreboardClient, retry_after
from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import FakeClock, ServerHandle, eventually, service_update, token
from tests.pgcluster import TcpProxy

FAST = {"min_backoff_s": 0.01, "max_backoff_s": 0.05}


def http_answer(status: str, body: bytes, content_type: str, **headers: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    head = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    head += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join([*head, "Connection: close", "", ""])).encode() + body


BAD_GATEWAY = http_answer(
    "502 Bad Gateway", b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", "text/html"
)
UNAVAILABLE = http_answer("503 Service Unavailable", b"<html>Maintenance</html>", "text/html")
RATE_LIMITED = http_answer(
    "429 Too Many Requests",
    orjson.dumps({"success": False, "error": {"code": "rate_limited", "message": "Slow down."}}),
    "application/json",
    Retry_After="1",
)
GARBAGE = b"SSH-2.0-OpenSSH_9.6\r\n\r\n"


class OutageProxy(TcpProxy):
    """The test TCP proxy, which can also play a failing reverse proxy.

    During `outage(*answers)` each new connection gets the next canned HTTP
    answer (the last one repeats) instead of being forwarded; `heal()` ends it.
    """

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.answers: list[bytes] = []
        self.refused: list[float] = []  # loop time of each canned answer

    def outage(self, *answers: bytes) -> None:
        """Answer new connections with `answers`; open ones are left alone (see `cut`)."""
        self.answers, self.refused = list(answers), []

    def heal(self) -> None:
        """Forward new connections again."""
        self.answers = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.answers:
            await super()._accept(reader, writer)
            return
        self.accepted += 1
        answer = self.answers[min(len(self.refused), len(self.answers) - 1)]
        self._links[writer] = None  # so that close() and cut() abort it too
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.refused.append(asyncio.get_running_loop().time())
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._links.pop(writer, None)
            writer.close()
            if task is not None:
                self._tasks.discard(task)


@contextlib.asynccontextmanager
async def proxy_to(server: ServerHandle) -> AsyncIterator[tuple[OutageProxy, str]]:
    """An `OutageProxy` in front of `server`, and the WebSocket URL through it."""
    proxy = OutageProxy(int(server.url.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        yield proxy, f"ws://127.0.0.1:{proxy.port}/ws"
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def ws_server(
    on_message: Callable[[web.WebSocketResponse, dict[str, Any]], Awaitable[None]],
) -> AsyncIterator[str]:
    """A bare aiohttp WebSocket server calling `on_message` for each message; yields its URL."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await on_message(ws, orjson.loads(msg.data))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


def client_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks running code of the client or of its `websockets` connections."""
    ours = Path(scoreboard.client.__file__).resolve()

    def owned(task: asyncio.Task[Any]) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        if code is None:
            return False
        path = Path(code.co_filename).resolve()
        return path == ours or "websockets" in path.parts

    return [t for t in asyncio.all_tasks() if not t.done() and owned(t)]


@dataclass(slots=True)
class RecordingBoard(BoardState):
    """A board that also records the (type, seq) of each snapshot and diff it is given.

    With `lose_one_diff` it pretends the first diff never arrived.
    """

    received: list[tuple[str, int]] = field(default_factory=list)
    lose_one_diff: bool = False

    def apply(self, msg: Any) -> bool:
        self.received.append((msg["type"], msg["seq"]))
        if self.lose_one_diff and msg["type"] == "scoreboard:diff":
            self.lose_one_diff = False
            return True
        return BoardState.apply(self, msg)


def leader_is(user: str, score: int) -> Callable[[BoardState], bool]:
    """A `wait_for` predicate: `user` leads with `score`."""
    return lambda b: bool(b.entries) and (b.entries[0]["userId"], b.entries[0]["score"]) == (user, score)


# -- Connecting ------------------------------------------------------------


async def test_connect_raises_the_servers_refusal(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    cases: list[tuple[dict[str, Any], str, int]] = [
        ({"token": "not-a-token"}, "invalid_token", 401),
        ({"token": token("old", now=time.time() - 3600, ttl=60)}, "token_expired", 401),
        ({"origin": "https://evil.example"}, "forbidden", 403),
    ]
    for kwargs, code, status in cases:
        client = ScoreboardClient(server.ws_url, **kwargs)
        with pytest.raises(ClientError) as info:
            await client.connect()
        assert (info.value.code, info.value.status) == (code, status), kwargs
        assert info.value.message  # the server's sentence
        await client.close()


async def test_connect_refused_by_the_connection_limit(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, max_connections_per_ip=1)
    async with ScoreboardClient(server.ws_url):
        with pytest.raises(ClientError) as info:
            await ScoreboardClient(server.ws_url).connect()
    assert (info.value.code, info.value.status, info.value.retry_after) == ("rate_limited", 429, 5.0)


async def test_connect_through_a_failing_proxy(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    async with proxy_to(server) as (proxy, url):
        for answer, status, words in [(BAD_GATEWAY, 502, "HTTP 502"), (GARBAGE, None, "handshake")]:
            proxy.outage(answer)
            with pytest.raises(ClientError) as info:
                await ScoreboardClient(url, reconnect=True).connect()  # connect() itself never retries
            assert (info.value.code, info.value.status) == ("handshake_failed", status)
            assert words in info.value.message
            assert len(proxy.refused) == 1


# -- The end of a connection -------------------------------------------------


async def test_boards_and_wait_for_end_when_the_server_closes(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    client = ScoreboardClient(server.ws_url)  # reconnect=False
    await client.connect()
    await client.subscribe()
    await client.wait_for(lambda b: b.seq == 0, 2)
    await server.credit("last", 3)

    async def follow() -> list[int]:
        seqs = []
        async for board in client.boards():
            seqs.append(board.seq)
            if board.seq == 1:
                await server.stop()  # closes every socket with 1001
        return seqs

    with pytest.raises(ClientError) as info:
        await asyncio.wait_for(follow(), 3)
    assert info.value.code == "connection_lost"
    assert client.close_code == 1001
    assert client.board.seq == 1
    with pytest.raises(ClientError) as info:
        await client.wait_for(lambda b: b.seq > 1, 3)
    assert info.value.code == "connection_lost"
    with pytest.raises(ClientError) as info:
        await client.update(service_update("late", 1))
    assert info.value.code == "connection_lost"
    await client.close()
    assert client_tasks() == []


async def test_close_ends_boards_cleanly_and_leaves_no_task(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    assert client_tasks() == []
    client = ScoreboardClient(server.ws_url, token=server.service_token, reconnect=True, **FAST)
    await client.connect()
    await client.subscribe()
    seen: list[int] = []

    async def watch() -> None:
        async for board in client.boards():
            seen.append(board.seq)

    watcher = asyncio.create_task(watch())
    never = asyncio.create_task(client.wait_for(lambda b: False, 5))
    await client.update(service_update("w", 2))
    assert await eventually(lambda: bool(seen) and seen[-1] >= 1)
    await client.close()
    await asyncio.wait_for(watcher, 1)  # a clean stop, no error
    with pytest.raises(ClientError) as info:
        await never
    assert info.value.code == "connection_lost"
    await client.close()  # idempotent
    assert client_tasks() == []
    assert [b async for b in client.boards()] == []


async def test_close_while_reconnecting_leaves_no_task(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    async with proxy_to(server) as (proxy, url):
        client = ScoreboardClient(url, reconnect=True, **FAST)
        await client.connect()
        proxy.outage(BAD_GATEWAY)
        proxy.cut()
        assert await eventually(lambda: len(proxy.refused) >= 2)
        await asyncio.wait_for(client.close(), 1)
        assert client_tasks() == []
        refused = len(proxy.refused)
        await asyncio.sleep(0.1)
        assert len(proxy.refused) == refused  # no attempt after close()


async def test_updates_in_flight_fail_when_the_connection_drops() -> None:
    async def drop_on_update(ws: web.WebSocketResponse, msg: dict[str, Any]) -> None:
        if msg["type"] == "score.update":
            await ws.close(code=1011, message=b"oops")

    async with ws_server(drop_on_update) as url, ScoreboardClient(url) as client:
        with pytest.raises(ClientError) as info:
            await client.update(service_update("u", 1), timeout_s=3)
        assert info.value.code == "connection_lost"
        assert "1011" in info.value.message
        assert client.close_code == 1011


async def test_junk_from_the_server_does_not_stop_the_client() -> None:
    row = {"rank": 1, "userId": "j", "username": "j", "score": 4}
    subscribes = 0

    async def babble(ws: web.WebSocketResponse, msg: dict[str, Any]) -> None:
        nonlocal subscribes
        if msg["type"] != "subscribe":
            return
        subscribes += 1
        if subscribes == 1:
            for junk in ("not json", "[1, 2]", '{"type": "later.feature"}', '{"type": "scoreboard:diff"}'):
                await ws.send_str(junk)
        await ws.send_str(
            orjson.dumps({"type": "scoreboard:update", "epoch": "e", "seq": 3, "topUsers": [row]}).decode()
        )

    async with ws_server(babble) as url, ScoreboardClient(url) as client:
        await client.subscribe()
        board = await client.wait_for(lambda b: b.entries == [row], 3)
        assert (board.epoch, board.seq) == ("e", 3)
        assert client.resyncs == 1  # the malformed diff, answered with one fresh snapshot


# -- Reconnecting ----------------------------------------------------------------


async def test_reconnect_rides_out_a_proxy_outage(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    async with proxy_to(server) as (proxy, url):
        client = ScoreboardClient(url, token=server.service_token, reconnect=True, **FAST)
        await client.connect()
        await client.subscribe()
        await client.update(service_update("before", 5))
        await client.wait_for(leader_is("before", 5), 2)
        proxy.outage(GARBAGE, BAD_GATEWAY, UNAVAILABLE)
        proxy.cut()
        assert await eventually(lambda: len(proxy.refused) >= 5)
        await server.credit("during", 9)
        proxy.heal()
        state = await client.wait_for(leader_is("during", 9), 3)
        assert [e["userId"] for e in state.entries] == ["during", "before"]
        ack = await client.update(service_update("before", 1))  # the same token, sent again
        assert ack.new_score == 6
        await client.close()


async def test_reconnect_waits_as_long_as_retry_after(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    async with proxy_to(server) as (proxy, url):
        client = ScoreboardClient(url, reconnect=True, **FAST)
        await client.connect()
        await client.subscribe()
        await client.wait_for(lambda b: b.seq == 0, 2)
        proxy.outage(RATE_LIMITED, UNAVAILABLE)
        proxy.cut()
        assert await eventually(lambda: len(proxy.refused) >= 3, 3)
        proxy.heal()
        first, second, third = proxy.refused[:3]
        assert 0.95 <= second - first < 1.5  # Retry-After: 1, far above the 50 ms backoff
        assert third - second < 0.5  # no Retry-After: the backoff again
        await server.credit("back", 1)
        await client.wait_for(leader_is("back", 1), 3)
        await client.close()


async def test_reconnect_resumes_from_the_last_seq(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    async with proxy_to(server) as (proxy, url):
        client = ScoreboardClient(url, reconnect=True, **FAST)
        client.board = board = RecordingBoard()
        await client.connect()
        await client.subscribe()
        await server.credit("a", 5)
        last = (await client.wait_for(leader_is("a", 5), 2)).seq
        proxy.outage(UNAVAILABLE)
        proxy.cut()
        assert await eventually(lambda: bool(proxy.refused))
        await server.credit("b", 7)  # missed while away
        await asyncio.sleep(0.05)
        await server.credit("c", 9)
        del board.received[:]
        proxy.heal()
        state = await client.wait_for(leader_is("c", 9), 3)
        assert state.entries == await server.top()
        kinds = {kind for kind, _ in board.received}
        assert kinds == {"scoreboard:diff"}, board.received  # the missed diffs, no snapshot
        assert board.received[0][1] == last + 1
        assert client.resyncs == 0
        await client.close()


async def test_a_401_while_reconnecting_stops_for_good(
    start: StartServer, sqlite_url: str, clock: FakeClock
) -> None:
    server = await start(sqlite_url, clock=clock, jwt_leeway_s=0)
    async with proxy_to(server) as (proxy, url):
        tok = token("ttl", role=Role.SERVICE, now=clock.now, ttl=60)
        client = ScoreboardClient(url, token=tok, reconnect=True, **FAST)
        await client.connect()
        await client.subscribe()
        await client.wait_for(lambda b: b.seq == 0, 2)
        clock.advance(61)
        proxy.cut()
        with pytest.raises(ClientError) as info:
            await client.wait_for(lambda b: False, 3)
        assert (info.value.code, info.value.status) == ("token_expired", 401)
        attempts = proxy.accepted
        await asyncio.sleep(0.2)
        assert proxy.accepted == attempts  # no more attempts with a dead token
        with pytest.raises(ClientError) as info:
            await client.update(service_update("ttl", 1))
        assert info.value.code == "token_expired"
        with pytest.raises(ClientError) as info:
            await anext(client.boards())
        assert info.value.code == "token_expired"
        await client.close()
        assert client_tasks() == []


async def test_a_lost_diff_is_resynchronised(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    async with ScoreboardClient(server.ws_url) as client:
        client.board = board = RecordingBoard(lose_one_diff=True)
        await client.subscribe()
        await client.wait_for(lambda b: b.seq == 0, 2)
        await server.credit("l1", 1)
        await asyncio.sleep(0.05)
        await server.credit("l2", 2)
        state = await client.wait_for(leader_is("l2", 2), 3)
        assert state.entries == await server.top()
        assert client.resyncs == 1
        assert [kind for kind, _ in board.received].count("scoreboard:update") == 2


def test_retry_after_header_forms() -> None:
    assert retry_after(Headers(), now=0) is None
    assert retry_after(Headers({"Retry-After": "7"}), now=0) == 7.0
    assert retry_after(Headers({"Retry-After": "soon"}), now=0) is None
    date = Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after(date, now=1445412470.0) == 10.0
    assert retry_after(date, now=1445412490.0) == 0.0
