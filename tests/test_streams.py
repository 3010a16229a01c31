"""Server-Sent Events, slow and dead peers, many subscribers, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import random
import resource
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from scoreboard.client import BoardState
from tests.conftest import StartServer
from tests.helpers import ServerHandle, bearer, eventually, service_update
from tests.streams import raw_peer, sse_events

LONG = "n" * 120  # long display names make big diffs, so buffers fill quickly


def address(server: ServerHandle) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def test_sse_snapshot_then_diffs_with_ids(server: ServerHandle) -> None:
    await server.credit("s1", 5)
    async with server.session.get(server.url + "/scores/stream") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        events = sse_events(resp)
        hint = await anext(events)
        assert hint.retry == 2000
        snap = await anext(events)
        assert snap.event == "scoreboard:update"
        body = snap.json()
        assert snap.id == f"{body['epoch']}:{body['seq']}"
        assert body["topUsers"] == [{"rank": 1, "userId": "s1", "username": "s1", "score": 5}]
        await server.credit("s2", 9)
        diff = await anext(events)
        assert diff.event == "scoreboard:diff"
        assert diff.json()["seq"] == body["seq"] + 1
        assert diff.id == f"{body['epoch']}:{body['seq'] + 1}"
        state = BoardState()
        state.apply(body)
        assert state.apply(diff.json())
        assert state.entries == await server.top()


async def test_sse_last_event_id_resumes(server: ServerHandle) -> None:
    async with server.session.get(server.url + "/scores/stream") as resp:
        events = sse_events(resp)
        await anext(events)
        last = await anext(events)
    await server.credit("gone1", 3)
    await asyncio.sleep(0.07)
    await server.credit("gone2", 4)
    async with server.session.get(
        server.url + "/scores/stream", headers={"Last-Event-ID": last.id or ""}
    ) as resp:
        events = sse_events(resp)
        await anext(events)  # retry hint
        missed = [await anext(events), await anext(events)]
        assert [m.event for m in missed] == ["scoreboard:diff", "scoreboard:diff"]
        assert [m.json()["seq"] for m in missed] == [1, 2]
    # Garbage or an unknown epoch: a snapshot, never a gap.
    for token in ("nonsense", "deadbeef:1"):
        async with server.session.get(
            server.url + "/scores/stream", headers={"Last-Event-ID": token}
        ) as resp:
            events = sse_events(resp)
            await anext(events)
            fresh = await anext(events)
            assert fresh.event == "scoreboard:update"
            assert fresh.json()["topUsers"] == await server.top()


async def test_sse_heartbeat_comments(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, sse_heartbeat_s=0.2)
    async with server.session.get(server.url + "/scores/stream") as resp:
        events = sse_events(resp)
        await anext(events)
        await anext(events)
        beat = await asyncio.wait_for(anext(events), 2)
        assert beat.comment == "heartbeat"


async def test_never_reading_subscriber_is_bounded_and_does_not_delay_others(
    start: StartServer, sqlite_url: str
) -> None:
    high_water = 8 * 1024
    server = await start(
        sqlite_url, subscriber_buffer_bytes=high_water, broadcast_tick_ms=2, subscriber_stuck_s=60, top_k=10
    )
    host, port = address(server)
    slow = await raw_peer(host, port, rcvbuf=4096)
    await slow.send({"type": "subscribe", "channel": "scoreboard"})
    fast = await server.session.ws_connect(server.ws_url)
    await fast.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    await fast.receive(5)
    await asyncio.sleep(0.05)
    peak = 0
    delays: list[float] = []
    loop = asyncio.get_running_loop()
    score = 0
    for round_ in range(60):
        score += 10
        await asyncio.gather(*(server.credit(f"user{i}", 10, username=f"{LONG}{round_}") for i in range(10)))
        sent = loop.time()
        # The reading subscriber sees this round's board promptly.
        while True:
            msg = orjson.loads((await fast.receive(5)).data)
            if any(c.get("score") == score for c in msg.get("changes", [])):
                delays.append(loop.time() - sent)
                break
        peak = max(peak, *(c.buffered() for c in server.ws_endpoint._connections))
    assert server.broadcaster.conflations >= 1
    assert server.broadcaster.behind == 1
    # Bounded: the high-water mark plus at most one event that was in flight.
    assert peak <= high_water + 4096, peak
    assert max(delays) < 0.5, max(delays)
    # When it finally reads, it is sent one fresh snapshot and converges.
    expected = await server.top()
    board = BoardState()
    while True:
        opcode, payload = await slow.read_frame()
        assert opcode == 1
        msg = orjson.loads(payload)
        if msg["type"] == "scoreboard:update":
            board.apply(msg)
        elif board.seq >= 0:
            assert board.apply(msg)
        if board.entries == expected and msg["type"] == "scoreboard:update" and board.seq > 0:
            break
    assert server.broadcaster.behind == 0
    slow.close()
    await fast.close()


async def test_stuck_subscriber_is_closed_and_logged(
    start: StartServer, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scoreboard.broadcast")
    server = await start(
        sqlite_url, subscriber_buffer_bytes=4096, broadcast_tick_ms=2, subscriber_stuck_s=0.3
    )
    host, port = address(server)
    stuck = await raw_peer(host, port, rcvbuf=4096)
    await stuck.send({"type": "subscribe", "channel": "scoreboard"})
    await asyncio.sleep(0.05)
    for round_ in range(40):
        await asyncio.gather(*(server.credit(f"user{i}", 1, username=f"{LONG}{round_}") for i in range(10)))
        if not server.ws_endpoint._connections:
            break
    assert await eventually(lambda: len(server.ws_endpoint) == 0)
    stuck_logs = [r for r in caplog.records if r.getMessage() == "subscriber_stuck"]
    assert len(stuck_logs) == 1
    assert stuck_logs[0].fields["conn_id"].startswith("ws-")  # type: ignore[attr-defined]
    stuck.close()


async def test_dead_peer_is_closed_by_the_heartbeat(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, ws_heartbeat_s=0.3)
    host, port = address(server)
    dead = await raw_peer(host, port)
    await dead.send({"type": "subscribe", "channel": "scoreboard"})
    opcodes = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        opcode, _ = await dead.read_frame(5)
        opcodes.append(opcode)
        if opcode in (0x8, -1):  # close frame or EOF: the server gave up on us
            break
    assert 0x9 in opcodes  # it pinged; we never answered
    assert loop.time() - started < 3
    assert await eventually(lambda: len(server.ws_endpoint) == 0)
    dead.close()


async def test_a_thousand_subscribers_converge(start: StartServer, sqlite_url: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    server = await start(sqlite_url, max_connections_per_ip=0, broadcast_tick_ms=20)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = await asyncio.gather(*(session.ws_connect(server.ws_url) for _ in range(1000)))
        states = [BoardState() for _ in sockets]

        async def follow(ws: aiohttp.ClientWebSocketResponse, state: BoardState) -> None:
            await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
            async for msg in ws:
                assert state.apply(orjson.loads(msg.data))

        followers = [asyncio.ensure_future(follow(ws, st)) for ws, st in zip(sockets, states, strict=True)]
        rng = random.Random(11)
        for _ in range(10):
            await asyncio.gather(
                *(server.credit(f"k{rng.randrange(40)}", rng.randrange(1, 30)) for _ in range(10))
            )
            await asyncio.sleep(0.03)
        target = await server.top()
        for _ in range(600):
            if all(st.entries == target for st in states):
                break
            await asyncio.sleep(0.05)
        assert sum(st.entries == target for st in states) == 1000
        assert {st.seq for st in states} == {server.broadcaster.feed.seq}
        assert len(server.broadcaster) == 1000
        for f in followers:
            f.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets))


async def test_shutdown_flushes_acks_then_closes_1001(start: StartServer, database_url: str) -> None:
    server = await start(database_url)
    ws = await server.session.ws_connect(server.ws_url, headers=bearer(server.service_token))
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    await ws.receive(5)
    for i in range(20):
        await ws.send_str(
            orjson.dumps({"type": "score.update", "id": i, **service_update("bye", 1, f"bye-{i}")}).decode()
        )
    async with server.session.get(server.url + "/scores/stream") as sse:
        stopping = asyncio.ensure_future(server.runner.cleanup())
        acks = []
        while True:
            msg = await ws.receive(10)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            body = orjson.loads(msg.data)
            if body["type"] in ("ack", "error"):
                acks.append(body)
        assert ws.close_code == 1001
        assert [a["id"] for a in acks] == list(range(20))
        assert all(a["type"] == "ack" for a in acks)
        assert sorted(a["newScore"] for a in acks) == list(range(1, 21))
        # The event stream ends cleanly too.
        rest = await asyncio.wait_for(sse.content.read(), 10)
        assert rest.startswith(b"retry:")
        await stopping
    server.stopped = True
    await server.session.close()
    again = await start(database_url)
    assert (await again.get("/api/users/bye"))[1]["score"] == 20


async def test_socket_that_does_not_read_its_acks_is_closed(
    start: StartServer, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scoreboard.ws")
    server = await start(
        sqlite_url,
        subscriber_buffer_bytes=1024,
        ws_max_buffer_bytes=4096,
        subscriber_sndbuf_bytes=2048,
        ws_messages_per_s=10_000,
        ws_max_pending_updates=10_000,
    )
    host, port = address(server)
    peer = await raw_peer(
        host, port, rcvbuf=4096, headers=f"Authorization: Bearer {server.service_token}\r\n"
    )
    for i in range(600):
        try:
            await peer.send({"type": "score.update", "id": i, **service_update("deaf", 1, f"deaf-{i}")})
        except OSError:
            break
        if not server.ws_endpoint._connections:
            break
    assert await eventually(lambda: len(server.ws_endpoint) == 0)
    assert any(r.getMessage() == "ws_not_reading" for r in caplog.records)
    # Closing it lost nothing that was committed: the store holds every credit.
    status, body = await server.get("/api/users/deaf")
    assert status == 200
    assert body["score"] == server.service.writer.committed > 0
    peer.close()


async def test_sse_resume_too_old_gets_a_snapshot(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, broadcast_history=2, broadcast_tick_ms=1)
    async with server.session.get(server.url + "/scores/stream") as resp:
        events = sse_events(resp)
        await anext(events)
        first = await anext(events)
    for i in range(5):
        await server.credit(f"o{i}", i + 1)
        await asyncio.sleep(0.01)
    async with server.session.get(
        server.url + "/scores/stream", headers={"Last-Event-ID": first.id or ""}
    ) as resp:
        events = sse_events(resp)
        await anext(events)
        fresh = await anext(events)
        assert fresh.event == "scoreboard:update"
        assert fresh.json()["seq"] == server.broadcaster.feed.seq
        assert fresh.json()["topUsers"] == await server.top()
