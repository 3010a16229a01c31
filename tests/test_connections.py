"""Connection deadlines, the per-address cap and JSON parser errors, over raw sockets on 127.0.0.1.

Timings are checked with wide margins (a shared machine can be 3x slow):
a connection due to close after `t` must close within [0.8 t, t + 2 s].
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from scoreboard.connections import ConnectionGuard, GuardedRequestHandler, GuardedSite, Phase
from tests.conftest import StartServer
from tests.helpers import ServerHandle, eventually
from tests.streams import sse_events

SLACK_S = 2.0
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: scoreboard\r\n\r\n"
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def guard(server: ServerHandle) -> ConnectionGuard:
    """The server's connection guard (for assertions)."""
    (site,) = (s for s in server.runner.sites if isinstance(s, GuardedSite))
    return site.guard


async def connect(server: ServerHandle, source: str = "127.0.0.1") -> Stream:
    """A raw TCP connection to the server from `source`."""
    parts = urlsplit(server.url)
    return await asyncio.open_connection(parts.hostname, parts.port, local_addr=(source, 0))


async def exchange(stream: Stream, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw`, read one response: status, headers (lower-case names), body."""
    reader, writer = stream
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return int(status_line.split()[1]), headers, body


async def seconds_until_closed(reader: asyncio.StreamReader, limit_s: float) -> float:
    """How long until the server closes the connection (fails after `limit_s`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        data = await asyncio.wait_for(reader.read(), limit_s)
    except ConnectionResetError:
        data = b""
    assert data == b"", data
    return loop.time() - started


def close(stream: Stream) -> None:
    """Close our side."""
    stream[1].close()


def assert_about(elapsed: float, expected: float) -> None:
    assert 0.8 * expected <= elapsed <= expected + SLACK_S, (elapsed, expected)


async def test_silent_connection_is_closed_after_request_timeout(
    start: StartServer, database_url: str
) -> None:
    server = await start(database_url, request_timeout_s=0.5, keepalive_timeout_s=1.0)
    stream = await connect(server)
    assert await eventually(lambda: len(guard(server)) == 1)
    assert_about(await seconds_until_closed(stream[0], 5), 0.5)
    assert await eventually(lambda: len(guard(server)) == 0)
    close(stream)


async def test_slow_first_head_is_cut_from_the_connection_opening(
    start: StartServer, database_url: str
) -> None:
    server = await start(database_url, request_timeout_s=0.5, keepalive_timeout_s=5.0)
    reader, writer = await connect(server)
    trickle = asyncio.ensure_future(_trickle(writer, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200))
    try:
        assert_about(await seconds_until_closed(reader, 5), 0.5)
    finally:
        trickle.cancel()
        writer.close()


async def test_slowloris_after_a_request_is_cut_from_its_first_byte(
    start: StartServer, database_url: str
) -> None:
    server = await start(database_url, request_timeout_s=0.5, keepalive_timeout_s=5.0)
    stream = await connect(server)
    status, _, _ = await exchange(stream, HEALTHZ)
    assert status == 200
    await asyncio.sleep(0.3)  # idle: keepalive_timeout_s applies
    loop = asyncio.get_running_loop()
    first_byte = loop.time()
    trickle = asyncio.ensure_future(_trickle(stream[1], HEALTHZ[:-2] + b"X-Slow: " + b"a" * 200))
    try:
        await seconds_until_closed(stream[0], 5)
        # A header byte every 0.2 s does not extend the deadline, and the
        # 5 s keep-alive does not apply once a head has started.
        assert_about(loop.time() - first_byte, 0.5)
    finally:
        trickle.cancel()
        close(stream)


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.2) -> None:
    for byte in data:
        if writer.is_closing():
            return
        writer.write(bytes([byte]))
        await asyncio.sleep(every_s)


async def test_idle_keepalive_connection_is_closed_after_keepalive_timeout(
    start: StartServer, database_url: str
) -> None:
    server = await start(database_url, request_timeout_s=0.5, keepalive_timeout_s=1.0)
    stream = await connect(server)
    status, headers, body = await exchange(stream, HEALTHZ)
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})
    assert headers.get("connection", "").lower() != "close"
    assert_about(await seconds_until_closed(stream[0], 5), 1.0)
    close(stream)


async def test_busy_keepalive_connection_stays_open(start: StartServer, database_url: str) -> None:
    server = await start(database_url, request_timeout_s=0.5, keepalive_timeout_s=1.0)
    stream = await connect(server)
    for _ in range(10):  # 3 s on one connection, longer than either timeout
        status, _, _ = await exchange(stream, HEALTHZ)
        assert status == 200
        await asyncio.sleep(0.3)
    assert guard(server).count("127.0.0.1") == 1
    close(stream)


async def test_websocket_and_sse_outlive_both_timeouts(start: StartServer, database_url: str) -> None:
    server = await start(database_url, request_timeout_s=0.5, keepalive_timeout_s=1.0, sse_heartbeat_s=0.2)
    loop = asyncio.get_running_loop()
    ws = await server.session.ws_connect(server.ws_url)
    async with server.session.get(server.url + "/scores/stream") as sse:
        held_until = loop.time() + 2.5
        # Heartbeats keep arriving past both timeouts: the stream was not cut.
        async for event in sse_events(sse):
            if event.comment is not None and loop.time() > held_until:
                break
        assert loop.time() > held_until
        assert server.runner.server is not None
        handlers = server.runner.server.connections
        assert all(isinstance(h, GuardedRequestHandler) for h in handlers)
        assert [h.phase for h in handlers if isinstance(h, GuardedRequestHandler)] == [Phase.ACTIVE] * 2
        await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
        msg = await ws.receive(5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        assert "topUsers" in orjson.loads(msg.data)
        assert not ws.closed
    await ws.close()


async def test_connections_over_the_cap_get_429_json(
    start: StartServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "scoreboard.connections")
    server = await start(
        database_url, request_timeout_s=5.0, keepalive_timeout_s=5.0, max_connections_per_ip=3
    )
    silent = await connect(server)
    keepalive = await connect(server)
    assert (await exchange(keepalive, HEALTHZ))[0] == 200
    sse = await server.session.get(server.url + "/scores/stream")  # active for its whole life
    assert sse.status == 200
    assert await eventually(lambda: guard(server).count("127.0.0.1") == 3)

    refused = await connect(server)
    status, headers, body = await exchange(refused, HEALTHZ)
    assert status == 429
    assert headers["retry-after"] == "5"
    assert headers["connection"].lower() == "close"
    assert orjson.loads(body) == {
        "success": False,
        "error": {
            "code": "rate_limited",
            "message": "Too many open connections from this address.",
            "retryAfter": 5,
        },
    }
    await seconds_until_closed(refused[0], 5)
    # One that sends nothing cannot hold its file descriptor for long either.
    quiet = await connect(server)
    assert_about(await seconds_until_closed(quiet[0], 5), 2.0)
    # Another address has its own slots.
    other = await connect(server, "127.0.0.2")
    assert (await exchange(other, HEALTHZ))[0] == 200
    assert guard(server).count("127.0.0.2") == 1

    # Two refusals, one log line (the next one would count the other).
    refusals = [r for r in caplog.records if r.getMessage() == "connection_refused"]
    assert [r.fields for r in refusals] == [  # type: ignore[attr-defined]
        {"peer": "127.0.0.1", "open": 3, "limit": 3, "suppressed": 0}
    ]

    close(silent)
    assert await eventually(lambda: guard(server).count("127.0.0.1") == 2)
    again = await connect(server)
    assert (await exchange(again, HEALTHZ))[0] == 200

    sse.close()
    for stream in (keepalive, refused, quiet, other, again):
        close(stream)
    assert await eventually(lambda: len(guard(server)) == 0)


async def test_slots_are_released_however_connections_end(start: StartServer, database_url: str) -> None:
    server = await start(
        database_url, request_timeout_s=0.5, keepalive_timeout_s=1.0, max_connections_per_ip=5
    )
    timed_out = await connect(server)
    closed_by_client = await connect(server)
    assert (await exchange(closed_by_client, HEALTHZ))[0] == 200
    reset = await connect(server)
    reset[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half a head, then RST
    ws = await server.session.ws_connect(server.ws_url)
    bad = await connect(server)
    assert (await exchange(bad, b"BAD\x01 / HTTP/1.1\r\n\r\n"))[0] == 400
    assert await eventually(lambda: len(guard(server)) >= 4)

    close(closed_by_client)
    sock = reset[1].get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset[1].transport.abort()
    await ws.close()
    await seconds_until_closed(timed_out[0], 5)
    await seconds_until_closed(bad[0], 5)
    assert await eventually(lambda: len(guard(server)) == 0)
    assert guard(server).count("127.0.0.1") == 0
    for stream in (timed_out, bad):
        close(stream)


async def test_overlong_header_gets_431_and_the_token_stays_out_of_logs(
    start: StartServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start(database_url)
    secret = "eyJsecretTokenText" + "x" * 100_000
    stream = await connect(server)
    status, headers, body = await exchange(
        stream, f"GET /scores HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n".encode()
    )
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "headers_too_large"
    assert orjson.loads(body)["success"] is False
    await seconds_until_closed(stream[0], 5)
    close(stream)

    many = await connect(server)
    fields = "".join(f"X-H{i}: v\r\n" for i in range(200))
    status, _, body = await exchange(many, f"GET /scores HTTP/1.1\r\n{fields}\r\n".encode())
    assert (status, orjson.loads(body)["error"]["code"]) == (431, "headers_too_large")
    close(many)

    assert "eyJsecret" not in caplog.text
    for record in caplog.records:
        assert "eyJsecret" not in repr(vars(record))
        assert record.exc_info is None
    logged = [r for r in caplog.records if r.getMessage() == "bad_request"]
    assert len(logged) == 2
    assert all(r.name == "scoreboard.http" and r.levelno == logging.INFO for r in logged)
    assert logged[0].fields == {"status": 431, "peer": "127.0.0.1", "error": "LineTooLong"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "raw",
    [
        b"G@T /scores HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /scores/update HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /scores/update HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ZZ\r\nabc\r\n0\r\n\r\n",
        b"GET /scores HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
    ],
    ids=["bad method", "TE and CL", "bad chunk size", "space in header name"],
)
async def test_unparsable_requests_get_400_json(
    start: StartServer, database_url: str, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start(database_url)
    stream = await connect(server)
    status, headers, body = await exchange(stream, raw)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {
        "success": False,
        "error": {"code": "bad_request", "message": "The request is not valid HTTP/1.1."},
    }
    await seconds_until_closed(stream[0], 5)
    close(stream)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in caplog.records if r.name == "scoreboard.http"] == ["bad_request"]


async def test_hundreds_of_idle_connections_close_while_others_are_served(
    start: StartServer, database_url: str
) -> None:
    # Default limits (256 per address), but a 2 s head deadline to keep the test short.
    server = await start(database_url, request_timeout_s=2.0)
    loop = asyncio.get_running_loop()

    async def opened_at() -> tuple[float, Stream]:
        stream = await connect(server)
        return loop.time(), stream

    opened = await asyncio.gather(*(opened_at() for _ in range(300)))
    assert await eventually(lambda: guard(server).count("127.0.0.1") == 256)
    # Another address is served meanwhile; this one has no free slot.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as other,
        other.get(server.url + "/healthz") as resp,
    ):
        assert resp.status == 200
    async with server.session.get(server.url + "/healthz") as resp:
        assert resp.status == 429

    async def closed_at(stream: Stream) -> float:
        await seconds_until_closed(stream[0], 10)
        return loop.time()

    ends = await asyncio.gather(*(closed_at(stream) for _, stream in opened))
    elapsed = [end - began for end, (began, _) in zip(ends, opened, strict=True)]
    # Refused ones close after min(request_timeout_s, 2 s): the same here.
    assert min(elapsed) >= 0.8 * 2.0, min(elapsed)
    assert max(elapsed) <= 2.0 + SLACK_S, max(elapsed)
    assert await eventually(lambda: len(guard(server)) == 0)
    for _, stream in opened:
        close(stream)
