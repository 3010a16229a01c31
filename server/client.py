"""An async Python client for the WebSocket protocol, on the `websockets` library.

For games, bots, tests and load tests:

    async with ScoreboardClient("ws://127.0.0.1:8080/ws", token=token) as client:
        ack = await client.update({"actionId": started["actionId"], "ticket": started["ticket"]})
        await client.subscribe()
        async for board in client.boards():
            print(board.seq, [(e["userId"], e["score"]) for e in board.entries])

Updates wait for their own ack (matched by `id`). The board is kept up to
date from the snapshot and diffs; a gap (a lost diff, a new epoch) is
resynchronised with a fresh snapshot.

Failures are `ClientError`s carrying the server's stable codes:

- `connect()` raises the server's refusal of the upgrade (`invalid_token`,
  `token_expired`, `unauthorized`, `forbidden`, `rate_limited`), or
  `handshake_failed` when the answer is not the server's (a proxy's error
  page); an unreachable server raises `OSError` or `TimeoutError`.
- When the connection drops, updates in flight fail with
  `connection_lost`; they can be sent again safely, since an `actionId` is
  credited once. `close_code` holds the WebSocket close code.
- Without `reconnect`, the client is then over: `boards()`, `wait_for()`
  and every later call raise `ClientError("connection_lost")`.
- With `reconnect=True` the connection is reopened with jittered exponential
  backoff (never sooner than a `Retry-After` on 429 or 503) for as long as
  the server's refusal may be transient: network errors, timeouts, 5xx, 429,
  any other answer that is not an upgrade. The subscription resumes from the
  last seq. A 401 or 403 is final: the client is over and raises that
  refusal (`token_expired`, ...) from `boards()`, `wait_for()` and later calls.
- `close()` stops everything: `boards()` ends without error and no task of
  the client is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin

log = logging.getLogger("scoreboard.client")

# Refusals that the same request will meet again: stop reconnecting.
FINAL_STATUSES = frozenset({401, 403})
# Statuses whose Retry-After header is honoured as the least wait.
RETRY_AFTER_STATUSES = frozenset({429, 503})


class ClientError(Exception):
    """A refusal from the server (same codes as HTTP), or a lost connection.

    `status` is the HTTP status when the WebSocket upgrade itself was
    refused; `retry_after` the seconds the server asked to wait, if it did.
    """

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        self.retry_after = retry_after

    def again(self) -> ClientError:
        """A fresh copy, to raise the same failure from another call."""
        return ClientError(
            self.code, self.message, self.field, status=self.status, retry_after=self.retry_after
        )


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
        """Apply a snapshot or diff; False if it does not follow (a gap).

        A malformed message raises (KeyError, TypeError) and leaves the state as it was.
        """
        if msg["type"] == "scoreboard:update":
            epoch, seq, entries = msg["epoch"], msg["seq"], list(msg["topUsers"])
            self.epoch, self.seq, self.entries = epoch, seq, entries
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


def handshake_error(exc: InvalidHandshake) -> ClientError:
    """The `ClientError` for a refused or failed WebSocket upgrade.

    The server refuses with its JSON error body, whose code is kept; any other
    answer (a proxy's HTML page, a malformed response) is `handshake_failed`.
    """
    if not isinstance(exc, InvalidStatus):
        return ClientError("handshake_failed", f"The WebSocket handshake failed: {exc}")
    response = exc.response
    status = response.status_code
    wait = retry_after(response.headers) if status in RETRY_AFTER_STATUSES else None
    error = _error_body(response.body)
    if error is not None:
        code, message, fld = error
        return ClientError(code, message, fld, status=status, retry_after=wait)
    return ClientError(
        "handshake_failed",
        f"The server answered HTTP {status} {response.reason_phrase} instead of a WebSocket.",
        status=status,
        retry_after=wait,
    )


def _error_body(body: bytes | bytearray) -> tuple[str, str, str | None] | None:
    """(code, message, field) from `{"success": false, "error": {...}}`, or None."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("success") is not False:
        return None
    err = doc.get("error")
    if not isinstance(err, dict):
        return None
    code, message, fld = err.get("code"), err.get("message"), err.get("field")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message, fld if isinstance(fld, str) else None


def retry_after(headers: Headers, now: float | None = None) -> float | None:
    """The wait a Retry-After header asks for (seconds or an HTTP date), or None."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _subscribe_msg(since: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "subscribe", "channel": "scoreboard"}
    if since is not None:
        msg["since"] = since
    return msg


class ScoreboardClient:
    """One WebSocket connection to a Scoreboard server (reopened if `reconnect`).

    Call `connect()` (or use `async with`), and `close()` when done.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        origin: str | None = None,
        reconnect: bool = False,
        open_timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._url = url
        self._token = token
        self._origin = origin
        self._reconnect = reconnect
        self._open_timeout = open_timeout_s
        self._close_timeout = close_timeout_s
        self._min_backoff = min_backoff_s
        self._max_backoff = max_backoff_s
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._refs = itertools.count(1)
        self._subscribed = False
        self._resyncing = False
        self._closed = False  # close() was called
        self._over: ClientError | None = None  # why the client stopped for good
        self._version = 0  # bumped on every board change
        self._wakeup = asyncio.Event()  # set (and replaced) on a change or at the end
        self.board = BoardState()
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
        """Open the connection (authenticated by header when a token was given).

        Raises `ClientError` when the server refuses the upgrade (its code, such
        as `invalid_token`, or `handshake_failed` for an answer that is not the
        server's), `OSError` or `TimeoutError` when it cannot be reached. Not
        retried, even with `reconnect=True`: reconnecting starts once connected.
        """
        if self._reader is not None or self._closed:
            raise RuntimeError("connect() may be called once, before close().")
        try:
            ws = await self._open()
        except InvalidHandshake as exc:
            raise handshake_error(exc) from exc
        self._ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._run(ws))

    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        return await connect(
            self._url,
            additional_headers=headers,
            origin=Origin(self._origin) if self._origin else None,
            open_timeout=self._open_timeout,
            close_timeout=self._close_timeout,
            compression=None,
        )

    async def close(self) -> None:
        """Close the connection and stop reconnecting; idempotent.

        `boards()` ends, calls in flight fail with `connection_lost`. If
        cancelled, the connection is dropped without the closing handshake.
        """
        self._closed = True
        self._wake()
        try:
            reader = self._reader
            if reader is not None and not reader.done():
                reader.cancel()  # it may be waiting to reconnect
                await asyncio.wait([reader])  # raises if close() itself is cancelled
            if self._ws is not None:
                await self._ws.close()  # bounded by close_timeout_s
        except BaseException:
            if self._ws is not None:
                self._ws.transport.abort()
            raise
        finally:
            self._stop(None)

    async def _send(self, msg: Mapping[str, Any]) -> None:
        if self._over is not None:
            raise self._over.again()
        if self._ws is None:
            reason = "Reconnecting." if self._reader is not None else "Not connected."
            raise ClientError("connection_lost", reason)
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
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # failed by a drop while sending: already raised
        if reply["type"] == "error":
            err = reply["error"]
            raise ClientError(err["code"], err["message"], err.get("field"))
        return reply

    async def authenticate(self, token: str, timeout_s: float = 10.0) -> str:
        """Authenticate with a message (what browsers must do); returns the user id.

        The token is then also the one sent when reconnecting.
        """
        reply = await self._request({"type": "auth", "token": token}, timeout_s)
        self._token = token
        return str(reply["userId"])

    async def update(
        self, body: Mapping[str, Any], *, ref: str | None = None, timeout_s: float = 30.0
    ) -> Ack:
        """Send a score update (the body of POST /scores/update) and wait for its ack.

        Raises `ClientError` for a refusal, or `connection_lost` if the
        connection dropped before the ack (send it again: it is credited once).
        """
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
        """Watch the board (from `since`, or from a fresh snapshot).

        With `reconnect=True` the subscription is renewed on every reconnect,
        also after this call failed with `connection_lost` while reconnecting.
        """
        self._subscribed = True
        await self._send(_subscribe_msg(since))

    async def unsubscribe(self) -> None:
        """Stop watching the board."""
        self._subscribed = False
        await self._send({"type": "unsubscribe", "channel": "scoreboard"})

    async def boards(self) -> AsyncGenerator[BoardState, None]:
        """The current board (once there is one), then the board after each change.

        A slow consumer skips to the latest. Ends when `close()` is called;
        raises `ClientError` once the connection is over for good
        (`connection_lost`, or the refusal that stopped reconnecting).
        """
        if self._over is not None and not self._closed:
            raise self._over.again()  # over before this call: nothing new to show
        seen = -1
        while not self._closed:
            if self._version != seen and self.board.seq >= 0:
                seen = self._version
                yield BoardState(self.board.epoch, self.board.seq, list(self.board.entries))
            elif self._over is not None:
                raise self._over.again()
            else:
                await self._wakeup.wait()

    async def wait_for(
        self, predicate: Callable[[BoardState], object], timeout_s: float = 10.0
    ) -> BoardState:
        """The first board state for which `predicate(state)` is true.

        Raises `TimeoutError` after `timeout_s`, `ClientError` as `boards()` does
        (and `connection_lost` if the client is closed meanwhile).
        """

        async def first() -> BoardState:
            async with contextlib.aclosing(self.boards()) as states:
                async for state in states:
                    if predicate(state):
                        return state
            raise ClientError("connection_lost", "The client was closed.")

        return await asyncio.wait_for(first(), timeout_s)

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _stop(self, failure: ClientError | None) -> None:
        """The client is over (the first reason stays); wake everyone waiting."""
        if self._over is None:
            self._over = failure or ClientError("connection_lost", "The client was closed.")
        self._fail_pending(self._over.message)
        self._wake()

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClientError("connection_lost", message))

    async def _run(self, ws: ClientConnection) -> None:
        """The reader task: read, reopen the connection while allowed, then stop."""
        failure: ClientError | None = None
        try:
            resume = False
            while True:
                await self._read(ws, resume)
                self._ws = None
                self.close_code = ws.close_code
                detail = f"{ws.close_code} {ws.close_reason}".strip()
                lost = f"The connection was closed ({detail})."
                self._fail_pending(lost)
                if self._closed:
                    break
                if not self._reconnect:
                    failure = ClientError("connection_lost", lost)
                    break
                ws, resume = await self._reopen(), True
        except ClientError as exc:
            failure = exc
        except Exception as exc:  # a bug here must not leave callers waiting forever
            log.exception("client_failed")
            failure = ClientError("connection_lost", f"The client failed: {exc!r}")
            if self._ws is not None:
                self._ws.transport.abort()
        finally:
            self._stop(failure)

    async def _read(self, ws: ClientConnection, resume: bool) -> None:
        """Read until the connection closes; first subscribe again if `resume`."""
        try:
            if resume and self._subscribed:
                self._resyncing = False
                await ws.send(orjson.dumps(_subscribe_msg(self.board.position)).decode())
            async for raw in ws:
                if self._on_message(raw):
                    self._resyncing = True
                    await ws.send(orjson.dumps(_subscribe_msg(None)).decode())
        except ConnectionClosed:
            pass

    def _on_message(self, raw: str | bytes) -> bool:
        """Handle one message; True if the board must be resynchronised."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("client_bad_message", extra={"fields": {"message": str(raw)[:200]}})
            return False
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind in ("ack", "error", "auth"):
            future = self._pending.get(str(msg.get("id")))
            if future is not None and not future.done():
                future.set_result(msg)
        elif kind in ("scoreboard:update", "scoreboard:diff"):
            return self._on_board(msg)
        return False  # other types (pong, or added later) are not ours to handle

    def _on_board(self, msg: dict[str, Any]) -> bool:
        """Apply a snapshot or diff; True if it does not follow and a resync is due."""
        try:
            applied = self.board.apply(msg)
        except (KeyError, TypeError):
            applied = False
        if applied:
            if msg["type"] == "scoreboard:update":
                self._resyncing = False
            self._version += 1
            self._wake()
            return False
        if self._resyncing or not self._subscribed:
            return False  # the snapshot asked for is on its way
        self.resyncs += 1
        return True

    def _delays(self) -> Iterator[float]:
        """Jittered exponential backoff; the first wait is short, to spread a crowd."""
        delay = self._min_backoff
        yield random.uniform(0, delay)  # noqa: S311 (jitter, not a secret)
        while True:
            yield random.uniform(delay / 2, delay)  # noqa: S311
            delay = min(delay * 2, self._max_backoff)

    async def _reopen(self) -> ClientConnection:
        """A new connection, retried while the failure may be transient.

        Raises `ClientError` for a final refusal (401, 403).
        """
        delays = self._delays()
        wait = next(delays)
        for attempt in itertools.count(1):
            await asyncio.sleep(wait)
            wait = next(delays)
            try:
                ws = await self._open()
            except InvalidHandshake as exc:
                error = handshake_error(exc)
                if error.status in FINAL_STATUSES:
                    log.warning("reconnect_refused", extra={"fields": {"code": error.code}})
                    raise error from exc
                wait = max(wait, error.retry_after or 0.0)  # at least what the server asked for
                reason = str(error)
            except (OSError, TimeoutError) as exc:
                reason = repr(exc)
            else:
                self._ws = ws  # before any await: close() must find it
                return ws
            log.info("reconnect_failed", extra={"fields": {"attempt": attempt, "reason": reason}})
        raise AssertionError("unreachable")
