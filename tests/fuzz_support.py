"""Support for the property-based input tests (`tests/test_fuzz_inputs.py`).

- `LiveServer`: a real server in its own event loop (uvloop, as in
  production), so synchronous hypothesis tests can drive it example by
  example; it captures the server's logs and checks, after every example,
  that nothing leaked (subscribers, sockets, streams, tasks, connections).
- The contract the examples are judged by: the README's error table, the
  text rule for ids and names, the ticket format, the token claims.
- `Ledger`: a model of what the store must hold (the exactly-once ledger and
  every touched user's score), so an accepted fuzzed update is checked for
  the exact `newScore`, not just for a 2xx.
- `HonestTraffic`: known updates sent alongside every fuzzed request, in the
  same batch, that must all succeed with exactly the expected scores.
- A raw HTTP/1.1 client, for bytes aiohttp's client refuses to send.
- Strategies: odd text (controls, bidi, surrogates, lengths at the limits),
  odd numbers, odd JSON (duplicate keys, deep nesting, NaN, huge integers).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
import yarl
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from scoreboard.app import SSE
from scoreboard.logs import JsonFormatter
from tests.helpers import JWT_SECRET, TICKET_SECRET, ServerHandle, start_server

# -- budget ------------------------------------------------------------------

# `make fuzz` sets this (e.g. 2000) for a long search; the default keeps the
# whole file at about a minute on both stores.
EXAMPLES_ENV = "SCOREBOARD_FUZZ_EXAMPLES"


def fuzz_settings(default_examples: int) -> settings:
    """Hypothesis settings for examples that each talk to a real server."""
    configured = int(os.environ.get(EXAMPLES_ENV) or 0)
    return settings(
        max_examples=configured or default_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        print_blob=True,
    )


# -- the documented contract ---------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
_ERROR_ROW = re.compile(r"^\|\s*(\d{3})\s*\|\s*`([a-z_]+)`\s*\|", re.MULTILINE)


def documented_errors() -> dict[str, int]:
    """Error code -> HTTP status, as the README's error table lists them."""
    table = {code: int(status) for status, code in _ERROR_ROW.findall(README.read_text())}
    if "validation_failed" not in table or "invalid_json" not in table:
        raise AssertionError("the README's error table was not found")
    return table


DOCUMENTED = documented_errors()
ISSUER = "https://id.example/fuzz"
AUDIENCE = "scoreboard-fuzz"
LEEWAY_S = 10.0
MAX_DELTA = 1000
MAX_BODY_BYTES = 16 * 1024
MAX_TOKEN_BYTES = 4096
MAX_TICKET_CHARS = 1024
MAX_POINTS = 1_000_000_000
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# The servers run with a catalog of their own: a plain type, one whose name
# uses every punctuation mark a name may have, and one whose tickets cannot
# be redeemed for an hour. Type -> (points, min_duration_s, ttl_s).
CATALOG = {"default": (1, 0, 600), "quest.v2:boss-fight_3": (7, 0, 600), "slow": (5, 3600, 7200)}
CATALOG_TOML = """
[actions.default]
points = 1

[actions."quest.v2:boss-fight_3"]
points = 7

[actions.slow]
points = 5
min_duration_s = 3600
ttl_s = 7200
"""

# The text rule (server/text.py's docstring): Unicode scalar values without
# controls (Cc), format characters (Cf) other than ZWJ/ZWNJ, separators
# Zl/Zp, and of course no lone surrogates (Cs). Written out again here so
# the tests do not grade the server with its own code.
_REFUSED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_JOINERS = frozenset({"\u200c", "\u200d"})


def char_ok(ch: str) -> bool:
    """Whether one character may appear in an id or a name."""
    return ch in _JOINERS or unicodedata.category(ch) not in _REFUSED


def text_ok(value: object, limit: int = 128) -> bool:
    """Whether `value` is an acceptable id: a string of 1..limit characters under the text rule."""
    return isinstance(value, str) and 1 <= len(value) <= limit and all(char_ok(c) for c in value)


def is_int(value: object) -> bool:
    """A JSON integer (booleans are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A JSON number (booleans are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the server's logs -----------------------------------------------------------

# Events that mean a request hurt the server or someone else: a bug, an
# outage, or validation that let through what the database then refused.
BAD_EVENTS = frozenset(
    {
        "unhandled_error",
        "ws_message_failed",
        "batch_failed",
        "storage_down",
        "update_refused_by_store",
        "on_commit_failed",
        "writer_died",
        "send_failed",
        "unacknowledged_update_failed",
    }
)


class LogCapture(logging.Handler):
    """Keeps the server's log lines (as the production formatter writes them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.formatter_ = JsonFormatter()
        self.lines: list[str] = []
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.formatter_.format(record)
        except Exception as exc:  # a record the production formatter cannot write is lost
            line = f"<log line lost: {record.name} {record.getMessage()!r}: {exc!r}>"
            self.bad.append(line)
        self.lines.append(line)
        if record.levelno >= logging.ERROR or record.getMessage() in BAD_EVENTS:
            self.bad.append(line)

    def clear(self) -> None:
        """Forget what was captured so far."""
        self.lines.clear()
        self.bad.clear()

    def tail(self, n: int = 30) -> str:
        """The last `n` lines, for failure messages."""
        return "\n".join(line[:2000] for line in self.lines[-n:])


@contextlib.contextmanager
def capture_logs() -> Iterable[LogCapture]:
    """Capture `scoreboard` logs at info, and warnings of aiohttp and asyncio."""
    handler = LogCapture()
    levels = {"scoreboard": logging.INFO, "aiohttp": logging.WARNING, "asyncio": logging.WARNING}
    saved = {}
    for name, level in levels.items():
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.propagate)
        logger.setLevel(level)
        logger.addHandler(handler)
        # Thousands of lines per test: failure messages quote the relevant ones.
        logger.propagate = False
    try:
        yield handler
    finally:
        for name in levels:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(saved[name][0])
            logger.propagate = saved[name][1]


# -- the ledger model -----------------------------------------------------------

UNKNOWN_NAME = object()  # a display name the model does not predict exactly (a cleaned one)


@dataclass
class Ledger:
    """What the store must hold: credited actions and every touched user's score and name."""

    actions: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # action -> user, delta, after
    scores: dict[str, int] = field(default_factory=dict)
    names: dict[str, object] = field(default_factory=dict)

    def predict(self, action_id: str, user_id: str, delta: int) -> tuple[str, int | None]:
        """('credited', score after) | ('duplicate', original score after) | ('conflict', None)."""
        row = self.actions.get(action_id)
        if row is None:
            return "credited", self.scores.get(user_id, 0) + delta
        if row[0] == user_id and row[1] == delta:
            return "duplicate", row[2]
        return "conflict", None

    def record(self, action_id: str, user_id: str, delta: int, name: object) -> tuple[str, int | None]:
        """Apply one update as the store must (in submission order); returns the prediction."""
        outcome, after = self.predict(action_id, user_id, delta)
        if outcome == "credited" and after is not None:
            self.actions[action_id] = (user_id, delta, after)
            self.scores[user_id] = after
            if name is not None:
                self.names[user_id] = name
        return outcome, after

    def learn(self, action_id: str, user_id: str, delta: int, name: object, answer: dict[str, Any]) -> None:
        """Take in what the server says it did (a 200), so one wrong answer does not spoil later examples."""
        new_score, duplicate = answer.get("newScore"), answer.get("duplicate")
        if not is_int(new_score) or not isinstance(duplicate, bool):
            return
        if duplicate and action_id in self.actions:
            return
        # New, or a duplicate of an attempt whose answer was lost: credited either way.
        self.actions[action_id] = (user_id, delta, new_score)
        self.scores[user_id] = new_score
        if name is not None:
            self.names[user_id] = name

    def shown_name(self, user_id: str) -> object:
        """What `username` must be for `user_id` (the id when no name was ever given)."""
        return self.names.get(user_id, user_id)


def expected_display_name(claims: dict[str, Any]) -> object:
    """The board name a token's claims give: exact when the claim is already clean, else UNKNOWN_NAME."""
    for claim in ("name", "preferred_username"):
        value = claims.get(claim)
        if not isinstance(value, str):
            continue
        if text_ok(value) and value == value.strip():
            return value
        if any(char_ok(c) and not c.isspace() for c in value):
            return UNKNOWN_NAME  # usable once cleaned; the model does not say how
    return None


# -- a real server in its own loop -------------------------------------------------


def path_quote(value: str) -> str:
    """Every UTF-8 byte of `value` percent-encoded (dots and slashes too)."""
    return "".join(f"%{b:02X}" for b in value.encode("utf-8", "surrogatepass"))


class LiveServer:
    """A real server on 127.0.0.1, run in a private uvloop loop by synchronous tests."""

    def __init__(self, tmp_path: Path, database_url: str, **overrides: Any) -> None:
        self.loop = uvloop.new_event_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self.loop_errors: list[str] = []
        self.ledger = Ledger()
        self._logs_cm = capture_logs()
        self.logs = self._logs_cm.__enter__()
        self.ack_memory = overrides.get("ack") == "memory"
        self.handle: ServerHandle = self.run(start_server(tmp_path, database_url, **overrides))
        self.session: aiohttp.ClientSession = self.run(self._new_session())
        host, _, port = self.handle.url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.service_token = mint_token({"sub": "fuzz-backend", "role": "service"})
        self.baseline_tasks = 0
        self.describe = ""

    async def _new_session(self) -> aiohttp.ClientSession:
        # One connection per request: a pooled keep-alive connection would
        # hold a server task between examples and blur the task count.
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")
        loop.default_exception_handler(context)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run `coro` to completion in the server's loop."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        """Stop the server and close the loop."""
        try:
            self.run(self._close())
        finally:
            self.loop.close()
            self._logs_cm.__exit__(None, None, None)

    async def _close(self) -> None:
        await self.session.close()
        await self.handle.stop()

    # -- talking to it -----------------------------------------------------

    @property
    def url(self) -> str:
        return self.handle.url

    async def request(
        self, method: str, path: str, *, body: Any = None, tok: str | None = None, **kw: Any
    ) -> tuple[int, dict[str, str], Any]:
        """An HTTP request with a JSON body (or raw bytes in `data=`); status, headers, JSON."""
        headers = dict(kw.pop("headers", {}))
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        if body is not None:
            kw["data"] = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        url = yarl.URL(self.url + path, encoded=True)
        async with self.session.request(method, url, headers=headers, **kw) as resp:
            raw = await resp.read()
            try:
                doc = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                doc = raw
            return resp.status, dict(resp.headers), doc

    async def user(self, user_id: str) -> tuple[int, Any]:
        """GET /api/users/{userId}, every byte of the id percent-encoded."""
        status, headers, doc = await self.request("GET", "/api/users/" + path_quote(user_id))
        if status >= 400:
            check_error(status, headers, doc, f"GET /api/users/{user_id!r}")
        return status, doc

    async def check_users(self, users: Iterable[str], *, wait: bool) -> None:
        """Every user's stored score and name agree with the ledger (eventually, with ACK=memory)."""
        for user_id in sorted(set(users)):
            deadline = time.monotonic() + (3.0 if wait else 0.0)
            while True:
                status, doc = await self.user(user_id)
                problem = self._user_problem(user_id, status, doc)
                if problem is None:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(problem + "\n" + self.logs.tail())
                await asyncio.sleep(0.02)

    def _user_problem(self, user_id: str, status: int, doc: Any) -> str | None:  # noqa: PLR0911
        score = self.ledger.scores.get(user_id)
        if score is None:
            if status == 404 and doc["error"]["code"] == "user_not_found":
                return None
            return f"GET /api/users/{user_id!r}: expected 404 user_not_found, got {status} {doc!r}"
        if status != 200:
            return f"GET /api/users/{user_id!r}: expected 200 with score {score}, got {status} {doc!r}"
        name = self.ledger.shown_name(user_id)
        if doc.get("userId") != user_id or doc.get("score") != score:
            return f"GET /api/users/{user_id!r}: expected score {score}, got {doc!r}"
        shown = doc.get("username")
        if name is UNKNOWN_NAME:
            if not text_ok(shown):
                return f"GET /api/users/{user_id!r}: the name {shown!r} breaks the text rule"
        elif shown != name:
            return f"GET /api/users/{user_id!r}: expected username {name!r}, got {doc!r}"
        if not (is_int(doc.get("rank")) and doc["rank"] >= 1):
            return f"GET /api/users/{user_id!r}: bad rank in {doc!r}"
        return None

    # -- health and leaks ----------------------------------------------------

    def _open_counts(self) -> dict[str, int]:
        app = self.handle.app
        counts = {
            "subscribers": len(self.handle.broadcaster),
            "websockets": len(self.handle.ws_endpoint),
            "sse streams": len(app[SSE]),
            "extra tasks": len(asyncio.all_tasks(self.loop)) - self.baseline_tasks,
        }
        for site in self.handle.runner.sites:
            guard = getattr(site, "guard", None)
            if guard is not None:
                counts["open connections"] = len(guard)
        return counts

    async def settle(self, timeout: float = 3.0) -> None:
        """Wait until nothing of the example is left open; fail naming what leaked."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self._open_counts()
            if all(v <= 0 for v in counts.values()):
                return
            if time.monotonic() > deadline:
                tasks = [repr(t.get_coro()) for t in asyncio.all_tasks(self.loop)]
                raise AssertionError(
                    f"left open after the example: {counts}\ntasks: {tasks}\n{self.logs.tail()}"
                )
            await asyncio.sleep(0.005)

    async def check_ready(self) -> None:
        """/readyz is 200: no input marked storage down."""
        status, _, doc = await self.request("GET", "/readyz")
        assert status == 200, f"/readyz answered {status} {doc!r}\n{self.logs.tail()}"

    def check_logs(self) -> None:
        """No error, bug or outage was logged, and every line could be written."""
        problems = self.logs.bad + self.loop_errors
        assert not problems, "the server logged trouble:\n" + "\n".join(p[:3000] for p in problems)

    async def warm_up(self) -> None:
        """One honest batch, one socket and one stream, then take the task baseline."""
        honest = HonestTraffic(self)
        await honest.send()
        honest.check_answers()
        async with self.session.ws_connect(self.handle.ws_url) as ws:
            await ws.send_str('{"type": "subscribe", "channel": "scoreboard"}')
            await ws.receive(5)
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(b"GET /scores/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"scoreboard:update")
        writer.close()
        # The baseline is taken once the warm-up's connections are gone: it
        # holds the server's own tasks (the writer) and this coroutine.
        self.baseline_tasks = 1 << 30
        await self.settle()
        self.baseline_tasks = len(asyncio.all_tasks(self.loop))
        self.logs.clear()

    # -- one example -------------------------------------------------------------

    def example(self, fuzz: Callable[[], Awaitable[None]], case: object) -> None:
        """Run `fuzz` alongside honest traffic, then check the honest results, health and leaks."""
        self.describe = repr(case)
        self.run(self._example(fuzz))

    async def _example(self, fuzz: Callable[[], Awaitable[None]]) -> None:
        try:
            await self._checked_example(fuzz)
        except BaseException as exc:
            # Hypothesis prints the example too, but some pytest plugins blank it out.
            exc.add_note(f"example: {self.describe[:4000]}")
            raise

    async def _checked_example(self, fuzz: Callable[[], Awaitable[None]]) -> None:
        self.logs.clear()
        self.loop_errors.clear()
        traffic = HonestTraffic(self)
        # Both run to the end before a failure is raised: nothing of this
        # example may still be running when the next one starts.
        results = await asyncio.gather(fuzz(), traffic.send(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        traffic.check_answers()
        await self.check_users(traffic.users, wait=self.ack_memory)
        await self.check_ready()
        await self.settle()
        self.check_logs()


# -- tokens and tickets --------------------------------------------------------------


def b64url(raw: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_jwt(payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}') -> str:
    """An HS256 JWT over exactly these payload bytes, signed with the test secret."""
    signed = f"{b64url(header)}.{b64url(payload)}"
    sig = hmac.new(JWT_SECRET.encode(), signed.encode("ascii"), hashlib.sha256).digest()
    return f"{signed}.{b64url(sig)}"


def mint_token(claims: dict[str, Any], ttl: float = 3600) -> str:
    """A valid token for this server's issuer and audience (claims may override).

    Written as pyjwt writes JSON (ASCII escapes), so a claim may carry lone surrogates.
    """
    full = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + ttl), **claims}
    return sign_jwt(encode_json(full, ascii_only=True))


def sign_ticket_payload(payload: bytes, version: str = "v1") -> str:
    """A ticket over exactly these payload bytes, signed with the test secret."""
    signed = f"{version}.{b64url(payload)}"
    sig = hmac.new(TICKET_SECRET.encode(), signed.encode("ascii"), hashlib.sha256).digest()
    return f"{signed}.{b64url(sig)}"


def mint_ticket(action_id: str, user_id: str, points: int, *, nbf: int | None = None, ttl: int = 600) -> str:
    """A valid ticket."""
    now = int(time.time())
    claims = {
        "actionId": action_id,
        "userId": user_id,
        "points": points,
        "nbf": now - 60 if nbf is None else nbf,
        "exp": now + ttl,
    }
    return sign_ticket_payload(orjson.dumps(claims))


# -- honest traffic -------------------------------------------------------------------


class HonestTraffic:
    """Known updates sent with each fuzzed request: three service credits and a ticket redemption.

    Every user and action is new, so each must be answered with exactly its
    own delta as `newScore` (200), or accepted (202) with ACK=memory.
    """

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        tag = uuid.uuid4().hex[:12]
        self.player = f"honest-{tag}-p"
        self.player_token = mint_token({"sub": self.player, "name": "Honest Player"})
        # (user, delta, action id, display name, is the player)
        self.updates = [
            (f"honest-{tag}-{i}", 10 + i, f"honest-{tag}-a{i}", "Honest", False) for i in range(3)
        ]
        self.updates.append((self.player, 5, f"honest-{tag}-pa", "Honest Player", True))
        self.answers: list[tuple[tuple[str, int, str, str, bool], int, Any]] = []

    @property
    def users(self) -> list[str]:
        return [u[0] for u in self.updates]

    async def send(self) -> None:
        """Send all four at once (they share the fuzzed request's batch)."""
        server = self.server

        async def one(update: tuple[str, int, str, str, bool]) -> None:
            user, delta, action, name, is_player = update
            if is_player:
                body = {"actionId": action, "ticket": mint_ticket(action, user, delta)}
                status, _, doc = await server.request(
                    "POST", "/api/score/update", body=body, tok=self.player_token
                )
            else:
                body = {"userId": user, "scoreDelta": delta, "actionId": action, "username": name}
                status, _, doc = await server.request(
                    "POST", "/scores/update", body=body, tok=server.service_token
                )
            self.answers.append((update, status, doc))

        await asyncio.gather(*(one(u) for u in self.updates))

    def check_answers(self) -> None:
        """Each honest update got its exact answer; the ledger learns them."""
        for (user, delta, action, name, _), status, doc in self.answers:
            self.server.ledger.record(action, user, delta, name)
            if self.server.ack_memory:
                ok = status == 202 and doc.get("accepted") is True and doc.get("userId") == user
            else:
                ok = status == 200 and doc.get("newScore") == delta and doc.get("duplicate") is False
            assert ok, (
                f"an honest update of {delta} to {user} got {status} {doc!r}\n{self.server.logs.tail()}"
            )


# -- checking answers ------------------------------------------------------------------


def check_error(status: int, headers: dict[str, str], doc: Any, where: str) -> dict[str, Any]:
    """`doc` is the documented error shape with a documented code and its status; returns the error."""
    assert status < 500, f"{where}: {status} {doc!r}"
    assert isinstance(doc, dict), f"{where}: {status} with a body that is not a JSON object: {doc!r}"
    assert set(doc) == {"success", "error"} and doc["success"] is False, f"{where}: {doc!r}"
    err = doc["error"]
    assert isinstance(err, dict), f"{where}: {doc!r}"
    assert {"code", "message"} <= set(err) <= {"code", "message", "field", "retryAfter"}, f"{where}: {doc!r}"
    code = err["code"]
    assert code in DOCUMENTED, (
        f"{where}: code {code!r} ({status}) is not in the README's error table: {doc!r}"
    )
    assert DOCUMENTED[code] == status, f"{where}: {code} must be {DOCUMENTED[code]}, got {status}"
    assert isinstance(err["message"], str) and err["message"], f"{where}: {doc!r}"
    assert isinstance(err.get("field", ""), str), f"{where}: {doc!r}"
    if "retryAfter" in err:
        assert is_int(err["retryAfter"]) and err["retryAfter"] >= 1, f"{where}: {doc!r}"
        retry = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        assert retry == str(err["retryAfter"]), f"{where}: Retry-After {retry!r} for {doc!r}"
    if status == 401:
        auth = {k.lower(): v for k, v in headers.items()}.get("www-authenticate", "")
        assert auth.startswith('Bearer realm="scoreboard"'), f"{where}: WWW-Authenticate {auth!r}"
    return err


def check_request_id(headers: dict[str, str], sent: str | None, where: str) -> None:
    """Every response carries a sane X-Request-ID: the one sent if it was sane."""
    got = {k.lower(): v for k, v in headers.items()}.get("x-request-id")
    assert got is not None, f"{where}: no X-Request-ID in {headers!r}"
    assert _REQUEST_ID.match(got), f"{where}: X-Request-ID {got!r}"
    if sent is not None and _REQUEST_ID.match(sent):
        assert got == sent, f"{where}: sent X-Request-ID {sent!r}, got {got!r}"


def check_top_users(top: Any, where: str) -> None:
    """`topUsers` is a ranked list of at most ten well-formed rows, best first."""
    assert isinstance(top, list) and len(top) <= 10, f"{where}: topUsers {top!r}"
    for i, row in enumerate(top, 1):
        assert set(row) == {"rank", "userId", "username", "score"} and row["rank"] == i, f"{where}: {top!r}"
        assert text_ok(row["userId"]) and text_ok(row["username"]), f"{where}: {row!r}"
    scores = [row["score"] for row in top]
    assert scores == sorted(scores, reverse=True), f"{where}: topUsers out of order {top!r}"


# -- a raw HTTP/1.1 client -------------------------------------------------------------


@dataclass
class RawResponse:
    """A response read off a bare socket."""

    status: int
    headers: dict[str, str]
    body: bytes
    head: bytes

    def json(self) -> Any:
        """The body as JSON, or the raw bytes if it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body


def raw_request(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    connection: bytes = b"close",
) -> bytes:
    """The bytes of one request (Content-Length unless a header says otherwise)."""
    names = {name.lower() for name, _ in headers}
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: " + connection]
    if b"content-length" not in names and b"transfer-encoding" not in names and (body or method == b"POST"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_http(host: str, port: int, request: bytes, *, timeout: float = 10.0) -> RawResponse | None:
    """Send `request` and read one response; None if the server closed without answering.

    A 101 (an accepted WebSocket upgrade) is returned as soon as its head is read.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            while head.startswith(b"HTTP/1.1 100 "):  # an interim answer to Expect: 100-continue
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        status_line, *header_lines = head[:-4].split(b"\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        if status == 101 or method_of(request) == b"HEAD" or status in (204, 304):
            return RawResponse(status, headers, b"", head)
        body = await asyncio.wait_for(_read_body(reader, headers), timeout)
        return RawResponse(status, headers, body, head)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def method_of(request: bytes) -> bytes:
    """The method of a raw request."""
    return request.split(b" ", 1)[0]


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    with contextlib.suppress(ConnectionError):
        return await reader.read()
    return b""


# -- JSON with duplicate keys, NaN and huge numbers ---------------------------------------


@dataclass(frozen=True)
class Pairs:
    """A JSON object written member by member: keys may repeat (the last one wins)."""

    items: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class RawJson:
    """JSON text written as it is (deep nesting, numbers Python cannot print)."""

    text: str


def encode_json(value: Any, *, ascii_only: bool = False, spaced: bool = False) -> bytes:
    """`value` as JSON bytes; lone surrogates come out as escapes (ascii) or as invalid UTF-8."""
    sep = ", " if spaced else ","
    colon = ": " if spaced else ":"

    def enc(v: Any) -> str:  # noqa: PLR0911
        if isinstance(v, RawJson):
            return v.text
        if isinstance(v, Pairs):
            return "{" + sep.join(enc(k) + colon + enc(x) for k, x in v.items) + "}"
        if isinstance(v, dict):
            return "{" + sep.join(enc(k) + colon + enc(x) for k, x in v.items()) + "}"
        if isinstance(v, list | tuple):
            return "[" + sep.join(enc(x) for x in v) + "]"
        if isinstance(v, float):
            if math.isnan(v):
                return "NaN"
            if math.isinf(v):
                return "Infinity" if v > 0 else "-Infinity"
            return repr(v)
        return json.dumps(v, ensure_ascii=ascii_only)

    return enc(value).encode("utf-8", "surrogatepass")


def server_json(raw: bytes) -> tuple[bool, Any]:
    """How the server's parser (orjson) reads `raw`: (parsed?, value)."""
    try:
        return True, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False, None


# -- strategies --------------------------------------------------------------------------

EDGE_INTS = [
    0,
    -1,
    1,
    2,
    5,
    999,
    1000,
    1001,
    2**31 - 1,
    2**31,
    2**32,
    2**53 - 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**20,
    10**400,
    MAX_POINTS,
    MAX_POINTS + 1,
]
EDGE_FLOATS = [
    0.0,
    -0.0,
    1.0,
    5.0,
    1.5,
    1e308,
    -1e308,
    5e-324,
    2.0**53,
    2.0**63,
    math.nan,
    math.inf,
    -math.inf,
]
INTERESTING_CHARS = [
    "\x00",
    "\t",
    "\n",
    "\r",
    "\x1b",
    "\x7f",
    "\x85",
    "\xa0",
    "\xad",
    "\u061c",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
    "\ufeff",
    "\ufffd",
    "\uffff",
    "\ue000",
    "\U000e0001",
    "\U0010ffff",
    "\U0001f600",
    "\xb2",
    "\u2460",
    "\xe9",
    "\xdf",
    "\u0130",
    "%",
    "/",
    ".",
    "?",
    "#",
    "\\",
    '"',
    "'",
    " ",
    "\U0001f600",
    "\U0001d54f",
]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
EDGE_STRINGS = [
    "",
    " ",
    "  ",
    "0",
    "1",
    " 1",
    "1_000",
    "1.0",
    "0x10",
    "-1",
    "null",
    "true",
    "scoreboard",
    "default",
    "player",
    "service",
    ".",
    "..",
    "../..",
    "%00",
    "%2F",
    "a/b",
    "x" * 64,
    "x" * 65,
    "x" * 127,
    "x" * 128,
    "x" * 129,
    "\xe9" * 128,
    "\xe9" * 129,
    "\U0001d54f" * 128,
    "\U0001d54f" * 129,
    "e\u0301",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "<script>alert(1)</script>",
    "Robert'); DROP TABLE users;--",
    *INTERESTING_CHARS,
]


@functools.cache
def characters(*, surrogates: bool) -> st.SearchStrategy[str]:
    """Any character, with the odd ones (and optionally lone surrogates) drawn often."""
    options = [st.characters(), st.sampled_from(INTERESTING_CHARS)]
    if surrogates:
        options.append(st.sampled_from(SURROGATES))
        options.append(st.characters(categories=["Cs"]))
    return st.one_of(*options)


@functools.cache
def texts(*, surrogates: bool = False, max_size: int = 20) -> st.SearchStrategy[str]:
    """Strings of odd characters, edge strings, and strings at and around the length limits."""
    at_limits = st.builds(
        lambda ch, n: ch * n,
        st.sampled_from(["x", "\xe9", "\U0001d54f", "\u202e", "\x00", " "]),
        st.sampled_from([1, 63, 64, 65, 127, 128, 129, 1023, 1024, 1025, 4097]),
    )
    return st.one_of(
        st.text(characters(surrogates=surrogates), max_size=max_size),
        st.sampled_from(EDGE_STRINGS + (SURROGATES if surrogates else [])),
        at_limits,
    )


@functools.cache
def legal_characters() -> st.SearchStrategy[str]:
    """Characters the text rule allows, the odd legal ones drawn often."""
    return st.one_of(
        st.characters(exclude_categories=sorted(_REFUSED)),
        st.sampled_from([c for c in INTERESTING_CHARS if char_ok(c)] + sorted(_JOINERS)),
    )


@functools.cache
def valid_ids(*, crowded: bool = True) -> st.SearchStrategy[str]:
    """Ids the server must accept: often few (so they repeat), often odd but legal."""
    options: list[st.SearchStrategy[str]] = [
        st.text(legal_characters(), min_size=1, max_size=128),
        st.sampled_from([s for s in EDGE_STRINGS if text_ok(s)]),
    ]
    if crowded:
        options.append(st.text("ab", min_size=1, max_size=2))
    return st.one_of(*options)


@functools.cache
def numbers() -> st.SearchStrategy[Any]:
    """Integers and floats, mostly at the edges."""
    return st.one_of(
        st.sampled_from(EDGE_INTS),
        st.integers(),
        st.integers(-(2**70), 2**70),
        st.sampled_from(EDGE_FLOATS),
        st.floats(),
    )


@functools.cache
def scalars(*, surrogates: bool = False) -> st.SearchStrategy[Any]:
    """Any JSON scalar, odd ones first."""
    return st.one_of(st.none(), st.booleans(), numbers(), texts(surrogates=surrogates))


@functools.cache
def json_values(*, surrogates: bool = False) -> st.SearchStrategy[Any]:
    """Any JSON value: nested arrays and objects, objects with repeated keys."""
    keys = st.one_of(
        st.sampled_from(["userId", "scoreDelta", "actionId", "ticket", "username", "type"]), texts()
    )

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(keys, children, max_size=4),
            st.lists(st.tuples(keys, children), max_size=4).map(lambda items: Pairs(tuple(items))),
        )

    return st.recursive(scalars(surrogates=surrogates), extend, max_leaves=5)


@functools.cache
def deep_json() -> st.SearchStrategy[RawJson]:
    """Nesting at and beyond a parser's depth limit (orjson stops at 1024)."""
    return st.builds(_nested, st.sampled_from([2, 100, 1023, 1024, 1025, 5000]), st.booleans())


def _nested(depth: int, arrays: bool) -> RawJson:
    if arrays:
        return RawJson("[" * depth + "]" * depth)
    return RawJson('{"a":' * depth + "1" + "}" * depth)


@functools.cache
def odd_values(*, surrogates: bool = False) -> st.SearchStrategy[Any]:
    """What a member can be replaced with: any JSON value, deep nesting, huge number literals."""
    return st.one_of(
        scalars(surrogates=surrogates),
        json_values(surrogates=surrogates),
        deep_json(),
        st.sampled_from(["1" * 400, "-" + "9" * 30, "1e400", "-1e400", "1.0e3", "5E0", "-0"]).map(RawJson),
    )


@dataclass(frozen=True)
class Member:
    """What to do with one member of an otherwise valid object."""

    op: str  # keep | drop | null | replace | duplicate
    value: Any = None


@functools.cache
def member_changes(*, surrogates: bool = False, kind: str = "any") -> st.SearchStrategy[Member]:
    """How to spoil one member: drop it, null it, replace it, or repeat it with another value.

    `kind` biases the replacements: "time" (NumericDates that are huge,
    NaN, infinite, booleans, strings) or "id" (strings at the edges of the
    text rule).
    """
    values = odd_values(surrogates=surrogates)
    if kind == "time":
        values = st.one_of(st.sampled_from(ODD_TIMES), st.sampled_from(ODD_TIMES), values)
    elif kind == "id":
        values = st.one_of(texts(surrogates=surrogates), values)
    return st.one_of(
        st.just(Member("drop")),
        st.just(Member("null")),
        st.builds(Member, st.just("replace"), values),
        st.builds(Member, st.just("duplicate"), values),
    )


# Times that are numbers in name only, or too big for a float.
ODD_TIMES: list[Any] = [
    10**400,
    -(10**400),
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    2**63,
    True,
    "1800000000",
    RawJson("1e400"),
]


@dataclass(frozen=True)
class Spec:
    """A valid member, and how a replacement for it is drawn."""

    name: str
    value: Any
    kind: str = "any"
    surrogates: bool = False


def spoil(draw: st.DrawFn, specs: list[Spec], extra: st.SearchStrategy[Any] | None = None) -> Pairs:
    """An object of valid members, up to two of them spoiled, in any order, maybe with extras."""
    chosen = draw(st.sets(st.sampled_from([spec.name for spec in specs]), max_size=min(2, len(specs))))
    members = [
        (
            spec.name,
            spec.value,
            draw(member_changes(surrogates=spec.surrogates, kind=spec.kind))
            if spec.name in chosen
            else Member("keep"),
        )
        for spec in specs
    ]
    return build_object(draw(st.permutations(members)), draw(extra if extra is not None else extra_members()))


def build_object(members: list[tuple[str, Any, Member]], extra: list[tuple[str, Any]]) -> Pairs:
    """An object from valid members with their operations applied, plus extra members."""
    items: list[tuple[str, Any]] = []
    for name, value, op in members:
        if op.op == "keep":
            items.append((name, value))
        elif op.op == "null":
            items.append((name, None))
        elif op.op == "replace":
            items.append((name, op.value))
        elif op.op == "duplicate":
            items += (
                [(name, op.value), (name, value)] if len(items) % 2 else [(name, value), (name, op.value)]
            )
    return Pairs(tuple(items + extra))


@functools.cache
def extra_members(*, surrogates: bool = False) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """Usually none; sometimes unknown members (or `type`/`id`, which only a socket strips)."""
    names = st.one_of(st.sampled_from(["type", "id", "extra", "userid", "UserId", ""]), texts())
    return st.one_of(
        st.just([]),
        st.just([]),
        st.lists(st.tuples(names, scalars(surrogates=surrogates)), min_size=1, max_size=2),
    )


@dataclass(frozen=True)
class Rel:
    """A Unix time relative to when the example runs."""

    offset: int


def resolve(value: Any, now: int) -> Any:
    """`value` with Rel times made absolute."""
    if isinstance(value, Rel):
        return now + value.offset
    if isinstance(value, Pairs):
        return Pairs(tuple((k, resolve(v, now)) for k, v in value.items))
    if isinstance(value, dict):
        return {k: resolve(v, now) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(v, now) for v in value]
    return value
