"""An async Python client for the WebSocket protocol, on the `websockets` library.

For games, bots, tests and load tests:

    async with ScoreboardClient("ws://127.0.0.1:8080/ws", token=token) as client:
        ack = await client.update({"actionId": started["actionId"], "ticket": started["ticket"]})
        await client.subscribe()
        async for board in client.boards():
            print(board.seq, [(e["userId"], e["score"]) for e in board.entries])

Updates wait for their own ack (matched by `id`). The board is kept up to
date from the snapshot and diffs; a gap (a lost diff, a new epoch) is
resynchronised with a fresh snapshot. With `reconnect=True` a dropped
connection is reopened with backoff and the subscription resumes from the
last seq; updates in flight fail with `ClientError("connection_lost")` and
can be sent again safely, since an `actionId` is credited once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin


class ClientError(Exception):
    """A refusal from the server (same codes as HTTP), or a lost connection."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to one update."""

    user_id: str
    new_score: int | None
    duplicate: bool | None
    accepted: bool = False


@dataclass(slots=True)
class BoardState:
    """The board as of `epoch:seq`, rows best first."""

    epoch: str = ""
    seq: int = -1
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def position(self) -> str | None:
        """The `since` token to resume from."""
        return f"{self.epoch}:{self.seq}" if self.seq >= 0 else None

    def apply(self, msg: Mapping[str, Any]) -> bool:
        """Apply a snapshot or diff; False if it does not follow (a gap)."""
        if msg["type"] == "scoreboard:update":
            self.epoch, self.seq = msg["epoch"], msg["seq"]
            self.entries = list(msg["topUsers"])
            return True
        if msg["epoch"] != self.epoch or msg["seq"] != self.seq + 1:
            return False
        rows = {e["rank"]: e for e in self.entries}
        for change in msg["changes"]:
            if change.get("removed"):
                rows.pop(change["rank"], None)
            else:
                rows[change["rank"]] = change
        self.entries = [rows[r] for r in sorted(rows)]
        self.seq = msg["seq"]
        return True


class ScoreboardClient:
    """One WebSocket connection to a Scoreboard server."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        origin: str | None = None,
        reconnect: bool = False,
        open_timeout_s: float = 10.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._url = url
        self._token = token
        self._origin = origin
        self._reconnect = reconnect
        self._open_timeout = open_timeout_s
        self._max_backoff = max_backoff_s
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._refs = itertools.count(1)
        self._subscribed = False
        self._closed = False
        self.board = BoardState()
        self._changed = asyncio.Event()
        self.resyncs = 0
        self.close_code: int | None = None

    async def __aenter__(self) -> ScoreboardClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (authenticated by header when a token was given)."""
        self._ws = await self._open()
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))

    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        return await connect(
            self._url,
            additional_headers=headers,
            origin=Origin(self._origin) if self._origin else None,
            open_timeout=self._open_timeout,
            compression=None,
        )

    async def close(self) -> None:
        """Close the connection (and stop reconnecting); idempotent."""
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()  # it may be waiting to reconnect
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _send(self, msg: Mapping[str, Any]) -> None:
        if self._ws is None:
            raise ClientError("connection_lost", "Not connected.")
        try:
            await self._ws.send(orjson.dumps(msg).decode())
        except ConnectionClosed as exc:
            raise ClientError("connection_lost", str(exc)) from None

    async def _request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        ref = str(msg.setdefault("id", f"c{next(self._refs)}"))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self._send(msg)
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(ref, None)
        if reply["type"] == "error":
            err = reply["error"]
            raise ClientError(err["code"], err["message"], err.get("field"))
        return reply

    async def authenticate(self, token: str, timeout_s: float = 10.0) -> str:
        """Authenticate with a message (what browsers must do); returns the user id."""
        self._token = token
        reply = await self._request({"type": "auth", "token": token}, timeout_s)
        return str(reply["userId"])

    async def update(
        self, body: Mapping[str, Any], *, ref: str | None = None, timeout_s: float = 30.0
    ) -> Ack:
        """Send a score update (the body of POST /scores/update) and wait for its ack."""
        msg: dict[str, Any] = {"type": "score.update", **body}
        if ref is not None:
            msg["id"] = ref
        reply = await self._request(msg, timeout_s)
        return Ack(
            user_id=reply["userId"],
            new_score=reply.get("newScore"),
            duplicate=reply.get("duplicate"),
            accepted=bool(reply.get("accepted", False)),
        )

    async def subscribe(self, since: str | None = None) -> None:
        """Watch the board (from `since`, or from a fresh snapshot)."""
        self._subscribed = True
        msg: dict[str, Any] = {"type": "subscribe", "channel": "scoreboard"}
        if since is not None:
            msg["since"] = since
        await self._send(msg)

    async def unsubscribe(self) -> None:
        """Stop watching the board."""
        self._subscribed = False
        await self._send({"type": "unsubscribe", "channel": "scoreboard"})

    async def boards(self) -> AsyncIterator[BoardState]:
        """The board after each change (a slow consumer skips to the latest)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            yield BoardState(self.board.epoch, self.board.seq, list(self.board.entries))

    async def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> BoardState:
        """The first board state for which `predicate(state)` is true."""

        async def first() -> BoardState:
            if self.board.seq >= 0 and predicate(self.board):
                return self.board
            async for state in self.boards():
                if predicate(state):
                    return state
            raise AssertionError("unreachable")

        return await asyncio.wait_for(first(), timeout_s)

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            try:
                async for raw in ws:
                    self._on_message(orjson.loads(raw))
            except ConnectionClosed:
                pass
            self.close_code = ws.close_code
            self._fail_pending("The connection was closed.")
            if self._closed or not self._reconnect:
                return
            reopened = await self._reopen()
            if reopened is None:
                return
            ws = self._ws = reopened

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("ack", "error", "auth"):
            future = self._pending.get(str(msg.get("id")))
            if future is not None and not future.done():
                future.set_result(msg)
        elif kind in ("scoreboard:update", "scoreboard:diff"):
            if self.board.apply(msg):
                self._changed.set()
            else:
                self.resyncs += 1
                if self._ws is not None:
                    asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        with contextlib.suppress(ClientError):
            await self.subscribe()

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClientError("connection_lost", message))

    async def _reopen(self) -> ClientConnection | None:
        delay = 0.1
        while not self._closed:
            try:
                ws = await self._open()
            except (OSError, TimeoutError, ConnectionClosed):
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            self._ws = ws
            if self._subscribed:
                msg: dict[str, Any] = {"type": "subscribe", "channel": "scoreboard"}
                if self.board.position is not None:
                    msg["since"] = self.board.position
                await ws.send(orjson.dumps(msg).decode())
            return ws
        return None
