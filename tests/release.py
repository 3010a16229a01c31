"""The current release, run from its git commit as a subprocess, for upgrade tests.

`extract_release` writes the `server/` package of commit `RELEASE` into a
directory, where it imports as `server` (the working tree imports as
`scoreboard`, so the two never mix). `run_release` starts it with
`python -m server serve` on a given database, with the test secrets, on a
port the kernel picks (read back from its `listening` log line, so no other
process can take the port in between), waits for `/readyz`, and stops it with
SIGTERM. The release uses the dependencies installed in this interpreter.

A checkout without the commit (a shallow clone) fails the test with a message
saying so: an upgrade test that cannot find the old release must not pass.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import JWT_SECRET, TICKET_SECRET

REPO = Path(__file__).resolve().parent.parent
# The release in production: its databases are what the next release must migrate.
RELEASE = "8b28099"


def extract_release(dest: Path, commit: str = RELEASE) -> Path:
    """Write `commit`'s `server/` package under `dest` (created); returns `dest`."""
    command = ["git", "-C", str(REPO), "archive", "--format=tar", commit, "server"]
    try:
        done = subprocess.run(command, capture_output=True, check=False, timeout=60)
    except FileNotFoundError:
        pytest.fail(f"git is not installed: cannot extract release {commit} to test the upgrade from it")
    if done.returncode != 0:
        pytest.fail(
            f"cannot read release {commit} from the git repository at {REPO} (the upgrade test needs "
            f"the release's commit: in a shallow clone run `git fetch --unshallow`): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(dest, filter="data")
    if not (dest / "server" / "__main__.py").is_file():
        pytest.fail(f"release {commit} has no server/__main__.py: is it really a release of this project?")
    return dest


@dataclass
class ReleaseServer:
    """A running `python -m server serve` of the old release."""

    proc: asyncio.subprocess.Process
    log_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        """http://127.0.0.1:port"""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        """The end of its log (JSON lines on stderr), for failure messages."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def _listening_port(self) -> int | None:
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("event") == "listening":
                return int(doc["port"])
        return None

    async def _fail(self, why: str) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        pytest.fail(f"release {RELEASE}: {why} (rc={self.proc.returncode}):\n{self.log_tail()}")

    async def wait_ready(self, within_s: float) -> None:
        """Wait for the `listening` line, then for `/readyz` to answer 200."""
        deadline = time.monotonic() + within_s
        while (port := self._listening_port()) is None:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                await self._fail("the server did not start listening")
            await asyncio.sleep(0.05)
        self.port = port
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    await self._fail("/readyz did not answer 200")
                await asyncio.sleep(0.05)

    async def stop(self, within_s: float) -> None:
        """SIGTERM, then wait for a clean exit (code 0)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within_s)
            except TimeoutError:
                await self._fail(f"no exit within {within_s} s of SIGTERM")
        if self.proc.returncode != 0:
            await self._fail("unclean exit after SIGTERM")


@asynccontextmanager
async def run_release(
    root: Path, database_url: str, data_dir: Path, *, ready_within_s: float = 20.0
) -> AsyncIterator[ReleaseServer]:
    """Run the release extracted under `root` on `database_url` until the block ends.

    Leaving the block normally stops it with SIGTERM and fails the test unless
    it exits cleanly; leaving it with an exception kills it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    env.update(
        {
            "PYTHONPATH": str(root),
            "SCOREBOARD_HOST": "127.0.0.1",
            "SCOREBOARD_PORT": "0",
            "SCOREBOARD_DATABASE_URL": database_url,
            "SCOREBOARD_DATA_DIR": str(data_dir),
            "SCOREBOARD_JWT_SECRET": JWT_SECRET,
            "SCOREBOARD_TICKET_SECRET": TICKET_SECRET,
            "SCOREBOARD_SHUTDOWN_TIMEOUT_S": "5",
        }
    )
    log_path = root / "release.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "serve",
            cwd=root,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    server = ReleaseServer(proc, log_path)
    try:
        await server.wait_ready(ready_within_s)
        yield server
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    await server.stop(within_s=15.0)
