"""Command line: `scoreboard serve | token | ticket`.

`serve` flags are generated from the Settings fields, so every environment
variable has a flag of the same name (SCOREBOARD_FLUSH_INTERVAL_MS is
--flush-interval-ms); flags win over the environment.

`token` and `ticket` sign with the server's secrets: configured in the
environment, or kept in its data dir. Only `serve` creates secrets, so a
command pointed at the wrong directory refuses instead of printing
credentials the server would reject.

`serve --workers N` (N > 1) supervises N worker processes sharing the port
(workers.py); each runs `serve` again with the same flags.

Every refusal is one line on stderr starting `scoreboard: ` with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import resource
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import fields

import orjson
import uvloop

from . import __version__
from .app import serve
from .config import ConfigError, Settings, load_catalog, parse_value, resolve_secrets
from .errors import ScoreboardError
from .identity import Role
from .logs import configure
from .store import StorageError
from .text import text_problem
from .tickets import MAX_ID_CHARS, MAX_POINTS, Ticket, parse_ticket, sign_ticket
from .tokens import mint_token
from .workers import WORKER_ENV, Supervisor, reserve_port, worker_command

# Settings under which tokens come from an identity provider, not the HS256 secret.
_KEY_SOURCES = ("jwt_public_key_file", "jwks_file", "jwks_url")
# A ticket's nbf and exp are at most 2^53 (exact in every JSON parser); this
# bound keeps `now + ttl` under it for millions of years.
_MAX_TICKET_TTL_S = 2**52
_DATA_DIR_HELP = "the server's data dir, where its generated secrets are read from [SCOREBOARD_DATA_DIR]"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            metavar=f.name.split("_")[-1].upper(),
            help=f"{f.metadata['help']} [{f.metadata['env']}]",
        )


def build_parser() -> argparse.ArgumentParser:
    """The `scoreboard` argument parser; every option has help text."""
    parser = argparse.ArgumentParser(prog="scoreboard", description="Real-time leaderboard server.")
    parser.add_argument(
        "--version", action="version", version=f"scoreboard {__version__}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_flags(
        sub.add_parser(
            "serve",
            help="run the server",
            description="Run the server. Every flag mirrors the environment variable in brackets "
            "and wins over it.",
        )
    )

    token = sub.add_parser(
        "token",
        help="print a JWT signed with the server's secret",
        description="Print an HS256 token signed with SCOREBOARD_JWT_SECRET or the secret in the "
        "server's data dir (never creates one), with the iss and aud claims the server requires "
        "(SCOREBOARD_JWT_ISSUER, SCOREBOARD_JWT_AUDIENCE) when set.",
    )
    token.add_argument("--sub", required=True, help=f"user id, 1-{MAX_ID_CHARS} characters")
    token.add_argument("--name", help=f"display name shown on the board, 1-{MAX_ID_CHARS} characters")
    token.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=Role.PLAYER.value,
        help="player: updates its own score with tickets; service: a trusted game backend "
        "that may credit any user; admin: an operator who ends seasons (default: player)",
    )
    token.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires, > 0 (default 3600)"
    )
    token.add_argument("--data-dir", help=_DATA_DIR_HELP)

    ticket = sub.add_parser(
        "ticket",
        help='print {"actionId", "ticket"} for a player update',
        description="Print an update body with a ticket signed with the server's ticket key "
        "(SCOREBOARD_TICKET_KEYS, SCOREBOARD_TICKET_SECRET or the secret in its data dir; "
        "never creates one).",
    )
    ticket.add_argument(
        "--user", required=True, help=f"user id the ticket is bound to, 1-{MAX_ID_CHARS} characters"
    )
    ticket.add_argument(
        "--points", type=int, required=True, help=f"points the action is worth, 1 to {MAX_POINTS}"
    )
    ticket.add_argument(
        "--action-id", help=f"action id, 1-{MAX_ID_CHARS} characters (default: a new random one)"
    )
    ticket.add_argument(
        "--ttl", type=int, default=600, help="whole seconds until it expires, >= 1 (default 600)"
    )
    ticket.add_argument(
        "--not-before",
        type=int,
        default=0,
        help="seconds until it may be redeemed, >= 0 and less than --ttl (default 0)",
    )
    ticket.add_argument("--data-dir", help=_DATA_DIR_HELP)
    return parser


def _text_problem(flag: str, value: str | None) -> str | None:
    """The same rule the server applies to ids and names (text.py)."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_ID_CHARS:
        return f"{flag} must be 1 to {MAX_ID_CHARS} characters long (got {len(value)})"
    problem = text_problem(value)
    return None if problem is None else f"{flag} must not contain {problem}"


def _token_problem(args: argparse.Namespace) -> str | None:
    problem = _text_problem("--sub", args.sub) or _text_problem("--name", args.name)
    if problem is None and not (math.isfinite(args.ttl) and args.ttl > 0):
        problem = f"--ttl must be a number of seconds > 0 (got {args.ttl})"
    return problem


def _ticket_problem(args: argparse.Namespace) -> str | None:
    problem = _text_problem("--user", args.user) or _text_problem("--action-id", args.action_id)
    if problem is not None:
        return problem
    if not 1 <= args.points <= MAX_POINTS:
        return f"--points must be from 1 to {MAX_POINTS} (got {args.points})"
    if not 1 <= args.ttl <= _MAX_TICKET_TTL_S:
        return f"--ttl must be a whole number of seconds from 1 to {_MAX_TICKET_TTL_S} (got {args.ttl})"
    if not 0 <= args.not_before < args.ttl:
        return f"--not-before must be >= 0 and less than --ttl ({args.ttl}) (got {args.not_before})"
    return None


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None)
        if raw is not None:
            overrides[f.name] = parse_value(f, raw, source=_flag(f.name))
    return Settings.from_env(overrides=overrides)


def _raise_open_files_limit() -> None:
    # Every subscriber is a socket: allow as many as the hard limit permits.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard)
            )


def _serve(settings: Settings) -> int:
    configure(settings.log_level)
    _raise_open_files_limit()
    # A worker of `serve --workers N` shares the port with its siblings.
    reuse_port = WORKER_ENV in os.environ
    try:
        uvloop.run(serve(settings, reuse_port=reuse_port))
    except (StorageError, OSError) as exc:
        # Storage unreachable at start, or the port is taken: one clear line.
        logging.getLogger("scoreboard.app").error("startup_failed", extra={"fields": {"error": str(exc)}})
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are installed
        return 130
    return 0


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The `serve` flags given, for the workers; their port and count come from the environment."""
    return [
        f"{_flag(f.name)}={raw}"
        for f in fields(Settings)
        if f.name not in ("port", "workers") and (raw := getattr(args, f.name, None)) is not None
    ]


def _supervise(settings: Settings, flags: list[str]) -> int:
    configure(settings.log_level)
    _raise_open_files_limit()
    # Each worker would refuse these too; refuse once, before starting any.
    resolve_secrets(settings, create=False)
    load_catalog(settings)
    try:
        reserved = reserve_port(settings.host, settings.port)
    except OSError as exc:
        logging.getLogger("scoreboard.app").error("startup_failed", extra={"fields": {"error": str(exc)}})
        return 1
    with reserved:
        port = int(reserved.getsockname()[1])
        logging.getLogger("scoreboard.workers").info(
            "workers_starting",
            extra={"fields": {"workers": settings.workers, "host": settings.host, "port": port}},
        )
        supervisor = Supervisor(
            worker_command(flags),
            count=settings.workers,
            # Flags win over the environment, so `flags` carry neither of these.
            env={**os.environ, "SCOREBOARD_WORKERS": "1", "SCOREBOARD_PORT": str(port)},
            # A worker's own stop: in-flight requests, then the last batch and the pool.
            stop_grace_s=settings.shutdown_timeout_s + settings.store_timeout_s + 5.0,
        )
        try:
            return uvloop.run(supervisor.run())
        except KeyboardInterrupt:  # Ctrl-C before the signal handlers are installed
            return 130


def _token(args: argparse.Namespace, settings: Settings) -> int:
    for f in fields(Settings):
        if f.name in _KEY_SOURCES and getattr(settings, f.name) is not None:
            return _refuse(
                f"tokens come from the identity provider ({f.metadata['env']} is set); "
                "`scoreboard token` signs only with the server's HS256 secret"
            )
    secret = resolve_secrets(settings, create=False).jwt_secret
    if secret is None:  # resolve_secrets returns no secret only for a public key, checked above
        return _refuse("tokens come from the identity provider (no HS256 secret is configured)")
    print(
        mint_token(
            secret,
            sub=args.sub,
            now=time.time(),
            ttl_s=args.ttl,
            name=args.name,
            role=Role(args.role),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )
    return 0


def _ticket(args: argparse.Namespace, settings: Settings) -> int:
    keys = resolve_secrets(settings, create=False).ticket_keys
    issued = int(time.time())
    ticket = Ticket(
        action_id=args.action_id or uuid.uuid4().hex,
        user_id=args.user,
        points=args.points,
        not_before=issued + args.not_before,
        expires_at=issued + args.ttl,
    )
    text = sign_ticket(keys, ticket)
    try:
        # The flags passed their own checks; the server also limits the
        # ticket's length (long non-ASCII ids can exceed it together).
        parse_ticket(keys, text)
    except ScoreboardError as exc:
        return _refuse(f"the server would refuse this ticket: {exc.message}")
    print(orjson.dumps({"actionId": ticket.action_id, "ticket": text}).decode())
    return 0


def _refuse(message: str) -> int:
    print(f"scoreboard: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scoreboard` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            settings = _settings(args)
            if settings.workers > 1:
                return _supervise(settings, _worker_flags(args))
            return _serve(settings)
        # Flags first: a refusal names the flag even when the data dir is wrong too.
        token = args.command == "token"
        problem = _token_problem(args) if token else _ticket_problem(args)
        if problem is not None:
            return _refuse(problem)
        settings = _settings(args)
        return _token(args, settings) if token else _ticket(args, settings)
    except ConfigError as exc:
        return _refuse(f"configuration error: {exc}")


if __name__ == "__main__":
    raise SystemExit(main())
