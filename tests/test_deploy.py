"""deploy/compose.yaml and its HAProxy configuration hold together.

`docker compose config` validates the file where Docker Compose is
installed. Everywhere, the file is read as YAML and checked for what the
deployment needs: PostgreSQL, Redis, three servers built from the
Dockerfile with settings the server accepts for processes sharing the work,
health checks and ordered starts, and a load balancer whose configuration
passes streams through. `haproxy -c` checks that configuration's syntax
where HAProxy is installed, and a real HAProxy running that configuration
(pointed at a test server) must pass a WebSocket and an event stream
through at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from scoreboard.config import Settings
from tests.conftest import StartServer
from tests.helpers import bearer, service_update
from tests.streams import sse_events

DEPLOY = Path(__file__).parent.parent / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
HAPROXY = DEPLOY / "haproxy.cfg"
# What an operator exports before `docker compose up` (see the README).
OPERATOR_ENV = {
    "POSTGRES_PASSWORD": "0123456789abcdef0123456789abcdef",
    "SCOREBOARD_JWT_SECRET": "j" * 64,
    "SCOREBOARD_TICKET_SECRET": "t" * 64,
}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`; a missing required one fails."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and empty:
            raise AssertionError(f"{name} is required: {arg}")
        if op is not None and op.endswith("-") and empty:
            return arg
        return current or ""

    return _VARIABLE.sub(one, value).replace("$$", "$")


def resolved(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolved(value, env) for key, value in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    with COMPOSE.open() as file:
        doc = yaml.safe_load(file)
    assert isinstance(doc, dict)
    return doc


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The file as Compose reads it with the operator's environment `env`."""
    doc: dict[str, Any] = resolved(raw_compose(), OPERATOR_ENV if env is None else env)
    return doc


def as_dict(environment: Any) -> dict[str, str]:
    """A service's `environment`, written as a map or as a list of KEY=VALUE."""
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in (environment or {}).items()}


def servers(services: dict[str, Any]) -> dict[str, Any]:
    """The services built from this repository's Dockerfile."""
    return {name: s for name, s in services.items() if "build" in s}


def test_compose_has_the_database_redis_three_servers_and_a_load_balancer() -> None:
    doc = compose()
    services = doc["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    built = servers(services)
    count = sum(s.get("deploy", {}).get("replicas", 1) for s in built.values())
    assert count == 3, built
    for server in built.values():
        build = server["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        assert (context / "server" / "cli.py").is_file()  # the repository, not a copy
    (lb,) = (s for s in services.values() if s.get("image", "").startswith(("haproxy:", "nginx:", "caddy:")))
    published = [str(p) for p in lb["ports"]]
    assert published and all(re.fullmatch(r"\d+:\d+", p) for p in published), published
    mounted = [v.split(":")[0] for v in lb["volumes"]]
    assert "./haproxy.cfg" in mounted and HAPROXY.is_file()


def test_every_server_gets_settings_the_server_accepts_for_shared_work() -> None:
    raw = raw_compose()["services"]
    services = compose()["services"]
    variables = {f.metadata["env"] for f in fields(Settings)}
    for name, server in servers(services).items():
        env = as_dict(server["environment"])
        assert set(env) <= variables, set(env) - variables
        assert env["SCOREBOARD_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["SCOREBOARD_DATABASE_URL"]
        assert env["SCOREBOARD_REDIS_URL"] == "redis://redis:6379/0"
        # Secrets come from the operator's environment, never from this file.
        written = as_dict(raw[name]["environment"])
        for secret in ("SCOREBOARD_JWT_SECRET", "SCOREBOARD_TICKET_SECRET"):
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", written[secret]), written[secret]
        assert "${POSTGRES_PASSWORD:?" in written["SCOREBOARD_DATABASE_URL"]
        # As each container would read them (its image sets host, port and data dir).
        settings = Settings.from_env(
            {"SCOREBOARD_HOST": "0.0.0.0", "SCOREBOARD_PORT": "8080", "SCOREBOARD_DATA_DIR": "/data", **env}
        )
        assert settings.shared and settings.workers == 1
        assert settings.max_connections_per_ip == 0  # HAProxy caps per client instead
    # Without the operator's secrets the file refuses to resolve.
    for missing in OPERATOR_ENV:
        with pytest.raises(AssertionError, match=f"{missing} is required"):
            compose({k: v for k, v in OPERATOR_ENV.items() if k != missing})


def test_every_service_has_a_healthcheck_and_starts_after_what_it_needs() -> None:
    services = compose()["services"]
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    for server in servers(services).values():
        assert server["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert "/healthz" in " ".join(server["healthcheck"]["test"])
        # Longer than the server's own shutdown timeout (10 s by default).
        assert server["stop_grace_period"] == "30s"
    (lb,) = (s for s in services.values() if "haproxy.cfg" in str(s.get("volumes")))
    assert lb["depends_on"] == {name: {"condition": "service_healthy"} for name in servers(services)}


def haproxy_config() -> str:
    return HAPROXY.read_text()


def test_the_load_balancer_passes_websocket_and_event_streams_through() -> None:
    config = haproxy_config()
    lines = {line.strip() for line in config.splitlines()}
    # A WebSocket is a tunnel after the upgrade; quiet streams outlive the heartbeats.
    assert "timeout tunnel 1h" in lines
    assert {"timeout client 65s", "timeout server 65s"} <= lines
    assert "option http-no-delay" in lines
    assert not re.search(r"^\s*(compression|option http-buffer-request)", config, re.M)
    # The stream routes go to the stream backend, and only they.
    assert "use_backend streams if stream" in lines
    acl = [line.split(None, 3)[2:] for line in lines if line.startswith("acl stream ")]
    exact = {value for kind, value in acl if kind == "path"}
    patterns = [re.compile(value) for kind, value in acl if kind == "path_reg"]

    def routed(path: str) -> bool:
        return path in exact or any(p.search(path) for p in patterns)

    for path in ("/ws", "/scores/stream", "/api/boards/global/stream", "/api/boards/weekly-1/stream"):
        assert routed(path), path
    for path in ("/scores", "/api/boards/global", "/api/boards/a/b/stream", "/wsx", "/scores/stream/x"):
        assert not routed(path), path
    # Servers are the compose service, on the image's port, checked by readiness.
    services = compose()["services"]
    (name,) = servers(services)
    assert config.count(f"server-template server 10 {name}:8080") == 2
    assert config.count("http-check send meth GET uri /readyz") == 2
    assert "parse-resolv-conf" in lines  # Docker's DNS: scaled replicas are found
    # The per-address cap the servers turn off is applied here.
    assert "tcp-request connection reject if { sc0_conn_cur gt 256 }" in lines


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_configuration() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _docker_compose(), reason="docker compose is not installed")
def test_docker_compose_accepts_the_file() -> None:
    env = {**os.environ, **OPERATOR_ENV}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def local_haproxy_config(lb_port: int, server_port: int) -> str:
    """deploy/haproxy.cfg listening on 127.0.0.1:`lb_port`, with one server instead of Docker's DNS."""
    config = haproxy_config()
    edits = {
        "bind :8080": f"bind 127.0.0.1:{lb_port}",
        "server-template server 10 server:8080": f"server local 127.0.0.1:{server_port}",
        " resolvers docker resolve-prefer ipv4 init-addr none": "",
    }
    for old, new in edits.items():
        assert old in config, old
        config = config.replace(old, new)
    return config


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
async def test_haproxy_passes_a_websocket_and_an_event_stream_through_at_once(
    start: StartServer, sqlite_url: str, tmp_path: Path
) -> None:
    server = await start(sqlite_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        lb_port = probe.getsockname()[1]
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_haproxy_config(lb_port, int(server.url.rsplit(":", 1)[1])))
    haproxy = await asyncio.create_subprocess_exec(
        "haproxy", "-db", "-f", str(config), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    lb = f"http://127.0.0.1:{lb_port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(lb + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("HAProxy never answered /readyz")
            async with (
                session.get(lb + "/scores/stream") as stream,
                session.ws_connect(lb.replace("http", "ws") + "/ws") as ws,
            ):
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                sse = sse_events(stream)
                await ws.send_json({"type": "subscribe", "channel": "scoreboard"})

                async def next_sse(kind: str) -> dict[str, object]:
                    async for event in sse:
                        if event.event == kind:
                            return event.json()
                    raise AssertionError("the stream ended")

                async def next_ws(kind: str) -> dict[str, object]:
                    while True:
                        message: dict[str, object] = await ws.receive_json()
                        if message["type"] == kind:
                            return message

                async with asyncio.timeout(5):
                    await next_sse("scoreboard:update")
                    await next_ws("scoreboard:update")
                async with session.post(
                    lb + "/scores/update",
                    json=service_update("alice", 7),
                    headers=bearer(server.service_token),
                ) as resp:
                    assert resp.status == 200, await resp.text()
                # Buffered, a small event would wait for more data or the end of the response.
                async with asyncio.timeout(2):
                    diffs = [await next_sse("scoreboard:diff"), await next_ws("scoreboard:diff")]
                for diff in diffs:
                    (change,) = diff["changes"]  # type: ignore[misc]
                    assert (change["rank"], change["userId"], change["score"]) == (1, "alice", 7)
    finally:
        haproxy.terminate()
        _, errors = await haproxy.communicate()
        assert haproxy.returncode in (0, 143, -15), errors.decode()
