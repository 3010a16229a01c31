"""Fan-out of board events to many WebSocket subscribers: the real server vs a baseline.

Starts either the real server (`python -m server serve`, fresh SQLite file in
a temp dir, `--max-connections-per-ip 0`) or the baseline
(`loadtest/fanout_baseline.py`: plain aiohttp, a 20 Hz ticker and
`await ws.send_str(msg)` per subscriber) as a subprocess pinned to CPU 0,
pins itself to CPU 1, raises its RLIMIT_NOFILE (the server inherits it), and
opens N WebSocket subscribers on 127.0.0.1:

- counting subscribers: a raw asyncio Protocol that does the HTTP upgrade,
  sends `{"type":"subscribe","channel":"scoreboard"}`, answers pings, and
  only walks frame headers to count text frames (and tells a snapshot from a
  diff by one byte), never decoding JSON. Each one pauses reading after a
  read and all are resumed together every `--read-batch-ms` (250 ms), so a
  read takes every frame that arrived meanwhile: the generator costs far
  less per frame, and the server is unaffected (a few KiB wait in the
  kernel's buffers, far below the server's 64 KiB conflation threshold);
- `--sample` (50) latency subscribers, spread evenly through the connection
  order (so through the server's fan-out order), that read at once and
  decode every frame.

Subscribers connect to a quiet server (`--busy-connect`: while it
publishes), then the load starts. Real server: a driver posts
`POST /scores/update` (service token) at `--rate` (40/s), open loop (on
schedule, up to 16 requests in flight, whether or not earlier ones were
answered). The board has 10 users; each update lifts the user at a random
rank in `--lift-ranks` (3-7) to a new, unique top score, so a diff carries
the changed ranks (about 500 bytes). After the run `GET /scores` must show
every user at the score the driver expects. Latency of an update = from
just before its POST is sent to the first frame, at a sampled subscriber,
that shows that user at a score >= the update's (scores only grow: a higher
one means the update was coalesced into a newer board). It includes the
HTTP request, the group commit (SQLite `synchronous=FULL`, 2 ms flush
interval) and the wait for the broadcast tick; the POST's own answer time
is reported next to it, also with no subscribers. Baseline: latency =
arrival - the `sentAt` the ticker embedded (`time.monotonic()`, the same
clock in both processes), i.e. from the start of the tick's send loop.

Per run, over the `--duration` window after `--warmup`: subscribers held
(connected at the end of the window), delivered messages/s (text frames
received by all subscribers), published events/s (sequence numbers seen by
the sampled subscribers), delivered per subscriber per second against the
target (baseline: `--hz`; server: min(--rate, 1000 / tick ms)), "held" when
every subscriber got >= 95% of the target rate, server CPU (% of one core,
and microseconds of server CPU per delivered message, from
/proc/<pid>/stat; "fan-out us/msg" first subtracts the CPU the server used
in `--calibrate` seconds before anyone connected, taking the same updates),
CPU 0 busy (all processes, from /proc/stat: also the kernel's network work
done in softirq context outside the server process), latency p50/p99, POST
p50, catch-up snapshots (conflations), this generator's CPU (near 100% would
mean the generator is the limit), connection setup time.

Variants (comma-separated; alternated A B A B within each round, a fresh
server per run): `baseline`, `server` (shipped defaults: 50 ms tick), and
`+`-joined parts: `tick-X` (server: --broadcast-tick-ms X), `tree=DIR`
(server: run the `server` package of another checkout, e.g. a patched
copy), `hz-X` (baseline: ticker rate), `raw` (baseline: one pre-built frame
written to every transport in a synchronous loop, no checks: the floor of
aiohttp on uvloop). A variant may be limited to some subscriber counts with
`@N/N`, e.g. `server+tick-20@2000/5000`.

Run (from the repository root, in the venv):

    python -m loadtest.fanout                                   # baseline vs server at 2,000 and 5,000
    python -m loadtest.fanout --subscribers 2000,5000,10000 --rounds 3 \\
        --variants baseline,server,server+tick-20
    python -m loadtest.fanout --variants server --subscribers 5000 --profile /tmp/fanprof
    python -m loadtest.fanout --json runs.json ...              # every run's raw figures

Prints one line per run and a table of medians per subscriber count.
Exits 1 if a run failed (server died, the driver's updates were refused or
the final board is wrong, a sampled subscriber never got an update, or
fewer subscribers connected than asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import uvloop

from loadtest.common import (
    CLIENT_CPU,
    JWT_SECRET,
    REPO,
    SERVER_CPU,
    ServerProcess,
    core_busy,
    core_ticks,
    fmt,
    format_table,
    median,
    percentile,
    pin_to_cpu,
    remove_sqlite,
)
from scoreboard.tokens import Role, mint_token

DEFAULT_VARIANTS = "baseline,server"
DEFAULT_SUBSCRIBERS = "2000,5000"
HELD_FRACTION = 0.95
BOARD_USERS = 10

_SUBSCRIBE = b'{"type":"subscribe","channel":"scoreboard"}'
_WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes in base64 will do
_SNAPSHOT_BYTE = ord("u")  # '{"type":"scoreboard:' is 20 bytes; then 'u'pdate or 'd'iff
_PART = re.compile(r"^(tick|hz)-(\d+(?:\.\d+)?)$")


def frame_bounds(buf: bytes, i: int) -> tuple[int, int]:
    """Payload start and end of the unmasked frame at `buf[i]` (end > len(buf): incomplete)."""
    ln = buf[i + 1] & 0x7F
    if ln < 126:
        return i + 2, i + 2 + ln
    if ln == 126:
        if len(buf) - i < 4:
            return i, len(buf) + 1
        ln = (buf[i + 2] << 8) | buf[i + 3]
        return i + 4, i + 4 + ln
    if len(buf) - i < 10:
        return i, len(buf) + 1
    ln = int.from_bytes(buf[i + 2 : i + 10], "big")
    return i + 10, i + 10 + ln


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (the mask key is zero, so the payload is sent as is)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return header + b"\0\0\0\0" + payload


# -- variants ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """The baseline or the real server with some flags, at some subscriber counts."""

    name: str
    kind: str  # "baseline" or "server"
    flags: dict[str, str]
    hz: float = 20.0
    tree: Path | None = None
    only: tuple[int, ...] = ()
    raw: bool = False

    def describe(self) -> str:
        """What runs, as it would be typed."""
        if self.kind == "baseline":
            text = f"loadtest/fanout_baseline.py --hz {self.hz:g}" + (" --raw" if self.raw else "")
        else:
            text = "python -m server serve " + " ".join(f"--{k} {v}" for k, v in self.flags.items())
        if self.tree:
            text += f" [server from {self.tree}]"
        if self.only:
            text += f" [only at {'/'.join(str(n) for n in self.only)} subscribers]"
        return text

    def tick_ms(self) -> float:
        """The server's broadcast tick (its default when no flag is given)."""
        return float(self.flags.get("broadcast-tick-ms", "50"))


def parse_variant(spec: str) -> Variant:
    """`baseline` or `server`, then `+tick-X`, `+hz-X`, `+tree=DIR`; `@N/N` limits the sizes."""
    name = spec
    spec, _, only_text = spec.partition("@")
    only = tuple(int(n) for n in only_text.split("/") if n.strip()) if only_text else ()
    head, *parts = spec.split("+")
    if head not in ("baseline", "server"):
        raise argparse.ArgumentTypeError(f"a variant starts with baseline or server, not {head!r}")
    flags: dict[str, str] = {"max-connections-per-ip": "0"} if head == "server" else {}
    hz = 20.0
    tree: Path | None = None
    raw = False
    for part in parts:
        if part.startswith("tree="):
            tree = Path(part[len("tree=") :]).resolve()
            continue
        if part == "raw" and head == "baseline":
            raw = True
            continue
        m = _PART.match(part)
        if m is None:
            raise argparse.ArgumentTypeError(f"unknown variant part {part!r}")
        kind, value = m.groups()
        if kind == "tick" and head == "server":
            flags["broadcast-tick-ms"] = value
        elif kind == "hz" and head == "baseline":
            hz = float(value)
        else:
            raise argparse.ArgumentTypeError(f"{part!r} does not apply to {head}")
    return Variant(name, head, flags, hz, tree, only, raw)


# -- the subscribers -----------------------------------------------------------------


class Clients:
    """Shared state of one run's subscribers."""

    def __init__(self, host: str, port: int, read_batch_s: float) -> None:
        self.request = (
            b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), port, _WS_KEY)
        )
        self.subscribe = client_frame(_SUBSCRIBE)
        self.read_batch_s = read_batch_s
        self.paused: list[Subscriber] = []
        self.lost = 0
        self.close_codes: Counter[int] = Counter()


class Subscriber(asyncio.Protocol):
    """A cheap WebSocket client: upgrade, subscribe, count frames, answer pings.

    A counting subscriber never decodes JSON; a sampled one (`Sampler`)
    overrides `on_text` to decode every frame.
    """

    batched = True  # pauses after each read until the next resume (see `resume_loop`)

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.closed = False
        self.frames = 0
        self.snapshots = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.clients.request)

    def connection_lost(self, exc: Exception | None) -> None:
        """Note the loss (counted if it happens after the upgrade)."""
        self.closed = True
        if self.open:
            self.clients.lost += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during the upgrade: {exc}"))

    def data_received(self, data: bytes) -> None:
        """Walk the frames that are complete; keep the rest for the next read."""
        if not self.open:
            data = self._upgrade(data)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        i = 0
        n = len(buf)
        while n - i >= 2:
            start, end = frame_bounds(buf, i)
            if end > n:
                break
            op = buf[i] & 0x0F
            if op == 1:
                self.on_text(buf, start, end)
            elif op == 9:
                self._write(client_frame(buf[start:end], 0xA))
            elif op == 8:
                self.clients.close_codes[int.from_bytes(buf[start : start + 2], "big") or 1005] += 1
                if self.transport is not None:
                    self.transport.close()
                return
            i = end
        self.buf = buf[i:] if i < n else b""
        if self.batched and self.clients.read_batch_s and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.clients.paused.append(self)

    def on_text(self, buf: bytes, start: int, end: int) -> None:
        """Count one text frame (a snapshot is told from a diff by one byte)."""
        self.frames += 1
        if end - start > 20 and buf[start + 20] == _SNAPSHOT_BYTE:
            self.snapshots += 1

    def _upgrade(self, data: bytes) -> bytes:
        buf = self.buf + data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            self.buf = buf
            return b""
        self.buf = b""
        status = buf[: buf.find(b"\r\n")]
        if b" 101 " not in status:
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(status.decode(errors="replace")))
            if self.transport is not None:
                self.transport.close()
            return b""
        self.open = True
        self._write(self.clients.subscribe)
        if not self.ready.done():
            self.ready.set_result(None)
        return buf[head_end + 4 :]

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class Sampler(Subscriber):
    """A subscriber that decodes every frame to measure latency and sequence gaps."""

    batched = False  # reads as soon as data arrives

    def __init__(self, clients: Clients, latency: Latency) -> None:
        super().__init__(clients)
        self.latency = latency
        self.pointers: dict[str, int] = {}  # user -> first update (in latency.sent) not yet seen
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.seq_window: tuple[int, int] | None = None
        self.gaps = 0
        self.diff_bytes = 0
        self.diffs = 0

    def on_text(self, buf: bytes, start: int, end: int) -> None:
        """Count the frame, decode it, and let `latency` see it."""
        now = time.monotonic()
        super().on_text(buf, start, end)
        msg = orjson.loads(buf[start:end])
        kind = msg.get("type")
        if kind == "scoreboard:diff":
            rows = msg["changes"]
            self.diffs += 1
            self.diff_bytes += end - start
        elif kind == "scoreboard:update":
            rows = msg["topUsers"]
        else:
            return
        seq = msg.get("seq")
        if isinstance(seq, int):
            if self.last_seq is not None and kind == "scoreboard:diff" and seq != self.last_seq + 1:
                self.gaps += 1
            if self.first_seq is None:
                self.first_seq = seq
            self.last_seq = seq
        self.latency.arrived(self, msg, rows, now)


# -- latency -------------------------------------------------------------------------


class Latency:
    """Update-to-subscriber latency, for the real server or the baseline.

    Real server: an update lifts one user to a new score S; it has reached a
    sampled subscriber with the first frame that shows that user at a score
    >= S. Scores only grow, so a later score of the same user means the
    update was coalesced into a newer board, not lost; and the lifted user's
    rank always changes, so the diff that first carries the update has a row
    for that user. Works whatever order concurrent updates commit in.
    """

    def __init__(self, baseline: bool) -> None:
        self.baseline = baseline
        # user -> [(score, monotonic send time)], in score order
        self.sent: dict[str, list[tuple[int, float]]] = {}
        self.window = (math.inf, math.inf)
        self.samples: list[float] = []

    def sending(self, user: str, score: int, t_sent: float) -> None:
        """The driver is about to post the update that lifts `user` to `score`."""
        self.sent.setdefault(user, []).append((score, t_sent))

    def arrived(self, sub: Sampler, msg: dict[str, Any], rows: list[dict[str, Any]], now: float) -> None:
        """A sampled subscriber got `msg` (with board `rows`) at `now`."""
        lo, hi = self.window
        if self.baseline:
            sent_at = msg.get("sentAt")
            if isinstance(sent_at, float) and lo <= sent_at <= hi:
                self.samples.append(now - sent_at)
            return
        for row in rows:
            user = row.get("userId")
            if not isinstance(user, str) or not (sent := self.sent.get(user)):
                continue
            score = row.get("score", 0)
            k = sub.pointers.get(user, 0)
            while k < len(sent) and sent[k][0] <= score:
                t_sent = sent[k][1]
                if lo <= t_sent <= hi:
                    self.samples.append(now - t_sent)
                k += 1
            sub.pointers[user] = k

    def in_window(self) -> int:
        """Updates sent inside the window."""
        lo, hi = self.window
        return sum(1 for sent in self.sent.values() for _, t in sent if lo <= t <= hi)

    def undelivered(self, samplers: Sequence[Sampler]) -> int:
        """(update, sampled subscriber) pairs sent inside the window and never seen."""
        lo, hi = self.window
        missing = 0
        for s in samplers:
            if s.closed:
                continue
            for user, sent in self.sent.items():
                missing += sum(1 for _, t in sent[s.pointers.get(user, 0) :] if lo <= t <= hi)
        return missing


# -- the update driver (real server only) ---------------------------------------------


class Driver:
    """Posts score updates at a fixed rate (open loop), tracking every user's score.

    The board has `BOARD_USERS` users with distinct scores. Each update lifts
    the user at a random rank in `lift` to max + 1: a new, unique top score.
    Updates are posted on schedule whether or not earlier ones were answered
    (up to `concurrency` connections), so a server that stalls gets its
    updates late instead of fewer of them; the scores the driver expects do
    not depend on the order in which the server commits them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        rate: float,
        lift: tuple[int, int],
        tag: str,
        latency: Latency,
        concurrency: int = 16,
    ) -> None:
        self.url = base_url + "/scores/update"
        self.rate = rate
        self.lift = lift
        self.tag = tag
        self.latency = latency
        self.concurrency = concurrency
        token = mint_token(
            JWT_SECRET.encode(), sub="fanout-bench", now=time.time(), ttl_s=3600, role=Role.SERVICE
        )
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.scores: dict[str, int] = {}
        self.n = 0
        self.late = 0
        self.acks: list[tuple[float, float]] = []  # (send time, answer seconds)
        self.errors: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.until = math.inf
        self.reordered = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Driver:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()

    def _lift(self, user: str, score: int) -> asyncio.Task[None]:
        """Post the update that brings `user` to `score` (in the background)."""
        delta = score - self.scores.get(user, 0)
        self.scores[user] = score
        self.n += 1
        body = b'{"userId":"%s","username":"Player %s","scoreDelta":%d,"actionId":"%s-%d"}' % (
            user.encode(),
            user[-4:].encode(),
            delta,
            self.tag.encode(),
            self.n,
        )
        task = asyncio.get_running_loop().create_task(self._post(user, score, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _post(self, user: str, score: int, body: bytes) -> None:
        assert self.session is not None
        t0 = time.monotonic()
        self.latency.sending(user, score, t0)
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                doc = await resp.json(loads=orjson.loads)
                if resp.status != 200:
                    self.errors[f"status {resp.status}"] += 1
                elif doc.get("newScore") != score:
                    # Two updates of one user in flight, committed in the other order
                    # (different connections): harmless, `check_board` verifies the end result.
                    self.reordered += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
        self.acks.append((t0, time.monotonic() - t0))

    async def seed(self) -> None:
        """Put `BOARD_USERS` users with distinct scores on the board."""
        await asyncio.gather(
            *(self._lift(f"bench-user-{i:04d}", BOARD_USERS - i) for i in range(BOARD_USERS))
        )

    async def run(self) -> None:
        """Post at `rate` until `self.until` (monotonic; may be set later), then wait for the answers."""
        rnd = random.Random(self.tag)
        t_start = time.monotonic()
        k = 0
        while True:
            due = t_start + k / self.rate
            if due >= self.until:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.005:
                self.late += 1
            ranking = sorted(self.scores, key=self.scores.__getitem__, reverse=True)
            user = ranking[rnd.randint(self.lift[0], self.lift[1]) - 1]
            self._lift(user, self.scores[ranking[0]] + 1)
            k += 1
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=35)

    async def check_board(self, base_url: str) -> str | None:
        """After the updates: does `GET /scores` show every user at the score the driver expects?"""
        assert self.session is not None
        async with self.session.get(base_url + "/scores") as resp:
            doc = await resp.json(loads=orjson.loads)
        shown = {row["userId"]: row["score"] for row in doc.get("topUsers", [])}
        if shown != self.scores:
            wrong = {u: (shown.get(u), s) for u, s in self.scores.items() if shown.get(u) != s}
            return f"GET /scores differs from the updates sent (user: (shown, expected)): {wrong}"
        return None


# -- one run -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """How many, how long, how hard."""

    duration_s: float
    warmup_s: float
    sample: int
    rate: float
    lift: tuple[int, int]
    connect_concurrency: int
    connect_budget_s: float
    busy_connect: bool
    read_batch_s: float
    changes: int
    calibrate_s: float


@dataclass(slots=True)
class RunResult:
    """One run: a variant at one subscriber count, one round."""

    variant: str
    kind: str
    subscribers: int
    round: int
    ok: bool
    problems: list[str]
    connected: int
    connect_s: float
    held: int
    delivered_per_s: float
    published_per_s: float
    per_sub_hz: float
    target_hz: float
    rate_held: bool
    server_cpu_pct: float
    server_cpu_us_per_msg: float
    idle_cpu_pct: float
    fanout_us_per_msg: float
    p50_ms: float
    p99_ms: float
    latency_samples: int
    undelivered: int
    ack_p50_ms: float
    ack_p99_ms: float
    idle_ack_p50_ms: float
    msg_bytes: float
    snapshots: int
    seq_gaps: int
    client_cpu_pct: float
    core_busy: dict[int, float]
    updates_sent: int
    updates_late: int
    server_core: int = SERVER_CPU
    server_events: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class BaselineProcess(ServerProcess):
    """`python -m loadtest.fanout_baseline` with the same life cycle as the server."""

    def __init__(
        self, *, workdir: Path, hz: float, changes: int, cpu: int | None, wait_start: bool, raw: bool
    ) -> None:
        super().__init__(database_url="sqlite:///unused", workdir=workdir, cpu=cpu)
        self.hz = hz
        self.changes = changes
        self.wait_start = wait_start
        self.raw = raw
        self.tree = REPO

    def command(self) -> list[str]:
        """The argv that starts the baseline (with the taskset prefix when pinned)."""
        argv = [sys.executable, "-m", "loadtest.fanout_baseline", "--port", str(self.port)]
        argv += ["--hz", f"{self.hz:g}", "--changes", str(self.changes)]
        if self.wait_start:
            argv.append("--start-on-request")
        if self.raw:
            argv.append("--raw")
        taskset = shutil.which("taskset")
        if self.cpu is not None and taskset is not None and self.cpu < (os.cpu_count() or 1):
            argv = [taskset, "-c", str(self.cpu), *argv]
        return argv


async def connect_all(
    port: int,
    n: int,
    *,
    sample: int,
    clients: Clients,
    latency: Latency,
    concurrency: int,
    budget_s: float,
) -> tuple[list[Subscriber], list[Sampler], Counter[str]]:
    """Open `n` subscribers (`sample` of them sampled, spread evenly), `concurrency` at a time.

    No new connection is started after `budget_s` seconds (those are counted as failures).
    """
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + budget_s
    sample = min(sample, n)
    every = n / sample if sample else math.inf
    sample_at = {int(j * every) for j in range(sample)}
    subs: list[Subscriber] = []
    samplers: list[Sampler] = []
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            if time.monotonic() > deadline:
                failures[f"not started within the {budget_s:g} s connect budget"] += 1
                return
            factory: Callable[[], Subscriber] = (
                functools.partial(Sampler, clients, latency)
                if i in sample_at
                else functools.partial(Subscriber, clients)
            )
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(factory, "127.0.0.1", port), 20)
                await asyncio.wait_for(proto.ready, 20)
            except (OSError, TimeoutError) as exc:
                failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                return
            subs.append(proto)
            if isinstance(proto, Sampler):
                samplers.append(proto)

    await asyncio.gather(*(one(i) for i in range(n)))
    return subs, samplers, failures


async def resume_loop(clients: Clients) -> None:
    """Every `read_batch_s`, let every paused counting subscriber read what arrived."""
    while True:
        await asyncio.sleep(clients.read_batch_s)
        paused, clients.paused = clients.paused, []
        for sub in paused:
            if not sub.closed and sub.transport is not None:
                sub.transport.resume_reading()


def _profile(
    pid: int, out: Path, seconds: float, extra: Sequence[str], cpu: int | None
) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() and shutil.which(spy) is None:
        print("  (py-spy not installed: pip install py-spy)", file=sys.stderr)
        return None
    argv = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += [*extra, "--format", "raw", "--output", str(out)]
    taskset = shutil.which("taskset")
    if taskset is not None and cpu is not None:
        argv = [taskset, "-c", str(cpu), *argv]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass(slots=True)
class Config:
    """The whole comparison."""

    variants: list[Variant]
    sizes: list[int]
    rounds: int
    shape: Shape
    workdir: Path
    server_cpu: int | None = SERVER_CPU
    client_cpu: int | None = CLIENT_CPU
    log_level: str = "info"
    profile_dir: Path | None = None
    profile_args: list[str] = field(default_factory=lambda: ["--rate", "200", "--nonblocking"])


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters at one end of the measured window."""

    t: float
    server_cpu: float
    client_cpu: float
    ticks: dict[int, tuple[int, int]]
    frames: int
    snapshots: int
    seqs: list[int | None]


class Run:
    """One run: a fresh server, calibration, N subscribers, warm-up, the window, checks."""

    def __init__(self, cfg: Config, variant: Variant, n: int, round_no: int) -> None:
        self.cfg = cfg
        self.variant = variant
        self.n = n
        self.round_no = round_no
        shape = cfg.shape
        self.baseline = variant.kind == "baseline"
        self.db = cfg.workdir / f"fanout-{round_no}-{n}-{random.randrange(1 << 30):x}.db"
        self.proc: ServerProcess
        if self.baseline:
            self.proc = BaselineProcess(
                workdir=cfg.workdir,
                hz=variant.hz,
                changes=shape.changes,
                cpu=cfg.server_cpu,
                wait_start=not shape.busy_connect,
                raw=variant.raw,
            )
            self.target = variant.hz
        else:
            self.proc = ServerProcess(
                database_url=f"sqlite:///{self.db}",
                workdir=cfg.workdir,
                flags=variant.flags,
                cpu=cfg.server_cpu,
                log_level=cfg.log_level,
                tree=variant.tree,
            )
            self.target = min(shape.rate, 1000 / variant.tick_ms())
        self.problems: list[str] = []
        self.latency = Latency(self.baseline)
        self.clients = Clients("127.0.0.1", self.proc.port, shape.read_batch_s)
        tag = f"r{round_no}-{variant.name}-{n}-{random.randrange(1 << 30):x}"
        self.driver = Driver(self.proc.url, rate=shape.rate, lift=shape.lift, tag=tag, latency=self.latency)
        self.subs: list[Subscriber] = []
        self.samplers: list[Sampler] = []
        self.posting: asyncio.Task[None] | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self.idle_cpu_pct = self.idle_ack_ms = self.connect_s = math.nan
        self.undelivered = 0

    async def execute(self) -> RunResult:
        """Run, always stop the server, and report (a failed run is reported, not raised)."""
        self.proc.start()
        resumer = asyncio.create_task(resume_loop(self.clients)) if self.clients.read_batch_s else None
        try:
            await self.proc.wait_ready()
            async with self.driver:
                begin, end = await self._load()
                await self._check()
        except Exception as exc:  # reported as a failed run
            self.problems.append(f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
            return _failed(self.variant, self.n, self.round_no, self.problems)
        finally:
            if resumer is not None:
                resumer.cancel()
            await self._teardown()
        return self._result(begin, end)

    async def _calibrate(self) -> None:
        """The server's CPU before anyone subscribes, doing what it does in the window besides
        fanning out (the real server: taking --rate updates/s; the baseline: nothing)."""
        seconds = self.cfg.shape.calibrate_s
        if seconds <= 0:
            return
        c0, w0 = self.proc.cpu_seconds(), time.monotonic()
        if self.baseline:
            await asyncio.sleep(seconds)
        else:
            self.driver.until = w0 + seconds
            await self.driver.run()
        self.idle_cpu_pct = 100 * (self.proc.cpu_seconds() - c0) / (time.monotonic() - w0)
        self.idle_ack_ms = 1000 * percentile(sorted(a for t, a in self.driver.acks if t >= w0), 50)
        self.driver.until = math.inf

    async def _start_publishing(self) -> None:
        if not self.baseline:
            if self.posting is None:
                self.posting = asyncio.create_task(self.driver.run())
            return
        if not self.cfg.shape.busy_connect:  # the baseline's ticker waits for POST /start
            assert self.driver.session is not None
            async with self.driver.session.post(self.proc.url + "/start") as resp:
                await resp.read()

    async def _load(self) -> tuple[Sample, Sample]:
        shape = self.cfg.shape
        if not self.baseline:
            await self.driver.seed()
        await self._calibrate()
        if shape.busy_connect:
            await self._start_publishing()
        t_connect = time.monotonic()
        self.subs, self.samplers, failures = await connect_all(
            self.proc.port,
            self.n,
            sample=shape.sample,
            clients=self.clients,
            latency=self.latency,
            concurrency=shape.connect_concurrency,
            budget_s=shape.connect_budget_s,
        )
        self.connect_s = time.monotonic() - t_connect
        if failures:
            self.problems.append(f"{sum(failures.values())} subscribers failed to connect: {dict(failures)}")
        await self._start_publishing()
        t_measure = time.monotonic() + shape.warmup_s
        t_end = t_measure + shape.duration_s
        self.latency.window = (t_measure, t_end)
        self.driver.until = t_end
        await asyncio.sleep(max(0.0, t_measure - time.monotonic()))
        if self.cfg.profile_dir is not None:
            self.cfg.profile_dir.mkdir(parents=True, exist_ok=True)
            name = f"{self.variant.name.replace('/', '_')}-{self.n}-r{self.round_no}.txt"
            self.spy = _profile(
                self.proc.pid,
                self.cfg.profile_dir / name,
                shape.duration_s,
                self.cfg.profile_args,
                self.cfg.client_cpu,
            )
        begin = self._sample()
        await asyncio.sleep(max(0.0, t_end - begin.t))
        return begin, self._sample()

    def _sample(self) -> Sample:
        return Sample(
            t=time.monotonic(),
            server_cpu=self.proc.cpu_seconds(),
            client_cpu=time.process_time(),
            ticks=core_ticks(),
            frames=sum(s.frames for s in self.subs),
            snapshots=sum(s.snapshots for s in self.subs),
            seqs=[s.last_seq for s in self.samplers],
        )

    async def _check(self) -> None:
        """Updates delivered to every sampled subscriber; the board as the driver expects."""
        self.held = sum(1 for s in self.subs if not s.closed)
        if self.posting is not None:
            await self.posting
        await asyncio.sleep(1.0)  # the last updates reach the sampled subscribers
        if self.baseline:
            return
        self.undelivered = self.latency.undelivered(self.samplers)
        if self.undelivered:
            self.problems.append(f"{self.undelivered} (update, sampled subscriber) pairs never delivered")
        if self.driver.errors:
            self.problems.append(f"update driver errors: {dict(self.driver.errors)}")
        else:
            wrong = await self.driver.check_board(self.proc.url)
            if wrong:
                self.problems.append(wrong)

    async def _teardown(self) -> None:
        for s in self.subs:
            if s.transport is not None:
                s.transport.close()
        await asyncio.sleep(0.5 + self.n / 20_000)  # let the server see the closes
        await self.proc.stop()
        if self.spy is not None:
            await asyncio.to_thread(self.spy.wait, 30)
        remove_sqlite(self.db)

    def _result(self, begin: Sample, end: Sample) -> RunResult:
        window = end.t - begin.t
        frames = end.frames - begin.frames
        cpu = end.server_cpu - begin.server_cpu
        advanced = [
            float(b - a) for a, b in zip(begin.seqs, end.seqs, strict=True) if a is not None and b is not None
        ]
        held = self.held
        per_sub = frames / window / held if held else 0.0
        if len(self.subs) < self.n:
            self.problems.append(f"only {len(self.subs)} of {self.n} subscribers connected")
        stopped = self.proc.event("baseline_stopped") or {}
        acks = sorted(a for t, a in self.driver.acks if begin.t <= t <= end.t)
        samples = sorted(self.latency.samples)
        diffs = sum(s.diffs for s in self.samplers)
        return RunResult(
            variant=self.variant.name,
            kind=self.variant.kind,
            subscribers=self.n,
            round=self.round_no,
            ok=not self.problems,
            problems=self.problems,
            connected=len(self.subs),
            connect_s=self.connect_s,
            held=held,
            delivered_per_s=frames / window,
            published_per_s=median(advanced) / window,
            per_sub_hz=per_sub,
            target_hz=self.target,
            rate_held=held == self.n and per_sub >= HELD_FRACTION * self.target,
            server_cpu_pct=100 * cpu / window,
            server_cpu_us_per_msg=1e6 * cpu / frames if frames else math.nan,
            idle_cpu_pct=self.idle_cpu_pct,
            fanout_us_per_msg=1e6 * (cpu - self.idle_cpu_pct / 100 * window) / frames if frames else math.nan,
            p50_ms=percentile(samples, 50) * 1000,
            p99_ms=percentile(samples, 99) * 1000,
            latency_samples=len(samples),
            undelivered=self.undelivered,
            ack_p50_ms=percentile(acks, 50) * 1000,
            ack_p99_ms=percentile(acks, 99) * 1000,
            idle_ack_p50_ms=self.idle_ack_ms,
            msg_bytes=sum(s.diff_bytes for s in self.samplers) / diffs if diffs else math.nan,
            snapshots=end.snapshots - begin.snapshots,
            seq_gaps=sum(s.gaps for s in self.samplers),
            client_cpu_pct=100 * (end.client_cpu - begin.client_cpu) / window,
            core_busy=core_busy(begin.ticks, end.ticks),
            updates_sent=self.latency.in_window(),
            updates_late=self.driver.late,
            server_core=self.cfg.server_cpu if self.cfg.server_cpu is not None else -1,
            server_events={k: v for k, v in stopped.items() if k != "event"},
            warnings=[str(w.get("event")) for w in self.proc.warnings()],
        )


async def run_once(cfg: Config, variant: Variant, n: int, round_no: int) -> RunResult:
    """A fresh server, N subscribers, warm-up, the measured window, teardown."""
    return await Run(cfg, variant, n, round_no).execute()


def _failed(variant: Variant, n: int, round_no: int, problems: list[str]) -> RunResult:
    nan = math.nan
    return RunResult(
        variant=variant.name, kind=variant.kind, subscribers=n, round=round_no, ok=False,
        problems=problems, connected=0, connect_s=nan, held=0, delivered_per_s=nan,
        published_per_s=nan, per_sub_hz=nan, target_hz=nan, rate_held=False, server_cpu_pct=nan,
        server_cpu_us_per_msg=nan, idle_cpu_pct=nan, fanout_us_per_msg=nan, p50_ms=nan,
        p99_ms=nan, latency_samples=0, undelivered=0, ack_p50_ms=nan, ack_p99_ms=nan,
        idle_ack_p50_ms=nan, msg_bytes=nan, snapshots=0, seq_gaps=0, client_cpu_pct=nan,
        core_busy={}, updates_sent=0, updates_late=0,
    )  # fmt: skip


def progress_line(r: RunResult) -> str:
    """One line per run."""
    status = "ok" if r.ok else "FAILED: " + "; ".join(r.problems)
    return (
        f"[round {r.round}] {r.variant:22} N={r.subscribers:<6} held {r.held:>6}  "
        f"{fmt(r.delivered_per_s, 0):>8} msg/s  {fmt(r.per_sub_hz, 1):>5}/{r.target_hz:.3g} Hz "
        f"(pub {fmt(r.published_per_s, 1)})  server {fmt(r.server_cpu_pct, 0)}% "
        f"{fmt(r.server_cpu_us_per_msg, 2)} us/msg (fan-out {fmt(r.fanout_us_per_msg, 2)}, "
        f"idle {fmt(r.idle_cpu_pct, 1)}%)  p50 {fmt(r.p50_ms, 1)} p99 {fmt(r.p99_ms, 1)} ms  "
        f"(ack p50 {fmt(r.ack_p50_ms, 1)}, idle {fmt(r.idle_ack_p50_ms, 1)})  "
        f"{fmt(r.msg_bytes, 0)} B  snaps {r.snapshots}  gen {fmt(r.client_cpu_pct, 0)}%  "
        f"connect {fmt(r.connect_s, 1)} s  {status}"
        + (f"  warnings: {sorted(set(r.warnings))}" if r.warnings else "")
    )


async def run_matrix(cfg: Config, echo: Callable[[str], None] = print) -> list[RunResult]:
    """Every round runs every subscriber count and, within it, every variant (alternation)."""
    results: list[RunResult] = []
    for round_no in range(1, cfg.rounds + 1):
        for n in cfg.sizes:
            for v in cfg.variants:
                if v.only and n not in v.only:
                    continue
                result = await run_once(cfg, v, n, round_no)
                results.append(result)
                echo(progress_line(result))
    return results


def summary(results: Sequence[RunResult], variants: Sequence[Variant], sizes: Sequence[int]) -> str:
    """Medians over rounds, per subscriber count and variant."""
    rows: list[list[object]] = []
    for n in sizes:
        for v in variants:
            runs = [r for r in results if r.subscribers == n and r.variant == v.name]
            if not runs:
                continue
            rates = [r.delivered_per_s for r in runs]
            rows.append(
                [
                    f"{n:,}",
                    v.name,
                    f"{fmt(median([float(r.held) for r in runs]), 0)} (min {min(r.held for r in runs):,})",
                    fmt(median(rates), 0),
                    f"{fmt(min(rates), 0)}-{fmt(max(rates), 0)}",
                    f"{fmt(median([r.per_sub_hz for r in runs]), 1)} / {runs[0].target_hz:.3g}",
                    f"{sum(r.rate_held for r in runs)}/{len(runs)}",
                    fmt(median([r.server_cpu_pct for r in runs]), 0),
                    fmt(median([r.core_busy.get(r.server_core, math.nan) for r in runs]), 0),
                    fmt(median([r.server_cpu_us_per_msg for r in runs]), 2),
                    fmt(median([r.fanout_us_per_msg for r in runs]), 2),
                    fmt(median([r.p50_ms for r in runs]), 1),
                    fmt(median([r.p99_ms for r in runs]), 1),
                    fmt(median([r.ack_p50_ms for r in runs]), 1),
                    fmt(median([r.msg_bytes for r in runs]), 0),
                    fmt(median([float(r.snapshots) for r in runs]), 0),
                    fmt(median([r.client_cpu_pct for r in runs]), 0),
                    fmt(median([r.connect_s for r in runs]), 1),
                    f"{sum(r.ok for r in runs)}/{len(runs)}",
                ]
            )
    headers = ["subs", "variant", "held", "msg/s", "range", "Hz per sub / target", "rate held"]
    headers += ["server CPU %", "CPU 0 busy %", "server us/msg", "fan-out us/msg", "p50 ms", "p99 ms"]
    headers += ["POST p50 ms"]
    headers += ["msg B", "snapshots"]
    headers += ["gen CPU %", "connect s", "ok"]
    return format_table(headers, rows)


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards `want` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})"
    )
    p.add_argument(
        "--subscribers",
        default=DEFAULT_SUBSCRIBERS,
        help=f"comma-separated N (default {DEFAULT_SUBSCRIBERS})",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternation rounds (default 3)")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run (default 8)")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds after connecting (default 2)"
    )
    p.add_argument("--sample", type=int, default=50, help="subscribers that decode every frame (default 50)")
    p.add_argument("--rate", type=float, default=40.0, help="server: score updates per second (default 40)")
    p.add_argument(
        "--lift-ranks", default="3-7", help="server: ranks lifted to the top per update (default 3-7)"
    )
    p.add_argument(
        "--changes", type=int, default=5, help="baseline: rows per message (default 5: ~480 bytes)"
    )
    p.add_argument(
        "--calibrate",
        type=float,
        default=3.0,
        help="seconds of the server's CPU without subscribers, subtracted for fan-out us/msg (default 3)",
    )
    p.add_argument("--connect-concurrency", type=int, default=128, help="upgrades in flight (default 128)")
    p.add_argument(
        "--connect-budget", type=float, default=120.0, help="seconds to open the subscribers (default 120)"
    )
    p.add_argument(
        "--busy-connect",
        action="store_true",
        help="publish while subscribers connect (default: connect to a quiet server, then start)",
    )
    p.add_argument(
        "--read-batch-ms",
        type=float,
        default=250.0,
        help="counting subscribers read every this many ms (0: at once, costlier; default 250)",
    )
    p.add_argument("--server-cpu", type=int, default=SERVER_CPU, help="CPU for the server (default 0)")
    p.add_argument("--client-cpu", type=int, default=CLIENT_CPU, help="CPU for this generator (default 1)")
    p.add_argument("--log-level", default="info", help="server log level (default info, as shipped)")
    p.add_argument("--profile", type=Path, help="write a py-spy raw profile of the server per run here")
    p.add_argument(
        "--profile-args",
        default="--rate 200 --nonblocking",
        help="extra py-spy record flags (e.g. '--native')",
    )
    p.add_argument("--json", type=Path, help="write every run's figures as JSON here")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace, workdir: Path) -> Config:
    """The comparison the command line asks for."""
    lo, _, hi = args.lift_ranks.partition("-")
    lift = (int(lo), int(hi or lo))
    if not 1 <= lift[0] <= lift[1] <= BOARD_USERS:
        raise SystemExit(f"--lift-ranks must be within 1-{BOARD_USERS}")
    return Config(
        variants=[parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()],
        sizes=[int(n) for n in args.subscribers.split(",") if n.strip()],
        rounds=args.rounds,
        shape=Shape(
            duration_s=args.duration,
            warmup_s=args.warmup,
            sample=args.sample,
            rate=args.rate,
            lift=lift,
            connect_concurrency=args.connect_concurrency,
            connect_budget_s=args.connect_budget,
            busy_connect=args.busy_connect,
            read_batch_s=args.read_batch_ms / 1000,
            changes=args.changes,
            calibrate_s=args.calibrate,
        ),
        workdir=workdir,
        server_cpu=args.server_cpu,
        client_cpu=args.client_cpu,
        log_level=args.log_level,
        profile_dir=args.profile,
        profile_args=args.profile_args.split(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exits 1 if any run failed."""
    args = parse_args(argv)
    pin_to_cpu(args.client_cpu)
    with tempfile.TemporaryDirectory(prefix="sb-fanout-") as tmp:
        cfg = config_from_args(args, Path(tmp))
        nofile = raise_nofile(max(cfg.sizes) + 1024)
        print(
            f"WebSocket fan-out: {', '.join(f'{n:,}' for n in cfg.sizes)} subscribers "
            f"({cfg.shape.sample} sampled), {cfg.shape.duration_s:g}s (+{cfg.shape.warmup_s:g}s warm-up) "
            f"x {cfg.rounds} rounds; server {cfg.shape.rate:g} updates/s; server on CPU {cfg.server_cpu}, "
            f"generator on CPU {cfg.client_cpu}; RLIMIT_NOFILE {nofile}"
        )
        for v in cfg.variants:
            print(f"  {v.name:22} {v.describe()}")
        if max(cfg.sizes) + 64 > nofile:
            print(f"  warning: RLIMIT_NOFILE {nofile} is too low for {max(cfg.sizes):,} subscribers")
        results = uvloop.run(run_matrix(cfg))
    print()
    print(summary(results, cfg.variants, cfg.sizes))
    if args.json:
        args.json.write_bytes(
            orjson.dumps([asdict(r) for r in results], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
