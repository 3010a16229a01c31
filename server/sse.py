"""Server-Sent Events adapter: `GET /scores/stream` (the default board) and
`GET /api/boards/{board}/stream`, for pages and dashboards.

Public. Sends the same events as the WebSocket (`event: scoreboard:update`
or `scoreboard:diff`, `id: <epoch>:<seq>`, `data: <json>`), honours
`Last-Event-ID` like the WebSocket's `since`, sends a `retry:` hint, and a
comment line as heartbeat. Events are written straight to the transport as
pre-encoded HTTP chunks shared by every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import web

from .broadcast import limit_send_buffer
from .feed import Event, http_chunk
from .hub import Hub, Hubs

log = logging.getLogger("scoreboard.sse")


class SseSubscriber:
    """One event stream, written without waiting for the peer."""

    def __init__(self, conn_id: str, transport: asyncio.Transport, *, chunked: bool) -> None:
        self._conn_id = conn_id
        self._transport = transport
        self._chunked = chunked
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def conn_id(self) -> str:
        """Identifies the stream in logs."""
        return self._conn_id

    def buffered(self) -> int:
        """Bytes not yet taken by the peer's socket."""
        return self._transport.get_write_buffer_size()

    def send_event(self, event: Event) -> None:
        """Write `event` (one chunk shared by every stream)."""
        self.write_raw(event.sse_chunk() if self._chunked else event.sse())

    def write_raw(self, data: bytes, *, encode: bool = False) -> None:
        """Write bytes already in this stream's framing (or frame them with `encode`)."""
        if self._transport.is_closing():
            self.finish()
            return
        self._transport.write(http_chunk(data) if encode and self._chunked else data)

    def abort(self, code: int, reason: str) -> None:
        """A stuck stream is cut off."""
        self._transport.abort()
        self.finish()

    def finish(self) -> None:
        """Let the handler return."""
        if not self.done.done():
            self.done.set_result(None)

    @property
    def closed(self) -> bool:
        """Whether the peer went away."""
        return self._transport.is_closing()


class SseEndpoint:
    """`GET /scores/stream`."""

    def __init__(
        self,
        hubs: Callable[[], Hubs],
        *,
        heartbeat_s: float = 15.0,
        retry_ms: int = 2000,
        poll_s: float = 1.0,
        sndbuf_bytes: int = 32 * 1024,
    ) -> None:
        self._sndbuf = sndbuf_bytes
        self._hubs = hubs
        self._heartbeat = heartbeat_s
        self._retry_ms = retry_ms
        self._poll = min(poll_s, heartbeat_s)
        self._streams: set[SseSubscriber] = set()
        self._ids = 0

    def __len__(self) -> int:
        return len(self._streams)

    def _hub(self, request: web.Request) -> Hub:
        """The board of `/api/boards/{board}/stream`, or the default one for `/scores/stream`."""
        board = request.match_info.get("board")
        hubs = self._hubs()
        return hubs.default if board is None else hubs.get(board)

    async def head(self, request: web.Request) -> web.Response:
        """HEAD of a stream: its headers, no body, no subscription."""
        self._hub(request)
        return web.Response(headers=self._headers(), content_type="text/event-stream")

    @staticmethod
    def _headers() -> dict[str, str]:
        return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Stream a board's events until the client leaves or the server stops."""
        broadcaster = self._hub(request).broadcaster  # an unknown board: 404 before the stream starts
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **self._headers()})
        if request.version >= (1, 1):
            # Chunked explicitly, so we know the framing of our own writes.
            response.enable_chunked_encoding()
        await response.prepare(request)
        # The first write goes through aiohttp so the headers are on the wire
        # before events are written to the transport directly.
        await response.write(b"retry: %d\n\n" % self._retry_ms)
        transport = request.transport
        if transport is None:
            return response
        limit_send_buffer(transport, self._sndbuf)
        self._ids += 1
        sub = SseSubscriber(f"sse-{self._ids}", transport, chunked=response.chunked)
        loop = asyncio.get_running_loop()
        # Whatever happens from here on (a bad Last-Event-ID, a dead peer, a
        # cancelled handler), the subscriber is released in the finally.
        self._streams.add(sub)
        try:
            broadcaster.subscribe(sub, request.headers.get("Last-Event-ID"))
            last_beat = loop.time()
            while not sub.done.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sub.done), self._poll)
                if sub.closed:
                    break
                if loop.time() - last_beat >= self._heartbeat:
                    sub.write_raw(b": heartbeat\n\n", encode=True)
                    last_beat = loop.time()
        except Exception:
            # The stream has started: an HTTP error answer would corrupt it.
            log.exception("sse_stream_failed", extra={"fields": {"conn_id": sub.conn_id}})
            transport.abort()
            return response
        finally:
            broadcaster.unsubscribe(sub)
            self._streams.discard(sub)
        if not transport.is_closing():
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        return response

    def shutdown(self) -> None:
        """End every stream (the clients reconnect, with Last-Event-ID, elsewhere)."""
        for sub in list(self._streams):
            sub.finish()
