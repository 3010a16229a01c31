"""One event sequence per board, shared by every process, kept in Redis.

With several processes a board's diffs are numbered once, not once per
process: whichever process a client reaches, each diff is `seq + 1` of the
one before, and a client resuming at `<epoch>:<seq>` gets exactly what it
missed from the shared history.

- **Sequencer.** One process per board holds a lease (`SET NX PX`,
  renewed every third of `lease_s`) and turns its hub's board into numbered
  steps (at most one per `tick_s`: coalescing happens once per board). A
  step is appended by a Lua script only if the head is still at the step
  before (`epoch` and `seq` compared and set atomically), so two processes
  that both believe they lead (a pause, a lease that just moved) can never
  fork the sequence: the loser re-reads the head. A new holder starts from
  the head's board (kept with every step, stamps included), and never
  publishes a board older than the head's version.
- **Relay.** Every process reads every board's steps (`XREAD`) and hands
  them to its hub's broadcaster, whose feed keeps the history for resuming;
  at start and after Redis reconnects it reads the head and the last
  `history` steps at once (one `MULTI`).
- **Epoch.** The head holds it. It is made once (by the first process to
  find no head, from its board) and changes only when Redis lost the
  history (flushed or restarted empty); clients then get a snapshot.

While Redis is down no steps are made; reads stay exact (the bus) and
subscribers get what they missed, or a snapshot, when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import changes
from .board import Entry
from .feed import DIFF, SEASON, SNAPSHOT, Event, Feed
from .hub import Hub, Hubs

log = logging.getLogger("scoreboard.sequencer")

# KEYS: head, log. ARGV: epoch, previous seq, seq, version, season, board, maxlen, events...
_APPEND = """
local head = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if head[1] ~= ARGV[1] or head[2] ~= ARGV[2] then return 0 end
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], ARGV[3] .. '-0', 'epoch', ARGV[1], 'v', ARGV[4]}
for i = 8, #ARGV do
    table.insert(args, 'e' .. (i - 8))
    table.insert(args, ARGV[i])
end
redis.call(unpack(args))
redis.call('HSET', KEYS[1], 'seq', ARGV[3], 'version', ARGV[4], 'season', ARGV[5], 'board', ARGV[6])
return 1
"""
# KEYS: head, log. ARGV: epoch, version, season, board, snapshot event (seq 1).
_START = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[2], '1-0', 'epoch', ARGV[1], 'v', ARGV[2], 'e0', ARGV[5])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', '1', 'version', ARGV[2], 'season', ARGV[3],
           'board', ARGV[4])
return 1
"""
# KEYS: lease. ARGV: holder, ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_KINDS = {DIFF, SNAPSHOT, SEASON}


@dataclass(slots=True)
class Head:
    """Where a board's shared sequence stands: its last step and the board as of it."""

    epoch: str
    seq: int
    version: int
    season: int
    board: tuple[Entry, ...]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _head(fields: dict[bytes, bytes]) -> Head | None:
    if not fields:
        return None
    return Head(
        _text(fields[b"epoch"]),
        int(fields[b"seq"]),
        int(fields[b"version"]),
        int(fields[b"season"]),
        changes.decode_entries(fields[b"board"]),
    )


def _events(entry_id: bytes | str, fields: dict[bytes, bytes]) -> list[Event]:
    """The events of one step as stored in the log."""
    seq = int(_text(entry_id).split("-", 1)[0])
    epoch = _text(fields[b"epoch"])
    found: list[Event] = []
    for i in range(len(fields)):
        data = fields.get(f"e{i}".encode())
        if data is None:
            break
        kind = orjson.loads(data).get("type")
        if kind not in _KINDS:
            raise ValueError(f"unknown event type {kind!r}")
        found.append(Event(kind, epoch, seq, bytes(data)))
    return found


class Sequencer:
    """Every board's shared sequence: leads the boards whose lease it holds, relays all of them.

    Limits: `lease_s` before another process takes a board over from a
    holder that stopped; `tick_s` between two steps of a board; `history`
    steps kept in Redis (and by each feed) for resuming; `block_s` one read
    waits for new steps; `close_timeout_s` for the tasks to stop.
    """

    def __init__(
        self,
        hubs: Hubs,
        client: aioredis.Redis,
        *,
        prefix: str,
        new_epoch: Callable[[], str],
        lease_s: float = 2.0,
        tick_s: float = 0.05,
        history: int = 1024,
        block_s: float = 0.5,
        reconnect_s: float = 0.2,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._hubs = hubs
        self._redis = client
        self._prefix = prefix
        self._new_epoch = new_epoch
        self._lease_ms = int(lease_s * 1000)
        self._tick = tick_s
        self._history = history
        self._block_ms = int(block_s * 1000)
        self._reconnect_s = reconnect_s
        self._close_timeout_s = close_timeout_s
        self.holder = uuid.uuid4().hex
        self._append = client.register_script(_APPEND)
        self._start = client.register_script(_START)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._wake = {hub.id: asyncio.Event() for hub in hubs}
        self._leading: set[str] = set()
        self._last_id: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.steps = 0
        self.conflicts = 0
        self.reads = 0

    def _key(self, board: str, what: str) -> str:
        # The braces make a board's keys one Redis Cluster slot.
        return f"{self._prefix}:seq:{{{board}}}:{what}"

    @property
    def leading(self) -> frozenset[str]:
        """The boards this process is the sequencer of."""
        return frozenset(self._leading)

    def start(self) -> None:
        """Relay every board and compete for each board's lease (after the boards loaded)."""
        loop = asyncio.get_running_loop()
        for hub in self._hubs:
            hub.broadcaster.relayed = True
            hub.changed = self._wake[hub.id].set
            self._tasks.append(loop.create_task(self._lead(hub), name=f"scoreboard-sequence-{hub.id}"))
        self._tasks.append(loop.create_task(self._relay(), name="scoreboard-relay"))

    async def close(self) -> None:
        """Stop, handing the leases back so another process takes over at once; idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._close_timeout_s)
            if pending:
                log.warning("sequencer_close_timeout", extra={"fields": {"tasks": len(pending)}})
        for board in list(self._leading):
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self._key(board, "lease")], args=[self.holder])
        self._leading.clear()
        for hub in self._hubs:
            hub.changed = None

    # -- leading a board --------------------------------------------------------

    async def _lead(self, hub: Hub) -> None:
        wake = self._wake[hub.id]
        renew_s = self._lease_ms / 3000
        loop = asyncio.get_running_loop()
        lease_checked = -renew_s
        builder: Feed | None = None
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows
            # a cancellation that arrives as the event is set (and commits set
            # it often), so close() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(renew_s):
                    await wake.wait()
            wake.clear()
            try:
                # The lease is taken or renewed every third of its life, not
                # on every commit: a step of a holder that lost it meanwhile
                # is refused by the head check anyway.
                if loop.time() - lease_checked >= renew_s:
                    lease_checked = loop.time()
                    await self._hold(hub.id)
                if hub.id not in self._leading:
                    builder = None
                    continue
                if builder is None:
                    builder = await self._builder(hub)
                if builder is None:
                    continue
                started = loop.time()
                if await self._step(hub, builder):
                    # Coalesce: one step per tick at most, counted from when
                    # this one began (the append's round trip is part of it).
                    await asyncio.sleep(max(0.0, started + self._tick - loop.time()))
                    wake.set()
                elif builder.seq < 0:
                    builder = None  # the head moved under us: read it again
            except (RedisError, OSError) as exc:
                log.info("sequence_paused", extra={"fields": {"board": hub.id, "error": repr(exc)}})
                self._leading.discard(hub.id)
                builder = None
                await asyncio.sleep(self._reconnect_s)

    async def _hold(self, board: str) -> bool:
        """Take or keep the board's lease."""
        key = self._key(board, "lease")
        if board in self._leading:
            if await self._renew(keys=[key], args=[self.holder, self._lease_ms]):
                return True
            self._leading.discard(board)
            log.info("sequencer_lost", extra={"fields": {"board": board}})
        if await self._redis.set(key, self.holder, nx=True, px=self._lease_ms):
            self._leading.add(board)
            log.info("sequencer_taken", extra={"fields": {"board": board, "holder": self.holder}})
            return True
        return False

    async def _builder(self, hub: Hub) -> Feed | None:
        """A feed positioned at the head, to make the next steps from (None: no head yet)."""
        head = await self._read_head(hub.id)
        if head is None:
            # Redis lost the sequence (flushed, restarted empty): a new epoch.
            await self._ensure_head(hub)
            head = await self._read_head(hub.id)
        if head is None:
            return None
        builder = Feed(head.epoch, head.board, history=1, board_id=hub.id, season=head.season)
        builder.seq = head.seq
        builder.version = head.version
        return builder

    async def _step(self, hub: Hub, builder: Feed) -> bool:
        """Append the hub's board as the next step if it moved; True if one was appended."""
        if hub.version <= builder.version or (hub.season, hub.version) < (builder.season, builder.version):
            return False  # nothing new, or this hub is behind the head: never publish an older board
        previous = builder.seq
        if hub.season > builder.season:
            events = builder.new_season(hub.board.entries(), hub.season - 1, hub.season, hub.version)
        else:
            event = builder.publish(hub.board.entries(), hub.version)
            if event is None:
                return False  # the top K did not change
            events = [event]
        appended = await self._append(
            keys=[self._key(hub.id, "head"), self._key(hub.id, "log")],
            args=[
                builder.epoch,
                str(previous),
                str(builder.seq),
                builder.version,
                builder.season,
                changes.encode_entries(builder.board),
                self._history,
                *(e.json for e in events),
            ],
        )
        if not appended:
            self.conflicts += 1
            builder.seq = -1
            return False
        self.steps += 1
        feed = hub.feed
        if feed.epoch == builder.epoch and feed.seq == previous:
            # This process's own subscribers get the step now; the relay
            # skips it when it reads it back.
            feed.take(events)
            hub.broadcaster.publish_events(events)
        return True

    async def _read_head(self, board: str) -> Head | None:
        fields = await self._redis.hgetall(self._key(board, "head"))
        return _head(cast(dict[bytes, bytes], fields))

    async def _ensure_head(self, hub: Hub) -> None:
        """Start the board's sequence (a new epoch) from this hub's board if Redis has none."""
        epoch = self._new_epoch()
        feed = Feed(epoch, hub.board.entries(), history=1, board_id=hub.id, season=hub.season)
        feed.seq = 1
        feed.version = hub.version
        started = await self._start(
            keys=[self._key(hub.id, "head"), self._key(hub.id, "log")],
            args=[epoch, hub.version, hub.season, changes.encode_entries(feed.board), feed.snapshot().json],
        )
        if started:
            log.info("sequence_started", extra={"fields": {"board": hub.id, "epoch": epoch}})

    # -- relaying every board -----------------------------------------------------

    async def _relay(self) -> None:
        while True:
            try:
                for hub in self._hubs:
                    await self._resync(hub)
                while True:
                    self.reads += 1
                    found = cast(
                        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                        await self._redis.xread(
                            {self._key(b, "log"): i for b, i in self._last_id.items()},
                            count=256,
                            block=self._block_ms,
                        )
                        or [],
                    )
                    for key, entries in found:
                        found_hub = self._hubs.find(_text(key).split("{", 1)[1].split("}", 1)[0])
                        if found_hub is not None:
                            await self._take(found_hub, entries)
                    if not found:
                        await self._check_epochs()
            except (RedisError, OSError, ValueError, KeyError) as exc:
                log.info("relay_paused", extra={"fields": {"error": repr(exc)}})
                await asyncio.sleep(self._reconnect_s)

    async def _check_epochs(self) -> None:
        """On a quiet read: a head with another epoch (Redis lost the sequence) means starting over."""
        hubs = list(self._hubs)
        async with self._redis.pipeline(transaction=False) as pipe:
            for hub in hubs:
                pipe.hget(self._key(hub.id, "head"), "epoch")
            epochs = await pipe.execute()
        for hub, epoch in zip(hubs, epochs, strict=True):
            if epoch is None or _text(epoch) != hub.feed.epoch:
                await self._resync(hub)

    async def _take(self, hub: Hub, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        feed = hub.feed
        for entry_id, fields in entries:
            events = _events(entry_id, fields)
            first = events[0] if events else None
            if first is None or (first.epoch == feed.epoch and first.seq <= feed.seq):
                # Empty, or already here (this process made it): read past it.
                self._last_id[hub.id] = _text(entry_id)
                continue
            if first.epoch != feed.epoch or first.seq != feed.seq + 1:
                await self._resync(hub)  # a new epoch, or steps trimmed away: start from the head
                return
            feed.take(events)
            hub.broadcaster.publish_events(events)
            self._last_id[hub.id] = _text(entry_id)

    async def _resync(self, hub: Hub) -> None:
        """Follow the board's sequence from its head, with the history Redis still has."""
        head_key, log_key = self._key(hub.id, "head"), self._key(hub.id, "log")
        for _ in range(2):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(head_key)
                pipe.xrevrange(log_key, count=self._history)
                fields, recent = await pipe.execute()
            head = _head(fields)
            if head is not None:
                break
            await self._ensure_head(hub)
        else:
            raise ValueError(f"no sequence head for {hub.id!r}")
        feed = hub.feed
        before = (feed.epoch, feed.seq)
        steps = [_events(i, f) for i, f in reversed(recent)]
        if before == (head.epoch, head.seq):
            self._last_id[hub.id] = f"{head.seq}-0"
            return
        feed.restart(
            head.epoch,
            head.seq,
            head.season,
            head.version,
            head.board,
            history=[e for step in steps for e in step],
        )
        self._last_id[hub.id] = f"{head.seq}-0"
        missed = feed.since(f"{before[0]}:{before[1]}")
        hub.broadcaster.publish_events(missed)
        log.info(
            "relay_synced",
            extra={"fields": {"board": hub.id, "epoch": head.epoch, "seq": head.seq}},
        )
