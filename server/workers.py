"""Worker processes: `scoreboard serve --workers N` runs N servers on one port.

The parent serves nothing. It reserves the port (`reserve_port`: a bound,
never-listening SO_REUSEPORT socket, so port 0 becomes one port all workers
share and no other program takes it between two restarts), then starts each
worker as a fresh interpreter (`python -m scoreboard serve`; never a fork,
which would copy an event loop, a pool and threads that are not safe to
reuse) with SCOREBOARD_WORKERS=1, SCOREBOARD_PORT set to that port and
`WORKER_ENV` set to the worker's index. A worker that sees `WORKER_ENV`
listens with SO_REUSEPORT, and the kernel spreads new connections over the
workers' listening sockets.

`Supervisor` restarts a worker that exits, after a delay that doubles with
every quick exit (`Backoff`); a worker refusing its configuration (exit 2)
stops them all, since the next one would refuse it too. SIGTERM or SIGINT
is forwarded to every worker; the parent waits for them up to
`stop_grace_s`, kills what is left, and exits 0 if every worker stopped
cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("scoreboard.workers")

# Set by the supervisor in each worker's environment (the worker's index);
# not a setting: it only tells `scoreboard serve` to listen with SO_REUSEPORT.
WORKER_ENV = "_SCOREBOARD_WORKER"
# `scoreboard serve` exits with 2 when it refuses its configuration.
EXIT_REFUSED = 2


class Backoff:
    """Delays between the starts of one worker: doubling from `initial_s` up to `max_s`.

    A worker that ran at least `reset_after_s` before exiting starts again
    after `initial_s`: it crashed once, it is not crashing in a loop.
    """

    __slots__ = ("_next_s", "initial_s", "max_s", "reset_after_s")

    def __init__(self, *, initial_s: float = 0.5, max_s: float = 10.0, reset_after_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self._next_s = initial_s

    def delay(self, uptime_s: float) -> float:
        """Seconds to wait before starting again a worker that exited after `uptime_s`."""
        if uptime_s >= self.reset_after_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket on host:port (port 0: a free one).

    It receives no connections (only listening sockets do); it keeps the
    port for the workers, which bind it with SO_REUSEPORT too. Raises
    OSError when the port is taken. The caller closes it.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # The options asyncio's create_server(reuse_address=True, reuse_port=True) sets.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def worker_command(flags: Sequence[str]) -> list[str]:
    """The argv of one worker: this interpreter running this package's `serve` with `flags`."""
    # `scoreboard` when installed, `server` when run from a checkout (`python -m server`).
    package = __name__.rpartition(".")[0]
    return [sys.executable, "-m", package, "serve", *flags]


def _clean_exit(code: int, signum: int) -> bool:
    # 0 after a graceful stop; killed by the forwarded signal itself (or 128 +
    # it) only before its handlers were installed, when it had nothing to flush.
    return code in (0, -signum, 128 + signum)


class Supervisor:
    """Runs `count` workers (`command` with `env`), restarting any that exits, until a signal.

    `stop_grace_s` is how long a stopping worker may take (its shutdown
    timeout, the last flush and the pool's close) before it is killed;
    `restart_initial_s`, `restart_max_s` and `restart_reset_s` shape each
    worker's `Backoff`.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        count: int,
        env: Mapping[str, str],
        stop_grace_s: float = 20.0,
        restart_initial_s: float = 0.5,
        restart_max_s: float = 10.0,
        restart_reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._command = list(command)
        self._count = count
        self._env = dict(env)
        self._stop_grace_s = stop_grace_s
        self._backoff = {
            "initial_s": restart_initial_s,
            "max_s": restart_max_s,
            "reset_after_s": restart_reset_s,
        }
        self._clock = clock
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._signal = signal.SIGTERM
        self._refused = False
        self._unclean = False

    @property
    def pids(self) -> dict[int, int]:
        """The running workers' process ids by index."""
        return {i: p.pid for i, p in self._procs.items() if p.returncode is None}

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward `signum` to every worker and start no more; `run` then returns."""
        if not self._stopping.is_set():
            self._signal = signal.Signals(signum)
            log.info("workers_stopping", extra={"fields": {"signal": self._signal.name}})
            self._stopping.set()
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    async def run(self) -> int:
        """Supervise until SIGTERM or SIGINT; 0 if every worker then stopped cleanly.

        1 if one had to be killed or failed its stop, 2 if a worker refused
        its configuration.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        tasks = [asyncio.create_task(self._keep(index)) for index in range(self._count)]
        try:
            await self._stopping.wait()
            _, late = await asyncio.wait(tasks, timeout=self._stop_grace_s)
            if late:
                self._kill_all()
            await asyncio.gather(*tasks)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            # Only on an error or a cancellation: never leave workers behind.
            self._kill_all()
            for task in tasks:
                task.cancel()
        if self._refused:
            return EXIT_REFUSED
        code = 1 if self._unclean else 0
        log.info("workers_stopped", extra={"fields": {"code": code}})
        return code

    def _kill_all(self) -> None:
        for index, proc in self._procs.items():
            if proc.returncode is None:
                log.warning("worker_killed", extra={"fields": {"pid": proc.pid, "index": index}})
                self._unclean = True
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    async def _keep(self, index: int) -> None:
        """Run worker `index`, starting it again whenever it exits, until stopped."""
        backoff = Backoff(**self._backoff)
        while not self._stopping.is_set():
            started = self._clock()
            code = await self._run_once(index)
            if self._stopping.is_set():
                if code is not None and not _clean_exit(code, self._signal):
                    self._unclean = True
                return
            if code == EXIT_REFUSED:
                # Every worker has the same configuration: the next would refuse it too.
                self._refused = True
                self.stop(signal.SIGTERM)
                return
            delay = backoff.delay(self._clock() - started)
            log.warning("worker_restarting", extra={"fields": {"index": index, "delay_s": delay}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, index: int) -> int | None:
        """Start worker `index` and wait for it; its exit code, None if it could not start."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command, env={**self._env, WORKER_ENV: str(index)}, stdin=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            log.error("worker_start_failed", extra={"fields": {"index": index, "error": str(exc)}})
            return None
        self._procs[index] = proc
        log.info("worker_started", extra={"fields": {"pid": proc.pid, "index": index}})
        if self._stopping.is_set():  # the signal came while it was being started
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self._signal)
        code = await proc.wait()
        fields: dict[str, object] = {"pid": proc.pid, "index": index, "code": code}
        if code < 0:
            with contextlib.suppress(ValueError):  # a number without a name
                fields["signal"] = signal.Signals(-code).name
        log.log(
            logging.INFO if self._stopping.is_set() else logging.WARNING,
            "worker_exited",
            extra={"fields": fields},
        )
        return code
