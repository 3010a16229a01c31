"""Settings, generated secrets, and the command line (`serve`, `token`, `ticket`)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from scoreboard import cli
from scoreboard.cli import main
from scoreboard.config import ConfigError, Settings, resolve_secrets
from tests.conftest import StartServer
from tests.helpers import JWT_SECRET, TICKET_SECRET


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scoreboard", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """For main() run in this process: the test secrets and no other SCOREBOARD_ variable."""
    for key in list(os.environ):
        if key.startswith("SCOREBOARD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SCOREBOARD_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("SCOREBOARD_TICKET_SECRET", TICKET_SECRET)


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run main(argv) in this process; assert it refused with one line and exit code 2."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    (line,) = err.splitlines()
    assert line.startswith("scoreboard: ")
    return line


def test_defaults_match_the_documented_table() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.top_k, s.max_delta, s.ack) == ("127.0.0.1", 8080, 10, 1000, "commit")
    assert s.store_url == f"sqlite:///{(Path('scoreboard-data') / 'scoreboard.db').resolve()}"


def test_environment_is_parsed_and_validated() -> None:
    s = Settings.from_env(
        {"SCOREBOARD_PORT": "9000", "SCOREBOARD_FLUSH_INTERVAL_MS": "2.5", "SCOREBOARD_DATA_DIR": "/tmp/x"}
    )
    assert (s.port, s.flush_interval_ms, s.data_dir) == (9000, 2.5, Path("/tmp/x"))

    def refused(env: dict[str, str]) -> str:
        with pytest.raises(ConfigError) as raised:
            Settings.from_env(env)
        return str(raised.value)

    # Each message names the variable, and its value unless it is a secret.
    assert refused({"SCOREBOARD_PORT": "eighty"}) == "SCOREBOARD_PORT='eighty' is not a valid int"
    assert refused({"SCOREBOARD_ACK": "maybe"}) == "SCOREBOARD_ACK='maybe': must be 'commit' or 'memory'"
    assert refused({"SCOREBOARD_JWT_SECRET": "too-short"}) == (
        "SCOREBOARD_JWT_SECRET: must be at least 32 bytes"
    )
    assert refused({"SCOREBOARD_QUEUE_MAX": "10", "SCOREBOARD_FLUSH_MAX_BATCH": "100"}) == (
        "SCOREBOARD_QUEUE_MAX='10', SCOREBOARD_FLUSH_MAX_BATCH='100': queue_max must be >= flush_max_batch"
    )


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
    assert first.jwt_secret == second.jwt_secret and first.ticket_keys == second.ticket_keys
    assert first.jwt_secret != first.ticket_keys.keys[0][1]
    for name in ("jwt-secret", "ticket-secret"):
        mode = stat.S_IMODE((tmp_path / "data" / name).stat().st_mode)
        assert mode == 0o600
    (tmp_path / "data" / "jwt-secret").write_text("short\n")
    with pytest.raises(ConfigError, match="fewer than 32 bytes"):
        resolve_secrets(settings)
    # Only the server creates secrets; anyone else is told which data dir lacks them.
    other = tmp_path / "other"
    with pytest.raises(ConfigError, match=re.escape(f"in the data dir {other}: ")):
        resolve_secrets(Settings(data_dir=other), create=False)
    assert not other.exists()


def test_serve_refuses_a_short_secret() -> None:
    result = run_cli("serve", env={"SCOREBOARD_JWT_SECRET": "x" * 31})
    assert result.returncode == 2
    # The secret itself is not echoed.
    assert (
        result.stderr == "scoreboard: configuration error: SCOREBOARD_JWT_SECRET: must be at least 32 bytes\n"
    )


def test_serve_names_a_bad_environment_variable_without_a_traceback() -> None:
    result = run_cli("serve", env={"SCOREBOARD_LOG_LEVEL": "verbose"})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "scoreboard: configuration error: SCOREBOARD_LOG_LEVEL='verbose': "
        "must be one of debug, info, warning, error\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-level", "verbose"], "--log-level='verbose': must be one of debug, info, warning, error"),
        (["--port", "eighty"], "--port='eighty' is not a valid int"),
        (["--port", "-1"], "--port='-1': must be 0-65535"),
        (["--port", "70000"], "--port='70000': must be 0-65535"),
        (["--flush-interval-ms", "nan"], "--flush-interval-ms='nan' is not a valid float"),
        (
            ["--allowed-origins", "game.example"],
            "--allowed-origins='game.example': each origin must look like https://game.example",
        ),
        (
            ["--max-delta", "99999999999999999999"],
            "--max-delta='99999999999999999999': must be from 1 to 9223372036854775807",
        ),
    ],
)
def test_serve_names_a_bad_flag_in_one_line(
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    def must_not_start(settings: Settings) -> int:
        raise AssertionError(f"the server started with {argv}")

    monkeypatch.setattr(cli, "_serve", must_not_start)
    # The environment holds a valid value: the flag is what is wrong, and named.
    monkeypatch.setenv("SCOREBOARD_PORT", "8080")
    line = refusal(capsys, ["serve", *argv])
    assert line.startswith(f"scoreboard: configuration error: {message}")


def test_serve_refuses_a_bad_catalog(tmp_path: Path) -> None:
    bad = tmp_path / "actions.toml"
    bad.write_text("[actions.a]\npoints = -1\n")
    result = run_cli("serve", "--actions-file", str(bad), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "actions.a.points must be" in result.stderr


def test_serve_refuses_a_bad_board_and_both_catalog_names(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.toml"
    bad.write_text('[boards.global]\ndefault = true\nreset = "0 0 30 2 *"\n')
    result = run_cli("serve", "--catalog-file", str(bad), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "boards.global.reset" in result.stderr and "never fires" in result.stderr, result.stderr
    good = tmp_path / "good.toml"
    good.write_text("[actions.a]\npoints = 1\n")
    result = run_cli(
        "serve", "--catalog-file", str(good), "--actions-file", str(good), "--data-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "--catalog-file" in result.stderr and "--actions-file" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_token_and_ticket_commands_work_against_the_server(
    start: StartServer, tmp_path: Path, sqlite_url: str
) -> None:
    data = tmp_path / "data"
    # The server generates its secrets in its data dir; the commands read them there.
    server = await start(sqlite_url, data_dir=data, jwt_secret=None, ticket_secret=None)
    env = {"SCOREBOARD_DATA_DIR": str(data)}
    pia = "pia-" + "x" * 124  # the longest user id the server takes
    service = run_cli("token", "--sub", "backend", "--role", "service", env=env)
    player = run_cli("token", "--sub", pia, "--name", "Pia 👩‍💻", "--ttl", "60", env=env)
    body = run_cli(
        "ticket", "--user", pia, "--points", "25", "--action-id", "cli-1", "--not-before", "0", env=env
    )
    for result in (service, player, body):
        assert (result.returncode, result.stderr) == (0, "")
    ticket_body = json.loads(body.stdout)
    assert ticket_body.keys() == {"actionId", "ticket"} and ticket_body["actionId"] == "cli-1"
    status, resp = await server.post("/scores/update", ticket_body, player.stdout.strip())
    assert (status, resp["newScore"]) == (200, 25), resp
    assert resp["topUsers"][0]["username"] == "Pia 👩‍💻"
    status, resp = await server.post(
        "/scores/update", {"userId": pia, "scoreDelta": 5, "actionId": "cli-2"}, service.stdout.strip()
    )
    assert (status, resp["newScore"]) == (200, 30), resp


def test_token_and_ticket_never_create_secrets(tmp_path: Path) -> None:
    # Run outside the server's directory, they used to generate a secret and
    # print credentials the server rejects.
    elsewhere = tmp_path / "elsewhere"
    empty = tmp_path / "empty"
    elsewhere.mkdir()
    empty.mkdir()
    token = run_cli("token", "--sub", "u", cwd=elsewhere)
    ticket = run_cli("ticket", "--user", "u", "--points", "1", "--data-dir", str(empty), cwd=elsewhere)
    for result, data_dir in ((token, elsewhere / "scoreboard-data"), (ticket, empty)):
        assert (result.returncode, result.stdout) == (2, ""), result.stdout
        (line,) = result.stderr.splitlines()
        assert line.startswith("scoreboard: configuration error: no ")
        assert f" in the data dir {data_dir}: point SCOREBOARD_DATA_DIR (--data-dir) at the server's" in line
    assert list(elsewhere.iterdir()) == [] and list(empty.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "--sub", ""], "--sub must be 1 to 128 characters long (got 0)"),
        (["token", "--sub", "u" * 200], "--sub must be 1 to 128 characters long (got 200)"),
        (["token", "--sub", "a\x1b[2Jb"], "--sub must not contain control characters"),
        (["token", "--sub", "u", "--name", ""], "--name must be 1 to 128 characters long (got 0)"),
        (
            ["token", "--sub", "u", "--name", "evil\u202eman"],
            "--name must not contain control or format characters",
        ),
        (["token", "--sub", "u", "--ttl", "-60"], "--ttl must be a number of seconds > 0 (got -60.0)"),
        (["token", "--sub", "u", "--ttl", "0"], "--ttl must be a number of seconds > 0 (got 0.0)"),
        (["token", "--sub", "u", "--ttl", "nan"], "--ttl must be a number of seconds > 0 (got nan)"),
        (["token", "--sub", "u", "--ttl", "inf"], "--ttl must be a number of seconds > 0 (got inf)"),
        (["ticket", "--user", "", "--points", "1"], "--user must be 1 to 128 characters long (got 0)"),
        (["ticket", "--user", "u" * 129, "--points", "1"], "--user must be 1 to 128 characters long"),
        (
            ["ticket", "--user", "u", "--points", "1", "--action-id", "a\nb"],
            "--action-id must not contain control characters",
        ),
        (["ticket", "--user", "u", "--points", "0"], "--points must be from 1 to 1000000000 (got 0)"),
        (["ticket", "--user", "u", "--points", "1000000001"], "--points must be from 1 to 1000000000"),
        (["ticket", "--user", "u", "--points", "1", "--ttl", "0"], "--ttl must be a whole number of seconds"),
        (
            ["ticket", "--user", "u", "--points", "1", "--ttl", "-5"],
            "--ttl must be a whole number of seconds",
        ),
        (["ticket", "--user", "u", "--points", "1", "--ttl", "1" + "0" * 20], "--ttl must be a whole number"),
        (
            ["ticket", "--user", "u", "--points", "1", "--not-before", "-1"],
            "--not-before must be >= 0 and less than --ttl (600) (got -1)",
        ),
        (
            ["ticket", "--user", "u", "--points", "1", "--ttl", "60", "--not-before", "60"],
            "--not-before must be >= 0 and less than --ttl (60) (got 60)",
        ),
        (
            # Each id is within its limit, but together they make the ticket too long.
            ["ticket", "--user", "🏆" * 128, "--action-id", "🏆" * 128, "--points", "1"],
            "the server would refuse this ticket: The ticket is longer than 1024 characters.",
        ),
    ],
)
def test_token_and_ticket_refuse_a_bad_flag_by_name(
    cli_env: None, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert refusal(capsys, argv).startswith(f"scoreboard: {message}")


@pytest.mark.parametrize("variable", ["SCOREBOARD_JWT_PUBLIC_KEY_FILE", "SCOREBOARD_JWKS_URL"])
def test_token_command_needs_a_secret_not_an_identity_provider(tmp_path: Path, variable: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    value = str(pem) if variable == "SCOREBOARD_JWT_PUBLIC_KEY_FILE" else "https://idp.example/jwks.json"
    result = run_cli("token", "--sub", "u", env={"SCOREBOARD_DATA_DIR": str(tmp_path), variable: value})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"scoreboard: tokens come from the identity provider ({variable} is set); "
        "`scoreboard token` signs only with the server's HS256 secret\n"
    )


def test_version_and_help_for_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from scoreboard import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert (exited.value.code, capsys.readouterr().out) == (0, f"scoreboard {__version__}\n")
    parser = cli.build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"serve", "token", "ticket"}
    for name, command in [("scoreboard", parser), *commands.choices.items()]:
        for action in command._actions:
            assert action.help or not action.option_strings, (
                f"{name} {'/'.join(action.option_strings)} has no help"
            )


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
    assert result.stderr == (
        "scoreboard: configuration error: SCOREBOARD_DATABASE_URL='mysql://x': "
        "must start with sqlite:/// or postgresql://\n"
    )


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
