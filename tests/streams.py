"""Test clients for the streaming endpoints: an SSE reader and a raw WebSocket peer.

The raw peer speaks just enough RFC 6455 to complete the handshake and send
masked frames, and otherwise does what a misbehaving client does: never read,
or read but never answer pings.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass
class SseEvent:
    """One parsed Server-Sent Event (or a comment, when `comment` is set)."""

    event: str | None = None
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comment: str | None = None

    def json(self) -> dict[str, Any]:
        """The data as JSON."""
        return dict(orjson.loads(self.data))


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """Parse an event stream (text/event-stream) as it arrives."""
    current = SseEvent()
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n").rstrip("\r")
        if line == "":
            if data or current.event or current.id or current.retry is not None:
                current.data = "\n".join(data)
                yield current
            current, data = SseEvent(), []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            yield SseEvent(comment=value)
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            data.append(value)
        elif name == "retry":
            current.retry = int(value)


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client-to-server WebSocket frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class RawPeer:
    """A WebSocket client on a bare socket that reads only when told to.

    Nothing reads the socket in the background, so a peer that is not asked
    to read lets the kernel's buffers fill up, as a stuck client would.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self.frames: list[tuple[int, bytes]] = []

    async def send(self, msg: dict[str, Any]) -> None:
        """Send a JSON text frame."""
        await self._loop.sock_sendall(self._sock, masked_frame(orjson.dumps(msg)))

    async def _read_exactly(self, n: int, timeout: float) -> bytes | None:
        while len(self._buffer) < n:
            chunk = await asyncio.wait_for(self._loop.sock_recv(self._sock, 65536), timeout)
            if not chunk:
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        """Bytes up to and including `marker` (the handshake response)."""
        while marker not in self._buffer:
            chunk = await asyncio.wait_for(self._loop.sock_recv(self._sock, 65536), timeout)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self._buffer += chunk
        end = self._buffer.index(marker) + len(marker)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next (opcode, payload) from the server; (-1, b"") at EOF."""
        head = await self._read_exactly(2, timeout)
        if head is None:
            return -1, b""
        opcode, n = head[0] & 0x0F, head[1] & 0x7F
        if n in (126, 127):
            ext = await self._read_exactly(2 if n == 126 else 8, timeout)
            if ext is None:
                return -1, b""
            n = int.from_bytes(ext, "big")
        payload = await self._read_exactly(n, timeout) if n else b""
        if payload is None:
            return -1, b""
        self.frames.append((opcode, payload))
        return opcode, payload

    def close(self) -> None:
        """Drop the connection."""
        self._sock.close()


async def raw_peer(host: str, port: int, *, rcvbuf: int | None = None, headers: str = "") -> RawPeer:
    """Open a socket (with a small receive buffer if asked) and complete the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode(),
    )
    peer = RawPeer(sock)
    response = await peer.read_until(b"\r\n\r\n")
    if not response.startswith(b"HTTP/1.1 101"):
        raise AssertionError(response.decode(errors="replace"))
    return peer
