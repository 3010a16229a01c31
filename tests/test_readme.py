"""The README's examples run as written, against a real server.

Shell blocks run in bash from the server's directory (where `scoreboard
token` finds the generated secrets), with only the address changed; the
Python examples run as scripts. Quick start (`make`) and Docker blocks are
not run here.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import orjson

from tests.conftest import StartServer
from tests.helpers import ServerHandle

README = (Path(__file__).parent.parent / "README.md").read_text()
NOT_RUN_HERE = ("make ", "docker ", "curl -N")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


async def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def served_from(start: StartServer, tmp_path: Path) -> ServerHandle:
    # As after `make run`, from the checkout: the embedded default in
    # ./scoreboard-data with the secrets generated there, and .venv beside it.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return await start(None, data_dir=tmp_path / "scoreboard-data", jwt_secret=None, ticket_secret=None)


async def test_shell_examples_run_as_written(start: StartServer, tmp_path: Path) -> None:
    server = await served_from(start, tmp_path)
    address = server.url.removeprefix("http://")
    runnable = [b for b in blocks("sh") if not any(marker in b for marker in NOT_RUN_HERE)]
    assert len(runnable) >= 4, "the README lost its examples"
    for block in runnable:
        script = block.replace("127.0.0.1:8080", address)
        code, out, err = await run(["bash", "-euo", "pipefail", "-c", script], tmp_path, environment())
        assert code == 0, f"{block}\n--- stdout\n{out}\n--- stderr\n{err}"
        assert '"success":false' not in out.replace(" ", ""), f"{block}\n{out}"
        if "/scores/update" in block:
            assert '"success":true' in out.replace(" ", ""), f"{block}\n{out}"
    # The examples credited what they say they credit.
    users = {row["userId"]: row["score"] for row in await server.top()}
    assert users.get("bob") == 25 + 10 and users.get("alice", 0) >= 1, users  # two credits of bob


async def test_ticket_script_runs_as_written(start: StartServer, tmp_path: Path) -> None:
    server = await served_from(start, tmp_path)
    (script,) = [b for b in blocks("python") if "def mint_ticket" in b]
    (tmp_path / "mint_ticket.py").write_text(script)
    code, out, err = await run([sys.executable, "mint_ticket.py"], tmp_path, environment())
    assert code == 0, err
    body = orjson.loads(out)
    assert set(body) == {"actionId", "ticket"}
    # The server shares the secret the script read from its data dir.
    alice = await run(["scoreboard", "token", "--sub", "alice"], tmp_path, environment())
    status, answer = await server.post("/scores/update", body, alice[1].strip())
    assert (status, answer["newScore"]) == (200, 30), answer


async def test_client_example_runs_as_written(start: StartServer, tmp_path: Path) -> None:
    server = await served_from(start, tmp_path)
    (script,) = [b for b in blocks("python") if "ScoreboardClient(" in b]
    (tmp_path / "client_example.py").write_text(
        script.replace("127.0.0.1:8080", server.url.removeprefix("http://"))
    )
    code, player, err = await run(["scoreboard", "token", "--sub", "alice"], tmp_path, environment())
    assert code == 0, err
    code, out, err = await run(
        [sys.executable, "client_example.py"], tmp_path, environment({"PLAYER": player.strip()})
    )
    assert code == 0, err
    assert "new score 1" in out
    assert "alice" in out


def test_security_md_names_tests_that_exist() -> None:
    security = (Path(__file__).parent.parent / "SECURITY.md").read_text()
    tests = Path(__file__).parent
    for module in set(re.findall(r"`(test_[a-z0-9_]+\.py)`", security)):
        assert (tests / module).is_file(), module
    sources = "\n".join(p.read_text() for p in tests.glob("test_*.py"))
    for name in set(re.findall(r"`(test_[a-z0-9_]+)`", security)):
        assert re.search(rf"def {name}\(", sources), name
