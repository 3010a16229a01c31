"""Realistic mixed traffic for operators (Locust).

Three kinds of simulated users, weighted 5 : 1 : 4 by default:

* Player: starts an action (`POST /api/actions {"type": ...}` -> 201 with a
  ticket), "plays" for a moment, redeems the ticket (`POST /scores/update
  {"actionId", "ticket"}` -> 200); 1 redemption in 20 is sent twice, as a
  client retrying after a lost answer, and must come back `duplicate: true`
  with the same score. Now and then looks up its own standing.
* GameBackend: a trusted game server crediting players with a service token
  (`POST /scores/update {"userId", "scoreDelta", "actionId"}`), several per second.
* WebViewer: a web page polling `GET /scores` and sometimes a player's page
  `GET /api/users/{id}` (404 for a player with no score yet is expected).

Credentials are minted here from the server's own secrets, exactly as
`scoreboard token` would, so they must be shared with the server:

* `SCOREBOARD_JWT_SECRET` - the server's HS256 secret (player and service
  tokens are signed with it), or
* `SCOREBOARD_DATA_DIR` - the server's data dir, when the server generated its
  secret there (the `jwt-secret` file is read; nothing is ever generated here).

Players need no ticket secret: the server signs their tickets. Optional:
`LOCUST_PLAYERS` (distinct player ids, default 5000), `LOCUST_ACTION_TYPE`
(catalog action to start, default `default`; one with min_duration_s is
redeemed after that wait), `LOCUST_WEIGHTS` (player,backend,viewer, default
5,1,4).

Run against a server (JSON request statistics print at the end):

    SCOREBOARD_JWT_SECRET=... locust -f loadtest/locustfile.py --headless \\
        -u 200 -r 50 -t 30s --host http://127.0.0.1:8080

Only point it at a server you run yourself (127.0.0.1).
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment

try:
    from scoreboard.tokens import MIN_SECRET_BYTES, Role, mint_token
except ModuleNotFoundError:  # not installed: use the checkout this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from server.tokens import MIN_SECRET_BYTES, Role, mint_token  # type: ignore[no-redef]

PLAYERS = int(os.environ.get("LOCUST_PLAYERS", "5000"))
ACTION_TYPE = os.environ.get("LOCUST_ACTION_TYPE", "default")
WEIGHTS = [int(w) for w in os.environ.get("LOCUST_WEIGHTS", "5,1,4").split(",")]
TOKEN_TTL_S = 4 * 3600


def jwt_secret() -> bytes:
    """The server's HS256 secret: SCOREBOARD_JWT_SECRET, or the file in SCOREBOARD_DATA_DIR."""
    value = os.environ.get("SCOREBOARD_JWT_SECRET")
    if value:
        secret = value.encode()
    else:
        data_dir = Path(os.environ.get("SCOREBOARD_DATA_DIR", "./scoreboard-data"))
        path = data_dir / "jwt-secret"
        if not path.exists():
            raise SystemExit(
                "locustfile: set SCOREBOARD_JWT_SECRET to the server's secret, or SCOREBOARD_DATA_DIR "
                f"to the server's data dir ({path} does not exist)"
            )
        secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SystemExit(f"locustfile: the JWT secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


_SECRET: bytes | None = None


def bearer(sub: str, role: Role = Role.PLAYER, name: str | None = None) -> dict[str, str]:
    """An Authorization header for `sub`, signed with the server's secret."""
    global _SECRET  # noqa: PLW0603 - read once, lazily, so `locust --help` works without it
    if _SECRET is None:
        _SECRET = jwt_secret()
    tok = mint_token(_SECRET, sub=sub, now=time.time(), ttl_s=TOKEN_TTL_S, name=name, role=role)
    return {"Authorization": f"Bearer {tok}"}


def player_id(n: int) -> str:
    """The id of simulated player n."""
    return f"player-{n:05d}"


def _backed_off(resp: Any) -> bool:
    """A 429 from the per-player limit: wait as told, like a well-behaved client (not a failure)."""
    if resp.status_code != 429:
        return False
    resp.success()
    time.sleep(min(float(resp.headers.get("Retry-After", "1")), 60.0))
    return True


class Player(HttpUser):
    """A game client: start an action, play, redeem its ticket."""

    weight = WEIGHTS[0]
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        """Pick an identity and mint its token."""
        self.me = player_id(random.randrange(PLAYERS))
        self.headers = bearer(self.me, name=f"Player {self.me[-5:]}")

    @task(10)
    def play_one_action(self) -> None:
        """POST /api/actions, wait until the ticket is redeemable, POST /scores/update."""
        with self.client.post(
            "/api/actions", json={"type": ACTION_TYPE}, headers=self.headers, catch_response=True
        ) as resp:
            if _backed_off(resp):
                return
            if resp.status_code != 201:
                resp.failure(f"start action: {resp.status_code} {resp.text[:200]}")
                return
            started: dict[str, Any] = resp.json()
        wait = started["notBefore"] - time.time()
        if wait > 0:
            time.sleep(min(wait + 0.05, 60.0))
        body = {"actionId": started["actionId"], "ticket": started["ticket"]}
        first = self._redeem(body, "/scores/update [ticket]")
        if first is not None and random.random() < 0.05:
            self._redeem(body, "/scores/update [ticket retry]", first)

    def _redeem(
        self, body: dict[str, str], name: str, first: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Redeem a ticket; a retry (`first` given) must repeat the first answer as a duplicate."""
        with self.client.post(
            "/scores/update", json=body, headers=self.headers, name=name, catch_response=True
        ) as resp:
            if _backed_off(resp):
                return None
            if resp.status_code != 200:
                resp.failure(f"redeem: {resp.status_code} {resp.text[:200]}")
                return None
            answer: dict[str, Any] = resp.json()
            if first is not None and (not answer["duplicate"] or answer["newScore"] != first["newScore"]):
                resp.failure(f"a retry must return the original answer: first {first}, retry {answer}")
            return answer

    @task(1)
    def my_standing(self) -> None:
        """GET /api/users/{me} (404 until the first credit commits)."""
        with self.client.get(f"/api/users/{self.me}", name="/api/users/[id]", catch_response=True) as resp:
            if resp.status_code in (200, 404):
                resp.success()
            else:
                resp.failure(f"{resp.status_code}")


class GameBackend(HttpUser):
    """A trusted game server crediting players with a service token."""

    weight = WEIGHTS[1]
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        """Mint the backend's service token."""
        self.headers = bearer(f"game-backend-{uuid.uuid4().hex[:6]}", role=Role.SERVICE)

    @task
    def credit(self) -> None:
        """POST /scores/update with userId, scoreDelta and a fresh actionId."""
        body = {
            "userId": player_id(random.randrange(PLAYERS)),
            "scoreDelta": random.randint(1, 50),
            "actionId": uuid.uuid4().hex,
        }
        with self.client.post(
            "/scores/update",
            json=body,
            headers=self.headers,
            name="/scores/update [service]",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code} {resp.text[:200]}")


class WebViewer(HttpUser):
    """A web page showing the board and, sometimes, a player's page."""

    weight = WEIGHTS[2]
    wait_time = between(1.0, 4.0)

    @task(8)
    def board(self) -> None:
        """GET /scores."""
        with self.client.get("/scores", catch_response=True) as resp:
            if resp.status_code != 200 or "topUsers" not in resp.json():
                resp.failure(f"{resp.status_code}")

    @task(2)
    def player_page(self) -> None:
        """GET /api/users/{id} of a random player."""
        who = player_id(random.randrange(PLAYERS))
        with self.client.get(f"/api/users/{who}", name="/api/users/[id]", catch_response=True) as resp:
            if resp.status_code in (200, 404):
                resp.success()
            else:
                resp.failure(f"{resp.status_code}")


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _check_secret(environment: Environment, **_: Any) -> None:
    # Fail fast, before any user spawns, when the secret is missing.
    bearer("locust-preflight")
