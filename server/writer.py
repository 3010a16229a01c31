"""Group commit: one writer task turns queued updates into batch transactions.

Handlers call `submit()`, which never awaits: it appends to a bounded queue
and returns a future. The writer takes up to `max_batch` updates, commits them
in one transaction, hands the committed result (values: per-update results
and each board's `Committed`) to `on_commit`, which applies them to the board
hubs and logs them, and only then resolves the futures, so nothing is
answered as credited before it is durable. Jobs (season ends) run in the
same task, between batches.

A batch the database refuses for its data (DataRefused: a value it cannot
store, a score past 2^63-1) is split in halves and retried until only the
offending update fails, with `validation_failed` or `score_overflow`; the
others commit and storage is not marked down.

When a batch fails (database stopped, connection cut, disk full, timeout) its
updates and everything queued behind it fail with `storage_unavailable`, new
submissions are refused at once, and a probe pings the store until it answers;
then `on_recover` resynchronises the board and submissions are accepted again.
A failed batch may still have committed (the reply can be lost after COMMIT):
a retry then comes back as a duplicate with the original answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import Code, ScoreboardError
from .store import BatchResult, DataRefused, Outcome, Result, Store, Update

log = logging.getLogger("scoreboard.writer")
T = TypeVar("T")


@dataclass(slots=True)
class _Pending:
    update: Update
    future: asyncio.Future[Result]
    queued_at: float = 0.0


class Writer:
    """Batches updates into transactions on `store`.

    Limits: `max_batch` updates per transaction; `flush_interval_s` is how long
    a batch may wait to fill once its first update is queued (0 flushes at
    once, and updates that arrive during a commit form the next batch);
    `max_queue` updates may wait in all (more are refused with `overloaded`);
    a transaction taking longer than `timeout_s` counts as failed.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock_us: Callable[[], int],
        on_commit: Callable[[Sequence[Update], BatchResult], None],
        on_recover: Callable[[], Awaitable[None]],
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
        before_batch: Callable[[], Awaitable[None]] | None = None,
        flush_interval_s: float = 0.0,
        max_batch: int = 1000,
        max_queue: int = 20_000,
        timeout_s: float = 5.0,
        retry_after_s: float = 1.0,
        probe_interval_s: float = 0.5,
    ) -> None:
        if max_batch < 1 or max_queue < max_batch:
            raise ValueError("need 1 <= max_batch <= max_queue")
        self._store = store
        self._clock_us = clock_us
        self._on_commit = on_commit
        self._on_recover = on_recover
        self._on_batch = on_batch
        self._before_batch = before_batch
        self._jobs: deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = deque()
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._timeout = timeout_s
        self._retry_after = retry_after_s
        self._probe_interval = probe_interval_s
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._healthy = True
        self._closing = False
        self._last_stamp = 0
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self.batches = 0
        self.committed = 0
        self.refused = 0

    @property
    def healthy(self) -> bool:
        """False from a failed batch until the store answers again."""
        return self._healthy

    @property
    def queued(self) -> int:
        """Updates waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the writer task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scoreboard-writer")
            self._task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # A writer that died would leave every later update waiting forever:
        # make it loud, and refuse new updates instead.
        if not task.cancelled() and task.exception() is not None:
            log.critical("writer_died", exc_info=task.exception())
            self._closing = True
            self._fail(list(self._queue), self._unavailable())
            self._queue.clear()

    def submit(self, update: Update) -> asyncio.Future[Result]:
        """Queue `update`; the future resolves once its batch committed.

        Raises at once (never waits) when shutting down, when the store is
        known to be down, or when the queue is full.
        """
        if self._closing:
            raise ScoreboardError(
                Code.SHUTTING_DOWN, "The server is shutting down.", retry_after=self._retry_after
            )
        if not self._healthy:
            raise self._unavailable()
        if len(self._queue) >= self._max_queue:
            raise ScoreboardError(
                Code.OVERLOADED,
                "Too many updates are waiting to be stored.",
                retry_after=self._retry_after,
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append(_Pending(update, future, loop.time()))
        self._wake.set()
        if len(self._queue) >= self._max_batch:
            self._full.set()
        return future

    def run_job(self, job: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """Run `job` in the writer, between two batches (season ends); its result or error.

        Jobs run before queued updates, so a season ends before the batches
        that follow it commit.
        """
        if self._closing:
            raise ScoreboardError(
                Code.SHUTTING_DOWN, "The server is shutting down.", retry_after=self._retry_after
            )
        if not self._healthy:
            raise self._unavailable()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # Retrieved even if its caller stopped waiting (a timer cancelled at shutdown).
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._jobs.append((job, future))
        self._wake.set()
        return future

    async def _run_jobs(self) -> None:
        while self._jobs:
            job, future = self._jobs.popleft()
            if future.done():
                continue
            attempt = asyncio.ensure_future(job())
            try:
                # As for a batch: at the deadline the job fails at once, and the
                # driver's cleanup over a dead link goes on in the background.
                result = await asyncio.wait_for(asyncio.shield(attempt), self._timeout)
            except asyncio.CancelledError:
                _abandon(attempt)
                future.cancel()
                raise
            except ScoreboardError as exc:  # a refusal (season_conflict): the job's own answer
                if not future.done():
                    future.set_exception(exc)
            except Exception as exc:
                # The store failed (an outage, a timeout): as for a batch.
                _abandon(attempt)
                log.error("job_failed", extra={"fields": {"error": repr(exc)}})
                self._mark_down()
                if not future.done():
                    future.set_exception(self._unavailable())
            else:
                if not future.done():
                    future.set_result(result)

    def _stopped(self) -> ScoreboardError:
        return ScoreboardError(
            Code.SHUTTING_DOWN,
            "The server stopped before storing the update.",
            retry_after=self._retry_after,
        )

    def _unavailable(self) -> ScoreboardError:
        return ScoreboardError(
            Code.STORAGE_UNAVAILABLE,
            "Storage is unavailable; the update was not recorded.",
            retry_after=self._retry_after,
        )

    async def _run(self) -> None:
        while True:
            if self._jobs:
                await self._run_jobs()
                continue
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._interval > 0 and len(self._queue) < self._max_batch and not self._closing:
                # The interval counts from the oldest queued update: a backlog
                # that built up during the last commit has waited long enough.
                wait = self._queue[0].queued_at + self._interval - asyncio.get_running_loop().time()
                if wait > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), wait)
            size = min(len(self._queue), self._max_batch)
            await self._flush([self._queue.popleft() for _ in range(size)])

    def _stamps(self, n: int) -> list[int]:
        # Strictly increasing per process: ties on score rank by this order.
        start = max(self._clock_us(), self._last_stamp + 1)
        self._last_stamp = start + n - 1
        return list(range(start, start + n))

    async def _flush(self, batch: list[_Pending]) -> bool:
        """Commit `batch`; False if storage failed (the batch is answered either way).

        A batch the database refuses for its data (not an outage) is split
        in halves until only the offending update fails: another client's
        bad input never fails an honest update or marks storage down.
        """
        updates = [p.update for p in batch]
        if self._before_batch is not None:
            # Due season ends first: an update counts in the season current
            # when its batch commits.
            try:
                async with asyncio.timeout(self._timeout):
                    await self._before_batch()
            except asyncio.CancelledError:
                self._fail(batch, self._stopped())
                raise
            except Exception as exc:
                log.error("before_batch_failed", extra={"fields": {"size": len(batch), "error": repr(exc)}})
                self._mark_down()
                self._fail(batch, self._unavailable())
                return False
        attempt = asyncio.ensure_future(
            self._store.apply_batch(updates, self._stamps(len(updates)), self._clock_us())
        )
        started = time.perf_counter()
        try:
            # shield: at the deadline the batch fails at once; the driver's own
            # cleanup of the cancelled attempt (a CancelRequest and ROLLBACK over
            # a link that may be dead) goes on in the background instead of
            # holding every waiting request for up to another timeout.
            result = await asyncio.wait_for(asyncio.shield(attempt), self._timeout)
        except asyncio.CancelledError:
            _abandon(attempt)
            self._fail(batch, self._stopped())
            raise
        except DataRefused as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                try:
                    if not await self._flush(batch[:half]):
                        self._fail(batch[half:], self._unavailable())
                        return False
                except asyncio.CancelledError:
                    self._fail(batch[half:], self._stopped())
                    raise
                return await self._flush(batch[half:])
            self.refused += 1
            log.warning(
                "update_refused_by_store",
                extra={
                    "request_id": batch[0].update.request_id,
                    "fields": {"action_id": batch[0].update.action_id, "error": str(exc)},
                },
            )
            self._fail(batch, _refusal(exc))
            return True
        except Exception as exc:
            _abandon(attempt)
            log.error("batch_failed", extra={"fields": {"size": len(batch), "error": repr(exc)}})
            self._mark_down()
            self._fail(batch, self._unavailable())
            return False
        self.batches += 1
        # Actions credited (one per update, whatever the boards it wrote).
        self.committed += sum(1 for r in result.results if r.outcome is Outcome.CREDITED)
        self._on_batch(len(batch), time.perf_counter() - started)
        try:
            self._on_commit(updates, result)
        except Exception:
            log.exception("on_commit_failed")
        for pending, res in zip(batch, result.results, strict=True):
            if not pending.future.done():
                pending.future.set_result(res)
        return True

    def _fail(self, batch: Sequence[_Pending], error: ScoreboardError) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    def _mark_down(self) -> None:
        # Everything still queued would hit the same wall: fail it now.
        queued = list(self._queue)
        self._queue.clear()
        self._fail(queued, self._unavailable())
        if self._healthy:
            self._healthy = False
            log.warning("storage_down", extra={"fields": {"failed_queued": len(queued)}})
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._recover(), name="scoreboard-probe")

    async def _recover(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._probe_interval)
            try:
                async with asyncio.timeout(self._timeout):
                    await self._store.ping()
                    await self._on_recover()
            except Exception as exc:
                log.info("storage_probe_failed", extra={"fields": {"error": repr(exc)}})
                continue
            self._healthy = True
            log.warning("storage_recovered")
            return

    async def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new updates, flush what is queued, stop; idempotent.

        Updates still queued after `timeout_s` fail with `shutting_down`.
        """
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        remaining = list(self._queue)
        self._queue.clear()
        self._fail(remaining, self._stopped())
        for _, future in self._jobs:
            if not future.done():
                future.set_exception(self._stopped())
        self._jobs.clear()


def _refusal(exc: DataRefused) -> ScoreboardError:
    if exc.overflow:
        return ScoreboardError(
            Code.SCORE_OVERFLOW, "The credit would take the score past 9223372036854775807 (2^63-1)."
        )
    return ScoreboardError(Code.VALIDATION_FAILED, "The database refused this update's data.")


def _abandon(attempt: asyncio.Future[Any]) -> None:
    """Cancel an attempt that is still running and retrieve its outcome when it ends."""
    if not attempt.done():
        attempt.cancel()
    attempt.add_done_callback(lambda f: f.cancelled() or f.exception())
