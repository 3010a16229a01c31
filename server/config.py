"""Settings: one frozen object, read from the environment in one place.

Every field has an environment variable (`SCOREBOARD_<NAME>`) and a
`scoreboard serve --<name>` flag generated from the same table, so the two
never drift. `resolve_secrets` fills in generated secrets from the data dir.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

from .catalog import MAX_TOP_K, Catalog, CatalogError, default_catalog, parse_catalog
from .schedule import Schedule, ScheduleError, parse_reset
from .tickets import MIN_SECRET_BYTES, TicketKeys
from .tokens import MAX_JWKS_BYTES, KeySet, VerificationKey

AckMode = Literal["commit", "memory"]
RankMode = Literal["memory", "store"]


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
    catalog_file: Path | None = _opt(
        "SCOREBOARD_CATALOG_FILE",
        "TOML catalog of boards and actions (default: one board 'global' and one action 'default' worth 1)",
        default=None,
    )
    actions_file: Path | None = _opt(
        "SCOREBOARD_ACTIONS_FILE",
        "older name of SCOREBOARD_CATALOG_FILE (a file with only [actions.*] tables keeps working)",
        default=None,
    )
    season_check_s: float = _opt(
        "SCOREBOARD_SEASON_CHECK_S",
        "longest wait between two looks at the season schedules (a clock jump is seen within it)",
        default=30.0,
    )
    ticket_keys: str | None = _opt(
        "SCOREBOARD_TICKET_KEYS",
        "rotating ticket keys as kid:secret,kid:secret, newest first: the first signs, all verify "
        "(replaces SCOREBOARD_TICKET_SECRET)",
        default=None,
        repr=False,
    )
    jwks_file: Path | None = _opt(
        "SCOREBOARD_JWKS_FILE",
        "JWKS document (JSON file) with the keys that sign tokens, chosen by the token's kid",
        default=None,
    )
    jwks_url: str | None = _opt(
        "SCOREBOARD_JWKS_URL",
        "JWKS URL of an identity provider: fetched, cached, refreshed periodically and on an unknown kid",
        default=None,
    )
    jwks_refresh_s: float = _opt(
        "SCOREBOARD_JWKS_REFRESH_S", "how often the JWKS URL or file is loaded again", default=300.0
    )
    jwks_min_refresh_s: float = _opt(
        "SCOREBOARD_JWKS_MIN_REFRESH_S",
        "least time between two fetches caused by tokens with an unknown kid",
        default=10.0,
    )
    max_delta: int = _opt("SCOREBOARD_MAX_DELTA", "largest delta a service token may credit", default=1000)
    player_updates_per_min: int = _opt(
        "SCOREBOARD_PLAYER_UPDATES_PER_MIN",
        "score updates one player may send per minute on any transport (0: unlimited; service tokens exempt)",
        default=60,
    )
    player_actions_per_min: int = _opt(
        "SCOREBOARD_PLAYER_ACTIONS_PER_MIN",
        "actions one player may start per minute, all types together (0: unlimited; service tokens exempt)",
        default=60,
    )
    top_k: int = _opt("SCOREBOARD_TOP_K", "board size", default=10)
    ack: AckMode = _opt(
        "SCOREBOARD_ACK",
        "commit: answer after the batch commits; memory: answer at once (202)",
        default="commit",
    )
    ranks: RankMode = _opt(
        "SCOREBOARD_RANKS",
        "memory: every player's rank of every board kept in memory (loaded in the background at start); "
        "store: ranks read from the database (top K still in memory)",
        default="memory",
    )
    rank_load_chunk: int = _opt(
        "SCOREBOARD_RANK_LOAD_CHUNK", "rows read at a time while loading ranks at start", default=5000
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
        "open connections (HTTP, WebSocket, SSE) per client address (0: no limit)",
        default=256,
    )
    request_timeout_s: float = _opt(
        "SCOREBOARD_REQUEST_TIMEOUT_S",
        "a request's head, then its body, must arrive within this long (else the connection is closed)",
        default=10.0,
    )
    keepalive_timeout_s: float = _opt(
        "SCOREBOARD_KEEPALIVE_TIMEOUT_S",
        "an idle keep-alive connection is closed after this long",
        default=60.0,
    )
    cors_origins: str = _opt(
        "SCOREBOARD_CORS_ORIGINS",
        "origins (https://game.example, comma-separated) whose pages may read the public endpoints, "
        "* for any, empty for none",
        default="*",
    )
    metrics: str = _opt(
        "SCOREBOARD_METRICS",
        "GET /metrics: public, service (needs a service token) or off",
        default="public",
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
    redis_url: str | None = _opt(
        "SCOREBOARD_REDIS_URL",
        "redis://host:port/db shared by every process over one PostgreSQL: committed events, the event "
        "history, sequencer leases and rate limits (default: none, one process)",
        default=None,
        repr=False,
    )
    redis_prefix: str = _opt(
        "SCOREBOARD_REDIS_PREFIX",
        "prefix of every Redis key and channel (deployments sharing one Redis use different ones)",
        default="scoreboard",
    )
    workers: int = _opt(
        "SCOREBOARD_WORKERS",
        "worker processes sharing the listening port (SO_REUSEPORT); above 1 needs PostgreSQL and "
        "SCOREBOARD_REDIS_URL",
        default=1,
    )
    bus_poll_s: float = _opt(
        "SCOREBOARD_BUS_POLL_S",
        "how often each process reads the board versions from the database, catching commits the bus "
        "missed (Redis down, a lost message)",
        default=1.0,
    )
    sequencer_lease_s: float = _opt(
        "SCOREBOARD_SEQUENCER_LEASE_S",
        "a board's event sequencer holds its Redis lease this long; another process takes over within it "
        "when the holder dies",
        default=2.0,
    )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None
    ) -> Settings:
        """Settings from `env` (default: os.environ), then `overrides` (flags), validated.

        A ConfigError names the variable or flag the value came from.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = parse_value(f, raw)
                sources[f.name] = f.metadata["env"]
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
                sources[name] = "--" + name.replace("_", "-")
        settings = cls(**values)
        settings.validate(sources)
        return settings

    def validate(self, sources: Mapping[str, str] | None = None) -> None:
        """Raise ConfigError for values the server cannot run with.

        `sources` maps a field to where the user set it (an environment
        variable or a flag), so the message points at what to fix.
        """
        for names, ok, problem in self._checks():
            if not ok:
                where = ", ".join(_describe(self, name, sources or {}) for name in names)
                raise ConfigError(f"{where}: {problem}")

    def _checks(self) -> list[tuple[tuple[str, ...], bool, str]]:
        int64 = 2**63 - 1
        return [
            (("port",), 0 <= self.port <= 65535, "must be 0-65535"),
            (("top_k",), 1 <= self.top_k <= MAX_TOP_K, f"must be from 1 to {MAX_TOP_K}"),
            (
                ("catalog_file", "actions_file"),
                self.catalog_file is None or self.actions_file is None,
                "set one of them, not both (SCOREBOARD_ACTIONS_FILE is the older name)",
            ),
            (("season_check_s",), self.season_check_s > 0, "must be > 0"),
            (("max_delta",), 1 <= self.max_delta <= int64, f"must be from 1 to {int64} (2^63-1)"),
            (("ack",), self.ack in ("commit", "memory"), "must be 'commit' or 'memory'"),
            (("ranks",), self.ranks in ("memory", "store"), "must be 'memory' or 'store'"),
            (("rank_load_chunk",), self.rank_load_chunk >= 1, "must be at least 1"),
            (("flush_interval_ms",), self.flush_interval_ms >= 0, "must be >= 0"),
            (("flush_max_batch",), self.flush_max_batch >= 1, "must be at least 1"),
            (
                ("queue_max", "flush_max_batch"),
                self.queue_max >= self.flush_max_batch,
                "queue_max must be >= flush_max_batch",
            ),
            (("store_timeout_s",), self.store_timeout_s > 0, "must be > 0"),
            (("retry_after_s",), self.retry_after_s >= 1, "must be at least 1"),
            (
                ("pg_pool_min", "pg_pool_max"),
                1 <= self.pg_pool_min <= self.pg_pool_max,
                "need 1 <= pg_pool_min <= pg_pool_max",
            ),
            (
                ("sqlite_synchronous",),
                self.sqlite_synchronous.upper() in ("FULL", "NORMAL", "EXTRA"),
                "must be FULL, NORMAL or EXTRA",
            ),
            (("max_body_bytes",), self.max_body_bytes >= 1024, "must be at least 1024"),
            (("jwt_max_bytes",), self.jwt_max_bytes >= 256, "must be at least 256"),
            (("player_updates_per_min",), self.player_updates_per_min >= 0, "must be >= 0"),
            (("player_actions_per_min",), self.player_actions_per_min >= 0, "must be >= 0"),
            (("max_connections_per_ip",), self.max_connections_per_ip >= 0, "must be >= 0"),
            (("request_timeout_s",), self.request_timeout_s > 0, "must be > 0"),
            (("keepalive_timeout_s",), self.keepalive_timeout_s > 0, "must be > 0"),
            (("broadcast_tick_ms",), self.broadcast_tick_ms > 0, "must be > 0"),
            (("broadcast_history",), self.broadcast_history >= 1, "must be at least 1"),
            (("subscriber_buffer_bytes",), self.subscriber_buffer_bytes >= 1024, "must be at least 1024"),
            (("subscriber_sndbuf_bytes",), self.subscriber_sndbuf_bytes >= 0, "must be >= 0"),
            (
                ("ws_max_buffer_bytes", "subscriber_buffer_bytes"),
                self.ws_max_buffer_bytes > self.subscriber_buffer_bytes,
                "ws_max_buffer_bytes must exceed subscriber_buffer_bytes",
            ),
            (("ws_max_message_bytes",), self.ws_max_message_bytes >= 1024, "must be at least 1024"),
            (("ws_messages_per_s",), self.ws_messages_per_s >= 1, "must be at least 1"),
            (("ws_max_violations",), self.ws_max_violations >= 1, "must be at least 1"),
            (("ws_max_pending_updates",), self.ws_max_pending_updates >= 1, "must be at least 1"),
            (("ws_heartbeat_s",), self.ws_heartbeat_s > 0, "must be > 0"),
            (("sse_heartbeat_s",), self.sse_heartbeat_s > 0, "must be > 0"),
            (
                ("database_url",),
                self.store_url.startswith(("sqlite:///", "postgresql://", "postgres://")),
                "must start with sqlite:/// or postgresql://",
            ),
            (
                ("log_level",),
                self.log_level.lower() in LOG_LEVELS,
                f"must be one of {', '.join(LOG_LEVELS)}",
            ),
            (
                ("allowed_origins",),
                all(o == "*" or _ORIGIN.match(o) for o in self.origins),
                "each origin must look like https://game.example (scheme and host, no path), or be *",
            ),
            (
                ("cors_origins",),
                all(o == "*" or _ORIGIN.match(o) for o in self.cors),
                "each origin must look like https://game.example (scheme and host, no path), or be *",
            ),
            (("metrics",), self.metrics in METRICS_MODES, f"must be one of {', '.join(METRICS_MODES)}"),
            (
                ("jwt_secret",),
                self.jwt_secret is None or len(self.jwt_secret.encode()) >= MIN_SECRET_BYTES,
                f"must be at least {MIN_SECRET_BYTES} bytes",
            ),
            (
                ("ticket_secret",),
                self.ticket_secret is None or len(self.ticket_secret.encode()) >= MIN_SECRET_BYTES,
                f"must be at least {MIN_SECRET_BYTES} bytes",
            ),
            (
                ("ticket_keys", "ticket_secret"),
                self.ticket_keys is None or self.ticket_secret is None,
                "set one of them, not both",
            ),
            (
                ("jwks_file", "jwks_url", "jwt_public_key_file"),
                sum(x is not None for x in (self.jwks_file, self.jwks_url, self.jwt_public_key_file)) <= 1,
                "set at most one source of token keys",
            ),
            (
                ("jwks_url",),
                self.jwks_url is None or self.jwks_url.startswith(("https://", "http://")),
                "must be an http:// or https:// URL",
            ),
            (("shutdown_timeout_s",), self.shutdown_timeout_s > 0, "must be > 0"),
            (("probe_interval_s",), self.probe_interval_s > 0, "must be > 0"),
            (("jwt_leeway_s",), self.jwt_leeway_s >= 0, "must be >= 0"),
            (("token_cache_size",), self.token_cache_size >= 0, "must be >= 0"),
            (("rate_limit_keys",), self.rate_limit_keys >= 1, "must be at least 1"),
            (("sse_retry_ms",), self.sse_retry_ms >= 0, "must be >= 0"),
            (("ws_auth_timeout_s",), self.ws_auth_timeout_s > 0, "must be > 0"),
            (("jwks_refresh_s",), self.jwks_refresh_s > 0, "must be > 0"),
            (("jwks_min_refresh_s",), self.jwks_min_refresh_s >= 0, "must be >= 0"),
            (("workers",), 1 <= self.workers <= 256, "must be from 1 to 256"),
            (("bus_poll_s",), self.bus_poll_s > 0, "must be > 0"),
            (("sequencer_lease_s",), self.sequencer_lease_s >= 0.2, "must be at least 0.2"),
            (("redis_prefix",), bool(_PREFIX.match(self.redis_prefix)), "must be 1-64 of [A-Za-z0-9_.:-]"),
            (
                ("redis_url",),
                self.redis_url is None or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                "must start with redis://, rediss:// or unix://",
            ),
            (
                ("workers", "redis_url"),
                self.workers == 1 or self.redis_url is not None,
                "more than one worker needs SCOREBOARD_REDIS_URL (committed events cross processes there)",
            ),
            (
                ("database_url",),
                not self.shared or self.store_url.startswith(("postgresql://", "postgres://")),
                "processes sharing the work (SCOREBOARD_REDIS_URL or --workers above 1) need one "
                "PostgreSQL (postgresql://...); SQLite serves one process",
            ),
            (
                ("jwt_secret",),
                not self.shared
                or any(
                    x is not None
                    for x in (self.jwt_secret, self.jwt_public_key_file, self.jwks_file, self.jwks_url)
                ),
                "must be set when processes share the work (SCOREBOARD_REDIS_URL or --workers above 1): "
                "each would generate its own",
            ),
            (
                ("ticket_secret", "ticket_keys"),
                not self.shared or self.ticket_secret is not None or self.ticket_keys is not None,
                "one must be set when processes share the work (SCOREBOARD_REDIS_URL or --workers above 1): "
                "each would generate its own",
            ),
        ]

    @property
    def shared(self) -> bool:
        """Whether several processes share the boards (over PostgreSQL and Redis)."""
        return self.redis_url is not None or self.workers > 1

    @property
    def origins(self) -> frozenset[str]:
        """The parsed allow-list of WebSocket origins."""
        return _origin_list(self.allowed_origins)

    @property
    def cors(self) -> frozenset[str]:
        """The parsed list of origins whose pages may read the public endpoints."""
        return _origin_list(self.cors_origins)

    @property
    def store_display(self) -> str:
        """The database URL without a password, for logs."""
        url = self.store_url
        if url.startswith("sqlite:"):
            return url
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def store_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'scoreboard.db').resolve()}"


LOG_LEVELS = ("debug", "info", "warning", "error")
METRICS_MODES = ("public", "service", "off")
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
_INT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_SECRET_FIELDS = frozenset({"jwt_secret", "ticket_secret", "ticket_keys", "redis_url"})
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _origin_list(raw: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip())


def _describe(settings: Settings, name: str, sources: Mapping[str, str]) -> str:
    """Where a setting came from, with its value unless it is a secret."""
    source = sources.get(name)
    if source is None:
        return f"SCOREBOARD_{name.upper()} (--{name.replace('_', '-')})"
    if name in _SECRET_FIELDS:
        return source
    value = getattr(settings, name)
    return f"{source}={str(value)!r}"


def _parse_int(raw: str) -> int:
    # int() also takes Unicode digits and underscores; settings are ASCII.
    if not _INT.match(raw.strip()):
        raise ValueError(raw)
    return int(raw)


def _parse_float(raw: str) -> float:
    # float() also takes nan, inf and Unicode digits.
    if not _FLOAT.match(raw.strip()):
        raise ValueError(raw)
    return float(raw)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": _parse_int,
    "float": _parse_float,
    "Path": Path,
    "str": str,
}


def parse_value(f: dataclasses.Field[Any], raw: str, source: str | None = None) -> Any:
    """Convert an environment or flag string to the field's type.

    `source` names where the value came from (default: the environment variable).
    """
    kind = str(f.type).replace(" | None", "")
    if kind in ("AckMode", "RankMode"):
        kind = "str"
    try:
        return _PARSERS[kind](raw)
    except (KeyError, ValueError):
        raise ConfigError(f"{source or f.metadata['env']}={raw!r} is not a valid {kind}") from None


def _secret(settings: Settings, name: str, *, create: bool) -> bytes:
    """The configured secret, or the one kept in the data dir (0600), generated once if `create`."""
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
    if not create:
        env = f"SCOREBOARD_{name.upper()}"
        raise ConfigError(
            f"no {path.name} in the data dir {settings.data_dir.resolve()}: point SCOREBOARD_DATA_DIR "
            f"(--data-dir) at the server's data dir, set {env}, or run `scoreboard serve` once to create it"
        )
    make_data_dir(settings.data_dir)
    generated = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(generated + b"\n")
    return generated


def make_data_dir(path: Path) -> None:
    """Create the data dir readable by the server's user only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


@dataclass(frozen=True, slots=True)
class Secrets:
    """Key material resolved from settings and the data dir.

    `jwt_keys` verify tokens: the HS256 secret or the PEM public key alone
    (whatever `kid` a token names), the keys of SCOREBOARD_JWKS_FILE, or an
    empty set for SCOREBOARD_JWKS_URL, filled by the first fetch at start
    (jwks.py). `jwt_secret` is the HS256 secret, None when tokens come from
    an identity provider.
    """

    jwt_keys: KeySet
    jwt_secret: bytes | None = field(repr=False)
    ticket_keys: TicketKeys = field(repr=False)


def _ticket_keys(settings: Settings, *, create: bool) -> TicketKeys:
    if settings.ticket_keys is not None:
        try:
            return TicketKeys.parse(settings.ticket_keys)
        except ValueError as exc:
            raise ConfigError(f"SCOREBOARD_TICKET_KEYS (--ticket-keys): {exc}") from None
    return TicketKeys.single(_secret(settings, "ticket_secret", create=create))


def resolve_secrets(settings: Settings, *, create: bool = True) -> Secrets:
    """Load the JWT and ticket keys; raises ConfigError.

    Secrets not configured are read from the data dir; only the server
    (`create=True`) generates them there, so a command pointed at the wrong
    directory cannot print credentials the server would refuse.
    """
    try:
        tickets = _ticket_keys(settings, create=create)
        if settings.jwks_url is not None:
            return Secrets(jwt_keys=KeySet(()), jwt_secret=None, ticket_keys=tickets)
        if settings.jwks_file is not None:
            keys = _jwks_file_keys(settings.jwks_file)
            return Secrets(jwt_keys=keys, jwt_secret=None, ticket_keys=tickets)
        if settings.jwt_public_key_file is not None:
            key = VerificationKey.from_public_pem(settings.jwt_public_key_file.read_bytes())
            return Secrets(jwt_keys=KeySet.single(key), jwt_secret=None, ticket_keys=tickets)
        secret = _secret(settings, "jwt_secret", create=create)
        key = VerificationKey.from_secret(secret)
        return Secrets(jwt_keys=KeySet.single(key), jwt_secret=secret, ticket_keys=tickets)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _jwks_file_keys(path: Path) -> KeySet:
    """The keys of a JWKS file (symmetric keys allowed); ConfigError naming the variable."""
    try:
        with path.open("rb") as file:
            document = file.read(MAX_JWKS_BYTES + 1)
        return KeySet.from_jwks(document, allow_symmetric=True)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    except ValueError as exc:
        problem = str(exc)
    raise ConfigError(f"SCOREBOARD_JWKS_FILE={str(path)!r}: {problem}")


def load_catalog(settings: Settings) -> Catalog:
    """The catalog from `catalog_file` (or its older name), or the built-in one.

    Reset schedules are checked here (`schedule.parse_reset`, a cron library)
    so a bad one stops the server at start, naming its key.
    """
    path = settings.catalog_file or settings.actions_file
    if path is None:
        return default_catalog(top_k=settings.top_k, max_delta=settings.max_delta)
    try:
        catalog = parse_catalog(
            path.read_text(encoding="utf-8"), top_k=settings.top_k, max_delta=settings.max_delta
        )
        for board in catalog.boards.values():
            try:
                parse_reset(board.reset)
            except ScheduleError as exc:
                raise CatalogError(f"boards.{board.id}.reset: {exc}") from None
    except (OSError, CatalogError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return catalog


def schedules(catalog: Catalog) -> dict[str, Schedule | None]:
    """Each board's reset schedule (already checked by `load_catalog`)."""
    return {board.id: parse_reset(board.reset) for board in catalog.boards.values()}
