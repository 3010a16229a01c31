"""Settings, generated secrets, and the command line (`serve`, `token`, `ticket`)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from scoreboard.cli import main
from scoreboard.config import ConfigError, Settings, resolve_secrets
from tests.conftest import StartServer


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scoreboard", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_defaults_match_the_documented_table() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.top_k, s.max_delta, s.ack) == ("127.0.0.1", 8080, 10, 1000, "commit")
    assert s.store_url == f"sqlite:///{(Path('scoreboard-data') / 'scoreboard.db').resolve()}"


def test_environment_is_parsed_and_validated() -> None:
    s = Settings.from_env(
        {"SCOREBOARD_PORT": "9000", "SCOREBOARD_FLUSH_INTERVAL_MS": "2.5", "SCOREBOARD_DATA_DIR": "/tmp/x"}
    )
    assert (s.port, s.flush_interval_ms, s.data_dir) == (9000, 2.5, Path("/tmp/x"))
    with pytest.raises(ConfigError, match="SCOREBOARD_PORT='eighty' is not a valid int"):
        Settings.from_env({"SCOREBOARD_PORT": "eighty"})
    with pytest.raises(ConfigError, match="ack must be"):
        Settings.from_env({"SCOREBOARD_ACK": "maybe"})
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"SCOREBOARD_JWT_SECRET": "too-short"})
    with pytest.raises(ConfigError, match="queue_max"):
        Settings.from_env({"SCOREBOARD_QUEUE_MAX": "10", "SCOREBOARD_FLUSH_MAX_BATCH": "100"})


def test_every_setting_has_an_env_var_and_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for f in fields(Settings):
        assert f.metadata["env"] == "SCOREBOARD_" + f.name.upper()
        assert "--" + f.name.replace("_", "-") in out
        assert f.metadata["env"] in out


def test_secrets_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = resolve_secrets(settings)
    second = resolve_secrets(settings)
    assert first.jwt_secret == second.jwt_secret and first.ticket_secret == second.ticket_secret
    assert first.jwt_secret != first.ticket_secret
    for name in ("jwt-secret", "ticket-secret"):
        mode = stat.S_IMODE((tmp_path / "data" / name).stat().st_mode)
        assert mode == 0o600
    (tmp_path / "data" / "jwt-secret").write_text("short\n")
    with pytest.raises(ConfigError, match="fewer than 32 bytes"):
        resolve_secrets(settings)


def test_serve_refuses_a_short_secret() -> None:
    result = run_cli("serve", env={"SCOREBOARD_JWT_SECRET": "x" * 31})
    assert result.returncode == 2
    assert "SCOREBOARD_JWT_SECRET must be at least 32 bytes" in result.stderr


def test_serve_refuses_a_bad_catalog(tmp_path: Path) -> None:
    bad = tmp_path / "actions.toml"
    bad.write_text("[actions.a]\npoints = -1\n")
    result = run_cli("serve", "--actions-file", str(bad), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "actions.a.points must be" in result.stderr


async def test_token_and_ticket_commands_work_against_the_server(
    start: StartServer, tmp_path: Path, sqlite_url: str
) -> None:
    data = tmp_path / "data"
    env = {"SCOREBOARD_DATA_DIR": str(data)}
    service = run_cli("token", "--sub", "backend", "--role", "service", env=env)
    player = run_cli("token", "--sub", "pia", "--name", "Pia", "--ttl", "60", env=env)
    body = run_cli("ticket", "--user", "pia", "--points", "25", "--action-id", "cli-1", env=env)
    assert service.returncode == player.returncode == body.returncode == 0, service.stderr + body.stderr
    ticket_body = json.loads(body.stdout)
    assert ticket_body["actionId"] == "cli-1"
    # The server reads the secrets the commands generated in the same data dir.
    server = await start(sqlite_url, data_dir=data, jwt_secret=None, ticket_secret=None)
    status, resp = await server.post("/scores/update", ticket_body, player.stdout.strip())
    assert (status, resp["newScore"]) == (200, 25)
    assert resp["topUsers"][0]["username"] == "Pia"
    status, resp = await server.post(
        "/scores/update", {"userId": "pia", "scoreDelta": 5, "actionId": "cli-2"}, service.stdout.strip()
    )
    assert (status, resp["newScore"]) == (200, 30)


def test_ticket_command_checks_points(tmp_path: Path) -> None:
    result = run_cli("ticket", "--user", "u", "--points", "0", env={"SCOREBOARD_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "--points must be" in result.stderr


def test_token_command_needs_a_secret_not_a_public_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = run_cli(
        "token",
        "--sub",
        "u",
        env={"SCOREBOARD_DATA_DIR": str(tmp_path), "SCOREBOARD_JWT_PUBLIC_KEY_FILE": str(pem)},
    )
    assert result.returncode == 2
    assert "identity provider" in result.stderr


def test_unknown_database_scheme_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        env={
            "SCOREBOARD_DATA_DIR": str(tmp_path),
            "SCOREBOARD_DATABASE_URL": "mysql://x",
            "SCOREBOARD_PORT": "0",
        },
    )
    assert result.returncode == 2
    assert "database_url must start with sqlite:/// or postgresql://" in result.stderr


def test_unreachable_database_at_start_is_one_clear_error(tmp_path: Path) -> None:
    env = {
        "SCOREBOARD_DATA_DIR": str(tmp_path),
        "SCOREBOARD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x",
    }
    result = run_cli("serve", "--port", "0", "--store-timeout-s", "2", env=env)
    assert result.returncode == 1
    last = json.loads(result.stderr.strip().splitlines()[-1])
    assert last["event"] == "startup_failed"
    assert "Traceback" not in result.stderr


def test_readme_documents_every_setting_and_error_code() -> None:
    from scoreboard.errors import Code

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for f in fields(Settings):
        assert f"`{f.metadata['env']}`" in readme, f.metadata["env"]
    for code in Code:
        assert f"`{code.value}`" in readme, code.value


def test_readme_ticket_example_mints_a_valid_ticket() -> None:
    import re
    import time

    from scoreboard.tickets import parse_ticket

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(.*?def mint_ticket.*?)```", readme, re.S)
    assert block is not None
    scope: dict[str, object] = {}
    exec(block.group(1), scope)
    secret = b"k" * 32
    text = scope["mint_ticket"](secret, "act-9", "alice", 30)  # type: ignore[operator]
    ticket = parse_ticket(secret, text)
    assert (ticket.action_id, ticket.user_id, ticket.points) == ("act-9", "alice", 30)
    assert ticket.not_before <= time.time() < ticket.expires_at
