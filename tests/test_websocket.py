"""The WebSocket protocol over real sockets: auth, updates with ordered acks, subscriptions, limits."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from scoreboard.client import ClientError, ScoreboardClient
from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import ServerHandle, bearer, eventually, service_update, ticket, token


async def ws_connect(
    server: ServerHandle, tok: str | None = None, **kw: Any
) -> aiohttp.ClientWebSocketResponse:
    headers = bearer(tok) if tok else {}
    headers.update(kw.pop("headers", {}))
    return await server.session.ws_connect(server.ws_url, headers=headers, **kw)


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return dict(orjson.loads(msg.data))


async def recv_type(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = await recv(ws, timeout)
        if msg["type"] == kind:
            return msg


async def test_snapshot_then_diffs_agree_with_get_scores(server: ServerHandle) -> None:
    async with ScoreboardClient(server.ws_url) as client:
        await client.subscribe()
        first = await client.wait_for(lambda b: True)
        assert (first.seq, first.entries) == (0, [])
        rng = random.Random(3)
        for _ in range(6):
            await asyncio.gather(
                *(server.credit(f"p{rng.randrange(30)}", rng.randrange(1, 50)) for _ in range(20))
            )
            await asyncio.sleep(rng.random() * 0.05)
        expected = await server.top()
        final = await client.wait_for(lambda b: b.entries == expected)
        assert final.epoch == server.broadcaster.feed.epoch
        assert client.resyncs == 0


async def test_updates_over_the_socket_are_acked_in_order_and_exactly_once(server: ServerHandle) -> None:
    ws = await ws_connect(server, server.service_token)
    bodies = [service_update("sock", 1, f"s-{i}") for i in range(10)]
    # Refusals interleaved with updates: every message is answered in order.
    messages: list[dict[str, Any]] = []
    for i, body in enumerate(bodies):
        messages.append({"type": "score.update", "id": f"u{i}", **body})
        if i % 3 == 0:
            messages.append({"type": "score.update", "id": f"bad{i}", **body, "scoreDelta": 0})
    messages.append({"type": "score.update", "id": "dup", **bodies[0]})
    for m in messages:
        await ws.send_str(orjson.dumps(m).decode())
    replies = [await recv(ws) for _ in messages]
    assert [r["id"] for r in replies] == [m["id"] for m in messages]
    acks = [r for r in replies if r["type"] == "ack"]
    errors = [r for r in replies if r["type"] == "error"]
    assert [a["newScore"] for a in acks] == [*range(1, 11), 1]
    assert [a["duplicate"] for a in acks] == [False] * 10 + [True]
    assert {e["error"]["code"] for e in errors} == {"validation_failed"}
    assert all(e["error"]["field"] == "scoreDelta" for e in errors)
    assert (await server.get("/api/users/sock"))[1]["score"] == 10
    await ws.close()


async def test_concurrent_duplicates_mixed_with_http(server: ServerHandle) -> None:
    body = service_update("mixed", 7, "mixed-1")
    sockets = [await ws_connect(server, server.service_token) for _ in range(5)]
    for n, ws in enumerate(sockets):
        for i in range(4):
            await ws.send_str(orjson.dumps({"type": "score.update", "id": f"{n}-{i}", **body}).decode())
    http = await asyncio.gather(
        *(server.post("/scores/update", body, server.service_token) for _ in range(10))
    )
    acks = [await recv(ws) for ws in sockets for _ in range(4)]
    answers = [b for _, b in http] + acks
    assert {a["newScore"] for a in answers} == {7}
    assert sum(1 for a in answers if a["duplicate"] is False) == 1
    assert (await server.get("/api/users/mixed"))[1]["score"] == 7
    for ws in sockets:
        await ws.close()


async def test_player_tickets_over_the_socket(server: ServerHandle) -> None:
    async with ScoreboardClient(server.ws_url, token=token("wsp", name="Wes")) as client:
        body = ticket("wsp", 12)
        ack = await client.update(body)
        assert (ack.user_id, ack.new_score, ack.duplicate) == ("wsp", 12, False)
        again = await client.update(body)
        assert (again.new_score, again.duplicate) == (12, True)
        with pytest.raises(ClientError) as info:
            await client.update(ticket("someone-else", 12))
        assert info.value.code == "ticket_mismatch"
        with pytest.raises(ClientError) as info:
            await client.update({**ticket("wsp", 5), "userId": "victim"})
        assert (info.value.code, info.value.field) == ("forbidden", "userId")
    assert (await server.top())[0] == {"rank": 1, "userId": "wsp", "username": "Wes", "score": 12}


async def test_anonymous_sockets_may_watch_but_not_update(server: ServerHandle) -> None:
    ws = await ws_connect(server)
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    assert (await recv(ws))["type"] == "scoreboard:update"
    await ws.send_str(orjson.dumps({"type": "score.update", "id": 1, **ticket("anon", 3)}).decode())
    reply = await recv(ws)
    assert (reply["type"], reply["id"], reply["error"]["code"]) == ("error", 1, "unauthorized")
    await ws.close()


async def test_auth_message_must_come_first(server: ServerHandle) -> None:
    async with ScoreboardClient(server.ws_url) as client:
        assert await client.authenticate(token("browser", name="Bee")) == "browser"
        ack = await client.update(ticket("browser", 4))
        assert ack.new_score == 4
        # Refreshing with a new token for the same user is fine; another user is not.
        assert await client.authenticate(token("browser", ttl=7200)) == "browser"
        with pytest.raises(ClientError) as info:
            await client.authenticate(token("intruder"))
        assert info.value.code == "forbidden"
    ws = await ws_connect(server)
    await ws.send_str('{"type": "ping"}')
    assert await recv(ws) == {"type": "pong"}
    await ws.send_str(orjson.dumps({"type": "auth", "id": "a", "token": token("late")}).decode())
    reply = await recv(ws)
    assert (reply["id"], reply["error"]["code"]) == ("a", "unauthorized")
    await ws.close()
    ws = await ws_connect(server)
    await ws.send_str(orjson.dumps({"type": "auth", "id": "x", "token": "forged.token.value"}).decode())
    reply = await recv(ws)
    assert reply["error"]["code"] == "invalid_token"
    await ws.close()


async def test_auth_window_closes(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, ws_auth_timeout_s=0.2)
    ws = await ws_connect(server)
    await asyncio.sleep(0.3)
    await ws.send_str(orjson.dumps({"type": "auth", "id": 1, "token": token("slow")}).decode())
    assert (await recv(ws))["error"]["code"] == "unauthorized"
    await ws.close()


async def test_upgrade_refusals(server: ServerHandle) -> None:
    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("/ws", {"Origin": "https://evil.example"}, 403, "forbidden"),
        ("/ws", {"Authorization": "Bearer not-a-token"}, 401, "invalid_token"),
        ("/ws?token=" + token("q"), {}, 401, "unauthorized"),
    ]
    for path, headers, status, code in cases:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await server.session.ws_connect(server.url.replace("http", "ws") + path, headers=headers)
        assert info.value.status == status, path
        async with server.session.get(
            server.url + path,
            headers={
                **headers,
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as resp:
            assert resp.status == status
            assert (await resp.json())["error"]["code"] == code
    # Same host is allowed by default.
    host = server.url.removeprefix("http://")
    ws = await ws_connect(server, headers={"Origin": f"http://{host}"})
    await ws.close()


async def test_allowed_origins_setting(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, allowed_origins="https://game.example, https://admin.example")
    ws = await ws_connect(server, headers={"Origin": "https://game.example"})
    await ws.close()
    host = server.url.removeprefix("http://")
    for origin in (f"http://{host}", "https://evil.example", "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await ws_connect(server, headers={"Origin": origin})
        assert info.value.status == 403
    anywhere = await start(sqlite_url.replace(".db", "2.db"), allowed_origins="*")
    ws = await ws_connect(anywhere, headers={"Origin": "https://anything.example"})
    await ws.close()


async def test_garbage_frames_get_error_frames(server: ServerHandle) -> None:
    ws = await ws_connect(server, server.service_token)
    for raw, code, field in [
        ("{nope", "invalid_json", None),
        ("[1,2]", "validation_failed", "type"),
        ('{"type": "dance"}', "validation_failed", "type"),
        ('{"type": "subscribe", "channel": "other"}', "validation_failed", "channel"),
        ('{"type": "subscribe", "channel": "scoreboard", "since": 42}', "validation_failed", "since"),
        (
            '{"type": "score.update", "userId": "u", "scoreDelta": 1, "actionId": "a"}',
            "validation_failed",
            "id",
        ),
        (
            '{"type": "score.update", "id": 5, "userId": "u", "scoreDelta": 1}',
            "validation_failed",
            "actionId",
        ),
    ]:
        await ws.send_str(raw)
        reply = await recv(ws)
        assert (reply["type"], reply["error"]["code"], reply["error"].get("field")) == (
            "error",
            code,
            field,
        ), raw
    await ws.send_bytes(b"\x00\x01")
    assert (await recv(ws))["error"]["code"] == "invalid_json"
    await ws.send_str('{"type": "ping"}')
    assert await recv(ws) == {"type": "pong"}  # still open
    await ws.close()


async def test_oversized_message_closes_1009(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, ws_max_message_bytes=1024)
    ws = await ws_connect(server, server.service_token)
    await ws.send_str('{"type": "ping", "pad": "' + "x" * 2000 + '"}')
    msg = await ws.receive(5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert ws.close_code == 1009


async def test_rate_limit_then_close_1008(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, ws_messages_per_s=5, ws_max_violations=3)
    ws = await ws_connect(server)
    for _ in range(5):
        await ws.send_str('{"type": "ping"}')
    for _ in range(5):
        assert await recv(ws) == {"type": "pong"}
    await ws.send_str('{"type": "ping", "id": "p6"}')
    reply = await recv(ws)
    assert (reply["id"], reply["error"]["code"]) == ("p6", "rate_limited")
    for _ in range(5):
        await ws.send_str('{"type": "ping"}')
    while True:
        msg = await ws.receive(5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
    assert ws.close_code == 1008


async def test_connections_per_address_are_limited(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, max_connections_per_ip=2)
    a, b = await ws_connect(server), await ws_connect(server)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await ws_connect(server)
    assert info.value.status == 429
    async with server.session.get(server.url + "/scores/stream") as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "rate_limited"
    await a.close()
    await eventually(lambda: len(server.ws_endpoint) < 2)
    c = await ws_connect(server)
    await b.close()
    await c.close()


async def test_resume_with_since(server: ServerHandle) -> None:
    ws = await ws_connect(server)
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    snap = await recv(ws)
    await server.credit("r1", 5)
    diff = await recv_type(ws, "scoreboard:diff")
    position = f"{diff['epoch']}:{diff['seq']}"
    await ws.close()
    # Missed two changes while away: gets exactly those diffs.
    await server.credit("r2", 9)
    await asyncio.sleep(0.08)
    await server.credit("r3", 7)
    ws = await ws_connect(server)
    await ws.send_str(
        orjson.dumps({"type": "subscribe", "channel": "scoreboard", "since": position}).decode()
    )
    missed = [await recv(ws), await recv(ws)]
    assert [m["type"] for m in missed] == ["scoreboard:diff"] * 2
    assert [m["seq"] for m in missed] == [diff["seq"] + 1, diff["seq"] + 2]
    assert snap["epoch"] == missed[0]["epoch"]
    await ws.close()
    # Another epoch (a restarted server): a fresh snapshot.
    ws = await ws_connect(server)
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard", "since": "oldepoch:3"}')
    fresh = await recv(ws)
    assert fresh["type"] == "scoreboard:update"
    assert [u["userId"] for u in fresh["topUsers"]] == ["r2", "r3", "r1"]
    await ws.close()


async def test_resume_too_old_gets_a_snapshot(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, broadcast_history=2, broadcast_tick_ms=1)
    ws = await ws_connect(server)
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    snap = await recv(ws)
    await ws.close()
    for i in range(5):
        await server.credit(f"old{i}", i + 1)
        await asyncio.sleep(0.01)
    assert server.broadcaster.feed.seq >= 3
    ws = await ws_connect(server)
    since = f"{snap['epoch']}:{snap['seq']}"
    await ws.send_str(orjson.dumps({"type": "subscribe", "channel": "scoreboard", "since": since}).decode())
    fresh = await recv(ws)
    assert (fresh["type"], fresh["seq"]) == ("scoreboard:update", server.broadcaster.feed.seq)
    assert fresh["topUsers"] == await server.top()
    await ws.close()


async def test_quiet_board_publishes_at_once_and_busy_board_coalesces(
    start: StartServer, sqlite_url: str
) -> None:
    server = await start(sqlite_url, broadcast_tick_ms=600)
    ws = await ws_connect(server)
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    await recv(ws)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await server.credit("q1", 1)
    first = await recv(ws)
    assert first["seq"] == 1
    assert loop.time() - sent < 0.4  # not held for the 600 ms tick
    for i in range(5):
        await server.credit(f"q{i + 2}", 1)
    second = await recv(ws)
    assert loop.time() - sent >= 0.5  # coalesced into the next tick
    assert second["seq"] == 2
    assert len(second["changes"]) == 5
    assert server.broadcaster.feed.seq == 2
    await ws.close()


async def test_unsubscribe_stops_events(server: ServerHandle) -> None:
    ws = await ws_connect(server)
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    await recv(ws)
    await ws.send_str('{"type": "unsubscribe", "channel": "scoreboard"}')
    await asyncio.sleep(0.05)
    await server.credit("after", 1)
    await ws.send_str('{"type": "ping"}')
    assert await recv(ws) == {"type": "pong"}  # no diff before the pong
    await ws.close()


async def test_client_reconnects_and_resumes(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    client = ScoreboardClient(server.ws_url, token=server.service_token, reconnect=True)
    await client.connect()
    await client.subscribe()
    await client.update(service_update("rc", 3, "rc-1"))
    await client.wait_for(lambda b: b.entries and b.entries[0]["score"] == 3)
    # Cut the server side of every socket; the client reopens and resumes.
    for conn in list(server.ws_endpoint._connections):
        conn.abort(1012, "restarting")
    await server.credit("rc", 4, "rc-2")
    state = await client.wait_for(lambda b: b.entries and b.entries[0]["score"] == 7, 10)
    assert state.entries[0]["userId"] == "rc"
    ack = await client.update(service_update("rc", 3, "rc-1"))
    assert (ack.new_score, ack.duplicate) == (3, True)
    await client.close()


async def test_memory_ack_over_the_socket(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, ack="memory")
    async with ScoreboardClient(server.ws_url, token=server.service_token) as client:
        ack = await client.update(service_update("fast", 2, "f-1"))
        assert (ack.accepted, ack.new_score) == (True, None)
        await client.subscribe()
        await client.wait_for(
            lambda b: b.entries == [{"rank": 1, "userId": "fast", "username": "fast", "score": 2}]
        )


async def test_expired_token_on_an_open_socket(start: StartServer, sqlite_url: str, clock: Any) -> None:
    server = await start(sqlite_url, clock=clock, jwt_leeway_s=0)
    tok = token("ttl", role=Role.SERVICE, now=clock.now, ttl=60)
    async with ScoreboardClient(server.ws_url, token=tok) as client:
        assert (await client.update(service_update("x", 1))).new_score == 1
        clock.advance(61)
        with pytest.raises(ClientError) as info:
            await client.update(service_update("x", 1))
        assert info.value.code == "token_expired"
        await client.authenticate(token("ttl", role=Role.SERVICE, now=clock.now, ttl=60))
        assert (await client.update(service_update("x", 1, uuid.uuid4().hex))).new_score == 2


async def test_resume_with_more_missed_than_the_buffer_gets_a_snapshot(
    start: StartServer, sqlite_url: str
) -> None:
    server = await start(sqlite_url, subscriber_buffer_bytes=1024, broadcast_tick_ms=1)
    ws = await ws_connect(server)
    await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
    snap = await recv(ws)
    await ws.close()
    for i in range(6):
        await server.credit(f"big{i}", 1, username="n" * 120)
        await asyncio.sleep(0.01)
    missed = server.broadcaster.feed.since(f"{snap['epoch']}:{snap['seq']}")
    assert len(missed) == 6 and missed[0].kind == "scoreboard:diff"  # all still in the history...
    ws = await ws_connect(server)
    since = f"{snap['epoch']}:{snap['seq']}"
    await ws.send_str(orjson.dumps({"type": "subscribe", "channel": "scoreboard", "since": since}).decode())
    fresh = await recv(ws)
    # ...but together larger than a subscriber's buffer: one snapshot instead.
    assert (fresh["type"], fresh["seq"]) == ("scoreboard:update", 6)
    await ws.send_str('{"type": "ping"}')
    assert await recv(ws) == {"type": "pong"}
    await ws.close()


async def test_client_close_stops_reconnecting(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    client = ScoreboardClient(server.ws_url, reconnect=True, max_backoff_s=0.05)
    await client.connect()
    await server.stop()  # the client starts trying to reconnect, in vain
    await asyncio.sleep(0.2)
    await asyncio.wait_for(client.close(), 2)
    with pytest.raises(ClientError) as info:
        await client.update(service_update("x", 1))
    assert info.value.code == "connection_lost"
