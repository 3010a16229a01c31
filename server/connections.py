"""Connections: a deadline per connection, a cap per client address, JSON for unparsable requests.

aiohttp's `RequestHandler` keeps a connection that never completes a request
head open as long as its keep-alive timer allows (an hour by default), so
idle and slowloris clients pile up until the file limit starves real ones.
`GuardedRequestHandler` gives every connection one deadline and one timer,
set by its phase:

- head: a request head is due `request_timeout_s` after the connection
  opened (first request) or after its first byte (later ones); more bytes do
  not extend it, so a head sent a byte at a time is cut.
- idle: the last response is done; closed `keepalive_timeout_s` later unless
  a new head starts.
- active: a handler runs (`connection_middleware` marks it); no deadline here,
  so WebSocket and SSE streams live as long as their handlers. Reading a body
  slowly is bounded where the body is read.

Connections from one address beyond `max_connections_per_ip` are not cut
silently: their first request is answered 429 `rate_limited` and the
connection closed, within a short deadline so they cannot hold the slot.

`GuardedSite` listens with these handlers; `connection_middleware` must be
the first middleware of the application.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from yarl import URL

from .errors import Code, ScoreboardError
from .http import STATUS, error_response, given_request_id, log_request

log = logging.getLogger("scoreboard.connections")
http_log = logging.getLogger("scoreboard.http")

_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's BadHttpMessage text (both parsers)


class Phase(Enum):
    """What a connection is waiting for; see the module docstring."""

    HEAD = "head"
    IDLE = "idle"
    ACTIVE = "active"
    CLOSED = "closed"


class ConnectionGuard:
    """The limits shared by the connections of one listener, and open connections per address.

    - `request_timeout_s` (10): a request head must arrive within this long
      of its first byte, or of the connection opening for the first request.
    - `keepalive_timeout_s` (60): an idle keep-alive connection is closed after this long.
    - `max_connections_per_ip` (256; 0: no limit): open connections per client
      address, HTTP, WebSocket and SSE alike.
    - `refused_timeout_s` (2): a connection over the cap is closed after
      min(this, request_timeout_s) if it has not sent the request its 429 answers.
    - `retry_after_s` (5): the Retry-After of that 429.
    - `refusal_log_interval_s` (10): at most one `connection_refused` line this
      often; the refusals in between are counted in the next line.
    """

    __slots__ = (
        "_counts",
        "_last_refusal_log",
        "_suppressed",
        "_total",
        "keepalive_timeout_s",
        "max_connections_per_ip",
        "refusal_log_interval_s",
        "refused_timeout_s",
        "refused_total",
        "request_timeout_s",
        "retry_after_s",
    )

    def __init__(
        self,
        *,
        request_timeout_s: float = 10.0,
        keepalive_timeout_s: float = 60.0,
        max_connections_per_ip: int = 256,
        refused_timeout_s: float = 2.0,
        retry_after_s: int = 5,
        refusal_log_interval_s: float = 10.0,
    ) -> None:
        if request_timeout_s <= 0 or keepalive_timeout_s <= 0 or refused_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if max_connections_per_ip < 0:
            raise ValueError("max_connections_per_ip must be >= 0")
        self.request_timeout_s = request_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_connections_per_ip = max_connections_per_ip
        self.refused_timeout_s = refused_timeout_s
        self.retry_after_s = retry_after_s
        self.refusal_log_interval_s = refusal_log_interval_s
        self._counts: dict[str, int] = {}
        self._total = 0
        self._last_refusal_log = float("-inf")
        self._suppressed = 0
        self.refused_total = 0

    def __len__(self) -> int:
        """Open connections counted against the cap (refused ones are not)."""
        return self._total

    def count(self, address: str) -> int:
        """Open connections from `address`."""
        return self._counts.get(address, 0)

    def acquire(self, address: str) -> bool:
        """Count a new connection from `address`; False (and not counted) if over the cap."""
        count = self._counts.get(address, 0)
        if self.max_connections_per_ip and count >= self.max_connections_per_ip:
            return False
        self._counts[address] = count + 1
        self._total += 1
        return True

    def release(self, address: str) -> None:
        """Forget one connection counted by `acquire`; call exactly once for each."""
        count = self._counts.get(address, 0) - 1
        if count > 0:
            self._counts[address] = count
        else:
            self._counts.pop(address, None)
        self._total -= 1

    def refused(self, address: str, now: float) -> None:
        """Count a refused connection; log it at most once per `refusal_log_interval_s`."""
        self.refused_total += 1
        if now - self._last_refusal_log < self.refusal_log_interval_s:
            self._suppressed += 1
            return
        log.info(
            "connection_refused",
            extra={
                "fields": {
                    "peer": address,
                    "open": self.count(address),
                    "limit": self.max_connections_per_ip,
                    "suppressed": self._suppressed,
                }
            },
        )
        self._last_refusal_log = now
        self._suppressed = 0


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, plus its deadline, address slot and JSON errors."""

    __slots__ = ("_deadline", "_event_loop", "_guard", "_peer", "_phase", "_refused", "_timer")

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        guard: ConnectionGuard,
        **kwargs: Any,
    ) -> None:
        # aiohttp's own keep-alive timer stays as a backstop; with this value
        # it never fires before ours (idle, then a head started just in time).
        kwargs["keepalive_timeout"] = guard.keepalive_timeout_s + guard.request_timeout_s
        super().__init__(manager, loop=loop, **kwargs)
        self._event_loop = loop
        self._guard = guard
        self._peer: str | None = None  # set while this connection holds an address slot
        self._phase = Phase.HEAD
        self._refused = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def refused(self) -> bool:
        """True if this connection is over its address's cap (its request gets a 429)."""
        return self._refused

    @property
    def phase(self) -> Phase:
        """The current phase (for logs and tests)."""
        return self._phase

    @property
    def retry_after_s(self) -> int:
        """The Retry-After for a refused connection."""
        return self._guard.retry_after_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take an address slot (or mark the connection refused) and start the head deadline."""
        guard = self._guard
        now = self._event_loop.time()
        peername = transport.get_extra_info("peername")
        address = peername[0] if isinstance(peername, tuple) else None
        timeout = guard.request_timeout_s
        if address is not None:
            if guard.acquire(address):
                self._peer = address
            else:
                self._refused = True
                timeout = min(timeout, guard.refused_timeout_s)
                guard.refused(address, now)
        self._deadline = now + timeout
        self._timer = self._event_loop.call_at(self._deadline, self._on_timer)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Give the address slot back (once) and stop the timer."""
        self._phase = Phase.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._peer is not None:
            self._guard.release(self._peer)
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """The first byte after an idle time starts a head deadline."""
        if data and self._phase is Phase.IDLE:
            # No timer work: while idle the timer fires at least every
            # request_timeout_s, so it is due no later than this deadline.
            self._phase = Phase.HEAD
            self._deadline = self._event_loop.time() + self._guard.request_timeout_s
        super().data_received(data)

    def request_started(self) -> None:
        """A handler runs: no deadline until `request_finished`."""
        if self._phase is not Phase.CLOSED:
            self._phase = Phase.ACTIVE

    def request_finished(self) -> None:
        """The handler returned: idle until the next head starts."""
        if self._phase is Phase.CLOSED:
            return
        guard = self._guard
        now = self._event_loop.time()
        self._phase = Phase.IDLE
        self._deadline = now + guard.keepalive_timeout_s
        self._arm(now + min(guard.keepalive_timeout_s, guard.request_timeout_s))

    def _arm(self, when: float) -> None:
        # Keep a timer that fires earlier: it re-arms itself (like aiohttp's
        # keep-alive timer), so a busy connection does not make one per request.
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self._event_loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is Phase.ACTIVE or phase is Phase.CLOSED:
            return  # request_finished arms the timer again
        now = self._event_loop.time()
        if now < self._deadline:
            when = self._deadline
            if phase is Phase.IDLE:
                when = min(when, now + self._guard.request_timeout_s)
            self._timer = self._event_loop.call_at(when, self._on_timer)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "connection_timeout",
                extra={"fields": {"peer": self._address(), "phase": phase.value, "refused": self._refused}},
            )
        self.force_close()

    def _address(self) -> str | None:
        peername = self.peername
        return peername[0] if isinstance(peername, tuple) else None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's log of an exception outside the handlers (draining an unread body).

        A body that does not match its Content-Encoding is the client's
        fault, not ours: one info line instead of an error with a traceback.
        """
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | HttpProcessingError):
            http_log.info(
                "unreadable_body",
                extra={"fields": {"peer": self._address(), "error": type(exc).__name__}},
            )
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse (400) or handle (5xx) in JSON.

        The log line names the exception class only: the parser's message
        quotes the offending line, which may hold a bearer token.
        """
        if status == 400:
            code = Code.HEADERS_TOO_LARGE if _headers_too_large(exc) else Code.BAD_REQUEST
            err = ScoreboardError(code, _PARSER_MESSAGES[code])
            http_log.info(
                "bad_request",
                extra={
                    "fields": {
                        "status": STATUS[code],
                        "peer": request.remote,
                        "error": type(exc).__name__ if exc is not None else None,
                    }
                },
            )
        else:
            # Only a bug gets here: the error middleware answers everything else.
            err = ScoreboardError(Code.INTERNAL_ERROR, "Internal server error.")
            http_log.error(
                "unhandled_error",
                exc_info=exc,
                extra={"fields": {"status": status, "peer": request.remote, "path": request.path}},
            )
        if request.writer.output_size > 0:
            # Part of a response is out: another one would corrupt the stream.
            raise ConnectionError("Response is sent already, cannot send another response")
        response = error_response(err)
        if err.code is Code.INTERNAL_ERROR:
            response.set_status(status)
        # The error middleware never saw this request: give it an id here.
        response.headers["X-Request-ID"] = given_request_id(request) or secrets.token_hex(6)
        response.force_close()
        return response


_PARSER_MESSAGES = {
    Code.HEADERS_TOO_LARGE: "A request header line is too long, or there are too many headers.",
    Code.BAD_REQUEST: "The request is not valid HTTP/1.1.",
}


def _headers_too_large(exc: BaseException | None) -> bool:
    return isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and exc.message == _TOO_MANY_HEADERS
    )


@web.middleware
async def connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mark the connection active while a handler runs; answer a refused connection 429.

    Must be the application's first middleware, so the whole handler chain is active.
    """
    protocol = request.protocol
    if not isinstance(protocol, GuardedRequestHandler):  # served by another runner (tests, tools)
        return await handler(request)
    if protocol.refused:
        response = error_response(
            ScoreboardError(
                Code.RATE_LIMITED,
                "Too many open connections from this address.",
                retry_after=protocol.retry_after_s,
            )
        )
        response.headers["X-Request-ID"] = given_request_id(request) or secrets.token_hex(6)
        response.force_close()
        log_request(request, response.status, 0.0)
        return response
    protocol.request_started()
    try:
        return await handler(request)
    finally:
        protocol.request_finished()


class _ExpectGuard:
    """Answers an `Expect` other than 100-continue with JSON 417, before the application.

    aiohttp handles `Expect` ahead of the middlewares: an unknown value came
    back as plain text, and one that is not UTF-8 as a 500.
    """

    __slots__ = ("_handler",)

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]) -> None:
        self._handler = handler

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect is None or expect.lower() == "100-continue":
            return await self._handler(request)
        response = error_response(
            ScoreboardError(Code.EXPECTATION_FAILED, "Only 'Expect: 100-continue' is supported.")
        )
        response.headers["X-Request-ID"] = given_request_id(request) or secrets.token_hex(6)
        response.force_close()
        log_request(request, response.status, 0.0)
        return response


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections are `GuardedRequestHandler`s; stops with `runner.cleanup()`.

    `max_line_size`, `max_field_size` and `max_headers` (aiohttp's defaults:
    8190, 8190, 128) bound the request line, one header and the header count;
    beyond them the request is answered 431. `reuse_port` sets SO_REUSEPORT,
    so worker processes share the port (workers.py).
    """

    __slots__ = (
        "_app_runner",
        "_bound_port",
        "_guard",
        "_handler_kwargs",
        "_host",
        "_listen_backlog",
        "_port",
        "_reuse_port",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        guard: ConnectionGuard,
        backlog: int = 128,
        max_line_size: int = 8190,
        max_field_size: int = 8190,
        max_headers: int = 128,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._reuse_port = reuse_port
        self._app_runner = runner
        self._listen_backlog = backlog
        self._host = host
        self._port = port
        self._bound_port: int | None = None
        self._guard = guard
        self._handler_kwargs: dict[str, Any] = {
            # What AppRunner hands RequestHandler, minus the access log (we log requests ourselves).
            "access_log": None,
            "max_line_size": max_line_size,
            "max_field_size": max_field_size,
            "max_headers": max_headers,
        }

    @property
    def guard(self) -> ConnectionGuard:
        """The limits and per-address counts of this listener's connections."""
        return self._guard

    @property
    def name(self) -> str:
        """http://host:port, with the bound port once started."""
        port = self._bound_port if self._bound_port is not None else self._port
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=port))  # noqa: S104

    async def start(self) -> None:
        """Listen; every accepted connection gets a `GuardedRequestHandler`."""
        await super().start()
        loop = asyncio.get_running_loop()
        manager = self._app_runner.server
        assert manager is not None, "call runner.setup() first"
        kwargs = {**self._handler_kwargs, "debug": loop.get_debug()}
        guard = self._guard
        if not isinstance(manager.request_handler, _ExpectGuard):
            manager.request_handler = _ExpectGuard(manager.request_handler)

        def factory() -> GuardedRequestHandler:
            return GuardedRequestHandler(manager, loop=loop, guard=guard, **kwargs)

        server = await loop.create_server(
            factory,
            self._host,
            self._port,
            backlog=self._listen_backlog,
            reuse_address=True,
            reuse_port=self._reuse_port,
        )
        self._server = server
        self._bound_port = server.sockets[0].getsockname()[1] if server.sockets else self._port
