"""Command line: `scoreboard serve | token | ticket`.

`serve` flags are generated from the Settings fields, so every environment
variable has a flag of the same name (SCOREBOARD_FLUSH_INTERVAL_MS is
--flush-interval-ms); flags win over the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import orjson
import uvloop

from .app import serve
from .config import ConfigError, Settings, parse_value, resolve_secrets
from .logs import configure
from .store import StorageError
from .tickets import MAX_POINTS, Ticket, sign_ticket
from .tokens import Role, mint_token


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar=f.name.split("_")[-1].upper(),
            help=f"{f.metadata['help']} [{f.metadata['env']}]",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoreboard", description="Real-time leaderboard server.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_flags(sub.add_parser("serve", help="run the server"))

    token = sub.add_parser("token", help="print a JWT signed with the configured secret")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--name", help="display name")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.PLAYER.value)
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    token.add_argument("--data-dir", type=Path, help="where the generated secret lives [SCOREBOARD_DATA_DIR]")

    ticket = sub.add_parser("ticket", help='print {"actionId", "ticket"} for a player update')
    ticket.add_argument("--user", required=True, help="user id the ticket is bound to")
    ticket.add_argument("--points", type=int, required=True, help="points the action is worth")
    ticket.add_argument("--action-id", help="action id (default: a new random one)")
    ticket.add_argument("--ttl", type=int, default=600, help="seconds until it expires (default 600)")
    ticket.add_argument(
        "--not-before", type=int, default=0, help="seconds until it may be redeemed (default 0)"
    )
    ticket.add_argument(
        "--data-dir", type=Path, help="where the generated secret lives [SCOREBOARD_DATA_DIR]"
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None)
        if raw is not None:
            overrides[f.name] = raw if isinstance(raw, Path) else parse_value(f, raw)
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
    try:
        uvloop.run(serve(settings))
    except (StorageError, OSError) as exc:
        # Storage unreachable at start, or the port is taken: one clear line.
        logging.getLogger("scoreboard.app").error("startup_failed", extra={"fields": {"error": str(exc)}})
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scoreboard` command."""
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "serve":
            return _serve(settings)
        secrets = resolve_secrets(settings)
    except ConfigError as exc:
        print(f"scoreboard: configuration error: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    if args.command == "token":
        if secrets.jwt_secret is None:
            print(
                "scoreboard: tokens come from the identity provider (public key configured)",
                file=sys.stderr,
            )
            return 2
        print(
            mint_token(
                secrets.jwt_secret,
                sub=args.sub,
                now=now,
                ttl_s=args.ttl,
                name=args.name,
                role=Role(args.role),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            )
        )
        return 0
    if not 1 <= args.points <= MAX_POINTS:
        print(f"scoreboard: --points must be from 1 to {MAX_POINTS}", file=sys.stderr)
        return 2
    issued = int(now)
    ticket = Ticket(
        action_id=args.action_id or uuid.uuid4().hex,
        user_id=args.user,
        points=args.points,
        not_before=issued + args.not_before,
        expires_at=issued + args.ttl,
    )
    body = {"actionId": ticket.action_id, "ticket": sign_ticket(secrets.ticket_secret, ticket)}
    print(orjson.dumps(body).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
