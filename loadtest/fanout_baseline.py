"""The fan-out baseline: a plain aiohttp WebSocket server and a 20 Hz ticker.

What the team measured before the broadcaster was written, kept so that
`loadtest.fanout` can compare against it in the same run. Subscribers connect
to `GET /ws` (any message they send is read and ignored; a
`{"type":"subscribe"}` is not required). A ticker builds one board-diff-like
JSON message per tick, the same shape and about the same size as the real
server's `scoreboard:diff` (`--changes` rows, default 5: about 480 bytes),
with the tick's `time.monotonic()` embedded as `sentAt` so a subscriber on the
same machine can compute its latency, and sends it with the plain loop

    for ws in subscribers:
        await ws.send_str(msg)

on aiohttp's defaults (`WebSocketResponse()`: no heartbeat, default write
limits) except compression, which is off (`compress=False`) to be fair to the
real server, whose frames are uncompressed. (aiohttp's default would only
compress for a client that offers permessage-deflate, and the load
generator's client does not, so this changes nothing on the wire.) Each
`send_str` encodes the string and builds a frame for that one subscriber.
With `--raw` the ticker instead writes one pre-built frame to every
subscriber's transport in a synchronous loop, with no check at all: the
floor of any server on aiohttp and uvloop.

Ticks are scheduled on a fixed grid (`--hz`, default 20). A tick whose loop
overruns the period delays the next one (no tick is skipped and none is
doubled up), so an overloaded server simply publishes below the target rate;
the ticks actually run are counted and logged when the server stops.

Also answers `GET /readyz` and `GET /healthz` (200) so the load generator can
wait for it like for the real server. With `--start-on-request` the ticker
only starts at `POST /start`, so subscribers can connect to a quiet server
(as they do to the real one, whose load generator only starts updating the
board once everyone is connected). Stops on SIGTERM or SIGINT.

Run by itself (normally `loadtest.fanout` starts it, pinned to CPU 0):

    python -m loadtest.fanout_baseline --port 8090 [--hz 20] [--changes 5] [--start-on-request] [--raw]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence

import uvloop
from aiohttp import WSMsgType, web

SUBSCRIBERS = web.AppKey("subscribers", set[web.WebSocketResponse])
TRANSPORTS = web.AppKey("transports", set[asyncio.Transport])
START = web.AppKey("start", asyncio.Event)


def build_message(seq: int, changes: int, sent_at: float) -> str:
    """A `scoreboard:diff`-like message with `changes` rows and a send timestamp."""
    top = 1_000_000 + seq
    body = {
        "type": "scoreboard:diff",
        "epoch": "baseline0000",
        "seq": seq,
        "sentAt": sent_at,
        "changes": [
            {
                "rank": r + 1,
                "userId": f"bench-user-{(seq + r) % 10:02d}",
                "username": f"Player {(seq + r) % 10:04d}",
                "score": top - r,
            }
            for r in range(changes)
        ],
    }
    return json.dumps(body, separators=(",", ":"))


async def ws_handler(request: web.Request) -> web.StreamResponse:
    """Upgrade, register as a subscriber, read (and ignore) until the peer leaves."""
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    subs = request.app[SUBSCRIBERS]
    subs.add(ws)
    transport = request.transport
    if transport is not None:  # uvloop's transports are not asyncio.Transport subclasses
        request.app[TRANSPORTS].add(transport)
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
    finally:
        subs.discard(ws)
        if transport is not None:
            request.app[TRANSPORTS].discard(transport)
    return ws


async def ok_handler(request: web.Request) -> web.Response:
    """Health and readiness: always 200 while running."""
    return web.json_response({"status": "ready", "subscribers": len(request.app[SUBSCRIBERS])})


async def start_handler(request: web.Request) -> web.Response:
    """`POST /start`: start ticking (with --start-on-request)."""
    request.app[START].set()
    return web.json_response({"started": True, "subscribers": len(request.app[SUBSCRIBERS])})


def text_frame(payload: bytes) -> bytes:
    """An unmasked WebSocket text frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class Ticker:
    """Sends one message per tick to every subscriber, with the plain await loop.

    `raw`: instead, encode the frame once and write the same bytes to every
    subscriber's transport in one synchronous loop, with no check at all:
    the least a Python server on aiohttp and uvloop can do per message (the
    real broadcaster does this plus its backlog checks).
    """

    def __init__(
        self,
        subs: set[web.WebSocketResponse],
        transports: set[asyncio.Transport],
        hz: float,
        changes: int,
        raw: bool = False,
    ) -> None:
        self.subs = subs
        self.transports = transports
        self.raw = raw
        self.period = 1.0 / hz
        self.changes = changes
        self.ticks = 0
        self.sends = 0
        self.errors = 0
        self.late = 0
        self.started = math.nan

    async def run(self, start: asyncio.Event) -> None:
        """Tick on a fixed grid; an overrun pushes the grid back instead of bunching ticks."""
        await start.wait()
        self.started = due = time.monotonic()
        while True:
            now = time.monotonic()
            if due <= now:
                self.late += 1
                due = now
            # Sleeping also when late lets the loop accept connections and read sockets.
            await asyncio.sleep(due - now)
            self.ticks += 1
            msg = build_message(self.ticks, self.changes, time.monotonic())
            if self.raw:
                frame = text_frame(msg.encode())
                for transport in self.transports:
                    transport.write(frame)
                self.sends += len(self.transports)
                due += self.period
                continue
            for ws in list(self.subs):
                try:
                    await ws.send_str(msg)
                    self.sends += 1
                except (ConnectionError, RuntimeError):
                    self.errors += 1
            due += self.period


async def serve(host: str, port: int, *, hz: float, changes: int, start_on_request: bool, raw: bool) -> None:
    """Run until SIGTERM or SIGINT."""
    app = web.Application()
    app[SUBSCRIBERS] = set()
    app[TRANSPORTS] = set()
    app[START] = asyncio.Event()
    if not start_on_request:
        app[START].set()
    app.router.add_post("/start", start_handler)
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/readyz", ok_handler)
    app.router.add_get("/healthz", ok_handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)  # the real server's backlog too
    await site.start()
    ticker = Ticker(app[SUBSCRIBERS], app[TRANSPORTS], hz, changes, raw)
    task = asyncio.create_task(ticker.run(app[START]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        json.dumps({"event": "listening", "port": port, "hz": hz, "changes": changes, "pid": os.getpid()}),
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        task.cancel()
        elapsed = time.monotonic() - ticker.started
        print(
            json.dumps(
                {
                    "event": "baseline_stopped",
                    "ticks": ticker.ticks,
                    "ticks_per_s": round(ticker.ticks / elapsed, 2)
                    if elapsed > 0
                    else None,  # NaN > 0 is False
                    "late_ticks": ticker.late,
                    "sends": ticker.sends,
                    "send_errors": ticker.errors,
                }
            ),
            flush=True,
        )
        # Subscribers are cut off rather than closed one by one (no close handshakes).
        transports: set[asyncio.Transport] = app[TRANSPORTS]
        for transport in list(transports):
            transport.abort()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("SCOREBOARD_PORT", "8090")))
    p.add_argument("--hz", type=float, default=20.0, help="ticks per second (default 20)")
    p.add_argument("--changes", type=int, default=5, help="rows per message (default 5: ~480 bytes)")
    p.add_argument("--start-on-request", action="store_true", help="tick only after POST /start")
    p.add_argument(
        "--raw",
        action="store_true",
        help="write one pre-built frame to every transport (the floor), not send_str",
    )
    args = p.parse_args(argv)
    uvloop.run(
        serve(
            args.host,
            args.port,
            hz=args.hz,
            changes=args.changes,
            start_on_request=args.start_on_request,
            raw=args.raw,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
