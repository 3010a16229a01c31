"""CORS on the public reads, so a web game on another domain can read the board.

Only what needs no credentials is shared: the board, a player's standing,
the event streams, the board reads and the API description (`PUBLIC_PATHS`). Their responses
carry `Access-Control-Allow-Origin` when the page's origin is allowed (`*`
by default, never with credentials), and a preflight (`OPTIONS`) is answered
for them. Updates, action starts and the WebSocket are not covered: the
WebSocket has its own Origin check (`SCOREBOARD_ALLOWED_ORIGINS`).
"""

from __future__ import annotations

from aiohttp import web

from .errors import Code, ScoreboardError
from .http import BOARD_PATH, USER_PATH

PUBLIC_PATHS = (
    "/scores",
    USER_PATH,
    "/scores/stream",
    "/openapi.json",
    "/api/boards",
    BOARD_PATH + "/scores",
    BOARD_PATH + "/users",
    BOARD_PATH + "/users/{user_id:[^/]+}",
    BOARD_PATH + "/users/{user_id:[^/]+}/around",
    BOARD_PATH + "/stream",
)
PUBLIC_METHODS = frozenset({"GET", "HEAD"})
# Request headers a page may send: the event stream's resume position and ours.
ALLOWED_HEADERS = frozenset({"last-event-id", "x-request-id", "cache-control", "accept"})
EXPOSED_HEADERS = "X-Request-ID, Retry-After"


class Cors:
    """Cross-origin reads of `PUBLIC_PATHS` by pages from `origins` (`*`: any).

    `max_age_s` is how long a browser may cache a preflight answer.
    """

    def __init__(self, origins: frozenset[str], *, max_age_s: int = 600) -> None:
        self._any = "*" in origins
        self._origins = origins
        self._max_age = str(max_age_s)
        self._public: set[str] = set()

    def install(self, app: web.Application) -> None:
        """Add the preflight routes and the response hook to `app` (nothing if no origin is allowed)."""
        if not self._origins:
            return
        app.on_response_prepare.append(self._on_prepare)
        for path in PUBLIC_PATHS:
            route = app.router.add_route("OPTIONS", path, self.preflight)
            if route.resource is not None:
                self._public.add(route.resource.canonical)

    @staticmethod
    def _methods(request: web.Request) -> str:
        """Every method the requested path answers (its routes may sit on several resources)."""
        own = request.match_info.route.resource
        canonical = None if own is None else own.canonical
        methods = {"GET", "HEAD", "OPTIONS"}
        for resource in request.app.router.resources():
            if resource.canonical == canonical:
                methods |= {route.method for route in resource if route.method != "*"}
        return ", ".join(sorted(methods))

    def _allow(self, origin: str) -> str | None:
        if self._any:
            return "*"
        return origin if origin.rstrip("/").lower() in self._origins else None

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None or request.method not in PUBLIC_METHODS:
            return
        route = request.match_info.route
        if route.resource is None or route.resource.canonical not in self._public:
            return
        allowed = self._allow(origin)
        if allowed is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if allowed != "*":
            response.headers.add("Vary", "Origin")

    async def preflight(self, request: web.Request) -> web.Response:
        """OPTIONS on a public path: what a page from `Origin` may do."""
        origin = request.headers.get("Origin")
        method = request.headers.get("Access-Control-Request-Method")
        if origin is None or method is None:  # not a preflight: say what the resource allows
            return web.Response(status=204, headers={"Allow": self._methods(request)})
        allowed = self._allow(origin)
        if allowed is None:
            raise ScoreboardError(Code.FORBIDDEN, "Pages from this origin may not read this resource.")
        if method.upper() not in PUBLIC_METHODS:
            raise ScoreboardError(
                Code.FORBIDDEN, f"Only GET and HEAD are shared across origins, not {method}."
            )
        requested = {
            h.strip().lower()
            for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
            if h.strip()
        }
        if not requested <= ALLOWED_HEADERS:
            refused = ", ".join(sorted(requested - ALLOWED_HEADERS))
            raise ScoreboardError(Code.FORBIDDEN, f"These request headers are not allowed: {refused}.")
        headers = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": "GET, HEAD",
            "Access-Control-Max-Age": self._max_age,
        }
        if requested:
            headers["Access-Control-Allow-Headers"] = ", ".join(sorted(requested))
        if allowed != "*":
            headers["Vary"] = "Origin"
        return web.Response(status=204, headers=headers)
