"""Settings: one frozen object, read from the environment in one place.

Every field has an environment variable (`SCOREBOARD_<NAME>`) and a
`scoreboard serve --<name>` flag generated from the same table, so the two
never drift. `resolve_secrets` fills in generated secrets from the data dir.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast

from .catalog import DEFAULT_CATALOG, ActionType, CatalogError, parse_catalog
from .tokens import MIN_SECRET_BYTES, VerificationKey

AckMode = Literal["commit", "memory"]


class ConfigError(ValueError):
    """A setting is missing or invalid; the server refuses to start."""


def _opt(env: str, help: str, **kw: Any) -> Any:
    return field(metadata={"env": env, "help": help}, **kw)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server can be told. Secrets are kept out of repr()."""

    host: str = _opt("SCOREBOARD_HOST", "listen address", default="127.0.0.1")
    port: int = _opt("SCOREBOARD_PORT", "listen port (0 picks a free one)", default=8080)
    data_dir: Path = _opt(
        "SCOREBOARD_DATA_DIR",
        "embedded database and generated secrets",
        default=Path("./scoreboard-data"),
    )
    database_url: str | None = _opt(
        "SCOREBOARD_DATABASE_URL",
        "sqlite:///relative.db, sqlite:////absolute.db or postgresql://... "
        "(default: scoreboard.db in the data dir)",
        default=None,
    )
    jwt_secret: str | None = _opt(
        "SCOREBOARD_JWT_SECRET",
        f"HS256 secret, at least {MIN_SECRET_BYTES} bytes (default: generated in the data dir)",
        default=None,
        repr=False,
    )
    jwt_public_key_file: Path | None = _opt(
        "SCOREBOARD_JWT_PUBLIC_KEY_FILE",
        "PEM public key: accept RS*/PS*/ES*/EdDSA tokens from an identity provider instead of HS256",
        default=None,
    )
    jwt_issuer: str | None = _opt("SCOREBOARD_JWT_ISSUER", "required 'iss' claim", default=None)
    jwt_audience: str | None = _opt("SCOREBOARD_JWT_AUDIENCE", "required 'aud' claim", default=None)
    jwt_leeway_s: float = _opt("SCOREBOARD_JWT_LEEWAY_S", "clock skew allowed on exp/nbf", default=10.0)
    jwt_max_bytes: int = _opt("SCOREBOARD_JWT_MAX_BYTES", "longest accepted token", default=4096)
    token_cache_size: int = _opt(
        "SCOREBOARD_TOKEN_CACHE_SIZE", "verified tokens kept in memory (0 disables)", default=10_000
    )
    ticket_secret: str | None = _opt(
        "SCOREBOARD_TICKET_SECRET",
        f"HMAC-SHA256 key for action tickets, at least {MIN_SECRET_BYTES} bytes (default: generated)",
        default=None,
        repr=False,
    )
    actions_file: Path | None = _opt(
        "SCOREBOARD_ACTIONS_FILE",
        "TOML action catalog (default: one type 'default' worth 1)",
        default=None,
    )
    max_delta: int = _opt("SCOREBOARD_MAX_DELTA", "largest delta a service token may credit", default=1000)
    top_k: int = _opt("SCOREBOARD_TOP_K", "board size", default=10)
    ack: AckMode = _opt(
        "SCOREBOARD_ACK",
        "commit: answer after the batch commits; memory: answer at once (202)",
        default="commit",
    )
    flush_interval_ms: float = _opt(
        "SCOREBOARD_FLUSH_INTERVAL_MS",
        "how long the oldest queued update waits for others to share its commit (0: flush at once)",
        default=2.0,
    )
    flush_max_batch: int = _opt("SCOREBOARD_FLUSH_MAX_BATCH", "updates per transaction", default=1000)
    queue_max: int = _opt(
        "SCOREBOARD_QUEUE_MAX", "updates waiting for storage before 503 overloaded", default=20_000
    )
    store_timeout_s: float = _opt(
        "SCOREBOARD_STORE_TIMEOUT_S", "a transaction or connect slower than this fails", default=5.0
    )
    retry_after_s: int = _opt("SCOREBOARD_RETRY_AFTER_S", "Retry-After sent with 503s", default=1)
    probe_interval_s: float = _opt(
        "SCOREBOARD_PROBE_INTERVAL_S", "how often a down store is pinged", default=0.5
    )
    pg_pool_min: int = _opt("SCOREBOARD_PG_POOL_MIN", "PostgreSQL pool minimum size", default=1)
    pg_pool_max: int = _opt("SCOREBOARD_PG_POOL_MAX", "PostgreSQL pool maximum size", default=4)
    sqlite_synchronous: str = _opt(
        "SCOREBOARD_SQLITE_SYNCHRONOUS",
        "FULL (survives power loss) or NORMAL (process crash)",
        default="FULL",
    )
    max_body_bytes: int = _opt("SCOREBOARD_MAX_BODY_BYTES", "largest request body", default=16 * 1024)
    rate_limit_keys: int = _opt(
        "SCOREBOARD_RATE_LIMIT_KEYS", "user/action pairs tracked by max_per_minute", default=100_000
    )
    allowed_origins: str = _opt(
        "SCOREBOARD_ALLOWED_ORIGINS",
        "comma-separated origins (https://game.example) allowed to open /ws, or * (default: same host only)",
        default="",
    )
    max_connections_per_ip: int = _opt(
        "SCOREBOARD_MAX_CONNECTIONS_PER_IP",
        "open WebSocket and SSE connections per client address (0: no limit)",
        default=256,
    )
    broadcast_tick_ms: float = _opt(
        "SCOREBOARD_BROADCAST_TICK_MS", "at most one board diff per this many ms", default=50.0
    )
    broadcast_history: int = _opt(
        "SCOREBOARD_BROADCAST_HISTORY",
        "diffs kept for clients resuming with since / Last-Event-ID",
        default=1024,
    )
    subscriber_buffer_bytes: int = _opt(
        "SCOREBOARD_SUBSCRIBER_BUFFER_BYTES",
        "unsent bytes after which a subscriber is conflated (skips diffs, gets a snapshot when drained)",
        default=64 * 1024,
    )
    subscriber_sndbuf_bytes: int = _opt(
        "SCOREBOARD_SUBSCRIBER_SNDBUF_BYTES",
        "kernel send buffer of WebSocket and SSE sockets (Linux doubles it; 0: kernel default, up to MBs)",
        default=32 * 1024,
    )
    subscriber_stuck_s: float = _opt(
        "SCOREBOARD_SUBSCRIBER_STUCK_S",
        "a conflated subscriber that does not drain is closed after this",
        default=15.0,
    )
    ws_max_buffer_bytes: int = _opt(
        "SCOREBOARD_WS_MAX_BUFFER_BYTES",
        "unsent bytes after which a socket that is not reading its acks is closed",
        default=1024 * 1024,
    )
    ws_max_message_bytes: int = _opt(
        "SCOREBOARD_WS_MAX_MESSAGE_BYTES", "largest client message (larger: close 1009)", default=16 * 1024
    )
    ws_messages_per_s: int = _opt(
        "SCOREBOARD_WS_MESSAGES_PER_S",
        "client messages per second per socket (more: error rate_limited)",
        default=50,
    )
    ws_max_violations: int = _opt(
        "SCOREBOARD_WS_MAX_VIOLATIONS", "rate-limited messages in a row before close 1008", default=20
    )
    ws_max_pending_updates: int = _opt(
        "SCOREBOARD_WS_MAX_PENDING_UPDATES", "updates per socket waiting for their acks", default=256
    )
    ws_heartbeat_s: float = _opt(
        "SCOREBOARD_WS_HEARTBEAT_S",
        "ping interval; a peer that misses the pong within half of it is closed",
        default=20.0,
    )
    ws_auth_timeout_s: float = _opt(
        "SCOREBOARD_WS_AUTH_TIMEOUT_S",
        "an auth message must come first, within this many seconds",
        default=10.0,
    )
    sse_heartbeat_s: float = _opt(
        "SCOREBOARD_SSE_HEARTBEAT_S", "comment line sent this often on idle streams", default=15.0
    )
    sse_retry_ms: int = _opt(
        "SCOREBOARD_SSE_RETRY_MS", "reconnect delay suggested to SSE clients", default=2000
    )
    shutdown_timeout_s: float = _opt(
        "SCOREBOARD_SHUTDOWN_TIMEOUT_S",
        "grace for in-flight requests and the last flush",
        default=10.0,
    )
    log_level: str = _opt("SCOREBOARD_LOG_LEVEL", "debug, info, warning or error", default="info")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None
    ) -> Settings:
        """Settings from `env` (default: os.environ), then `overrides`, validated."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = parse_value(f, raw)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError for values the server cannot run with."""
        checks: list[tuple[bool, str]] = [
            (0 <= self.port <= 65535, "port must be 0-65535"),
            (self.top_k >= 1, "top_k must be at least 1"),
            (self.max_delta >= 1, "max_delta must be at least 1"),
            (self.ack in ("commit", "memory"), "ack must be 'commit' or 'memory'"),
            (self.flush_interval_ms >= 0, "flush_interval_ms must be >= 0"),
            (self.flush_max_batch >= 1, "flush_max_batch must be at least 1"),
            (self.queue_max >= self.flush_max_batch, "queue_max must be >= flush_max_batch"),
            (self.store_timeout_s > 0, "store_timeout_s must be > 0"),
            (self.retry_after_s >= 1, "retry_after_s must be at least 1"),
            (1 <= self.pg_pool_min <= self.pg_pool_max, "need 1 <= pg_pool_min <= pg_pool_max"),
            (
                self.sqlite_synchronous.upper() in ("FULL", "NORMAL", "EXTRA"),
                "sqlite_synchronous: FULL or NORMAL",
            ),
            (self.max_body_bytes >= 1024, "max_body_bytes must be at least 1024"),
            (self.jwt_max_bytes >= 256, "jwt_max_bytes must be at least 256"),
            (self.max_connections_per_ip >= 0, "max_connections_per_ip must be >= 0"),
            (self.broadcast_tick_ms > 0, "broadcast_tick_ms must be > 0"),
            (self.broadcast_history >= 1, "broadcast_history must be at least 1"),
            (self.subscriber_buffer_bytes >= 1024, "subscriber_buffer_bytes must be at least 1024"),
            (self.subscriber_sndbuf_bytes >= 0, "subscriber_sndbuf_bytes must be >= 0"),
            (
                self.ws_max_buffer_bytes > self.subscriber_buffer_bytes,
                "ws_max_buffer_bytes must exceed subscriber_buffer_bytes",
            ),
            (self.ws_max_message_bytes >= 1024, "ws_max_message_bytes must be at least 1024"),
            (self.ws_messages_per_s >= 1, "ws_messages_per_s must be at least 1"),
            (self.ws_max_violations >= 1, "ws_max_violations must be at least 1"),
            (self.ws_max_pending_updates >= 1, "ws_max_pending_updates must be at least 1"),
            (self.ws_heartbeat_s > 0 and self.sse_heartbeat_s > 0, "heartbeats must be > 0"),
            (
                self.store_url.startswith(("sqlite:///", "postgresql://", "postgres://")),
                "database_url must start with sqlite:/// or postgresql://",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name in ("jwt_secret", "ticket_secret"):
            value = getattr(self, name)
            if value is not None and len(value.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"SCOREBOARD_{name.upper()} must be at least {MIN_SECRET_BYTES} bytes")

    @property
    def origins(self) -> frozenset[str]:
        """The parsed allow-list of WebSocket origins."""
        return frozenset(o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip())

    @property
    def store_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'scoreboard.db').resolve()}"


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "Path": Path,
    "str": str,
}


def parse_value(f: dataclasses.Field[Any], raw: str) -> Any:
    """Convert an environment or flag string to the field's type."""
    kind = str(f.type).replace(" | None", "")
    if kind == "AckMode":
        kind = "str"
    try:
        return _PARSERS[kind](raw)
    except (KeyError, ValueError):
        raise ConfigError(f"{f.metadata['env']}={raw!r} is not a valid {kind}") from None


def _secret(settings: Settings, name: str) -> bytes:
    """The configured secret, or one generated once and kept in the data dir (0600)."""
    value = cast(str | None, getattr(settings, name))
    if value is not None:
        return value.encode()
    path = settings.data_dir / name.replace("_", "-")
    try:
        stored = path.read_bytes().strip()
    except FileNotFoundError:
        pass
    else:
        if len(stored) < MIN_SECRET_BYTES:
            raise ConfigError(f"{path} holds fewer than {MIN_SECRET_BYTES} bytes")
        return stored
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    generated = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(generated + b"\n")
    return generated


@dataclass(frozen=True, slots=True)
class Secrets:
    """Key material resolved from settings and the data dir."""

    jwt_key: VerificationKey
    jwt_secret: bytes | None = field(repr=False)
    ticket_secret: bytes = field(repr=False)


def resolve_secrets(settings: Settings) -> Secrets:
    """Load or generate the JWT and ticket secrets; raises ConfigError."""
    try:
        ticket = _secret(settings, "ticket_secret")
        if settings.jwt_public_key_file is not None:
            key = VerificationKey.from_public_pem(settings.jwt_public_key_file.read_bytes())
            return Secrets(jwt_key=key, jwt_secret=None, ticket_secret=ticket)
        secret = _secret(settings, "jwt_secret")
        return Secrets(jwt_key=VerificationKey.from_secret(secret), jwt_secret=secret, ticket_secret=ticket)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def load_catalog(settings: Settings) -> Mapping[str, ActionType]:
    """The action catalog from `actions_file`, or the built-in one."""
    if settings.actions_file is None:
        return DEFAULT_CATALOG
    try:
        return parse_catalog(settings.actions_file.read_text(encoding="utf-8"))
    except (OSError, CatalogError) as exc:
        raise ConfigError(f"{settings.actions_file}: {exc}") from None
