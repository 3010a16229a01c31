"""Metrics: `GET /metrics` in the Prometheus text format, one registry per application.

The hot path stays cheap: a request adds one to a plain dict entry (and, for
an update, one histogram observation); a committed batch is two histogram
observations. Everything the components already count (the writer's queue
and totals, the broadcaster's subscribers, open streams, rate-limit
refusals, open connections) is read when Prometheus scrapes, by a collector
that holds the components themselves, so those cost nothing per event.

Each application has its own `CollectorRegistry`, never the process-wide
default: a process (the test suite, say) may run several servers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import Code, ScoreboardError
from .identity import Role
from .tokens import TokenVerifier, bearer_token

# The classic text format, which every Prometheus version reads. (The
# library's CONTENT_TYPE_LATEST says version=1.0.0 since 0.22; the body
# generate_latest writes is the same for our ASCII names.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

UPDATE_ROUTES = frozenset({"/scores/update", "/api/score/update"})
# Seconds, 1 ms - 10 s: an acknowledged update waits for its batch's commit.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A commit can take well under a millisecond on SQLite.
COMMIT_BUCKETS = (0.0005, *LATENCY_BUCKETS)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
# Methods are chosen by the client: any other one is counted as "other",
# so a scanner cannot grow the label set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of requests no route matched (404, 405)


class WriterStats(Protocol):
    """What is read from the writer (`server.writer.Writer`)."""

    @property
    def queued(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def committed(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def refused(self) -> int: ...


class BroadcasterStats(Protocol):
    """What is read from the broadcaster (`server.broadcast.Broadcaster`)."""

    def __len__(self) -> int: ...
    @property
    def behind(self) -> int: ...
    @property
    def deliveries(self) -> int: ...
    @property
    def conflations(self) -> int: ...


class ServiceStats(Protocol):
    """What is read from the service (`server.service.ScoreService`)."""

    @property
    def rate_limited(self) -> int: ...


class ConnectionStats(Protocol):
    """What is read from the connection guard (`server.connections.ConnectionGuard`)."""

    def __len__(self) -> int: ...
    @property
    def refused_total(self) -> int: ...


class Metrics:
    """The metrics of one application: per-request counts, histograms, and components to read.

    Limits: `latency_buckets` and `commit_buckets` (seconds) and
    `batch_size_buckets` (updates) bound the histograms; `update_routes` are
    the routes whose latency is recorded; `process` adds the standard
    process and garbage-collector metrics.
    """

    def __init__(
        self,
        *,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        commit_buckets: Sequence[float] = COMMIT_BUCKETS,
        batch_size_buckets: Sequence[float] = BATCH_SIZE_BUCKETS,
        update_routes: frozenset[str] = UPDATE_ROUTES,
        process: bool = True,
    ) -> None:
        self.registry = CollectorRegistry()
        self._update_routes = update_routes
        # (route, method, status) -> count; (code, transport) -> count
        self._requests: dict[tuple[str, str, int], int] = {}
        self._errors: dict[tuple[Code, str], int] = {}
        self._update_latency = Histogram(
            "scoreboard_update_duration_seconds",
            "Time from the start of an HTTP score update to its answer.",
            buckets=latency_buckets,
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "scoreboard_batch_size",
            "Updates per committed batch.",
            buckets=batch_size_buckets,
            registry=self.registry,
        )
        self._commit_time = Histogram(
            "scoreboard_batch_commit_duration_seconds",
            "Time to commit one batch of updates to the store.",
            buckets=commit_buckets,
            registry=self.registry,
        )
        self._writer: WriterStats | None = None
        self._broadcaster: BroadcasterStats | None = None
        self._service: ServiceStats | None = None
        self._ws: Sized | None = None
        self._sse: Sized | None = None
        self._connections: ConnectionStats | None = None
        self.registry.register(_Components(self))
        if process:
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # -- the hot path ------------------------------------------------------

    def request_done(self, request: web.Request, status: int, code: Code | None, seconds: float) -> None:
        """Count one answered HTTP request (and its error code); time it if it is an update."""
        resource = request.match_info.route.resource
        route = UNMATCHED if resource is None else resource.canonical
        method = request.method
        key = (route, method if method in METHODS else "other", status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if code is not None:
            error = (code, "http")
            self._errors[error] = self._errors.get(error, 0) + 1
        if route in self._update_routes:
            self._update_latency.observe(seconds)

    def error(self, code: Code, transport: str) -> None:
        """Count one error answered over `transport` ("http" or "ws"; the WebSocket's hook)."""
        key = (code, transport)
        self._errors[key] = self._errors.get(key, 0) + 1

    def batch_committed(self, size: int, seconds: float) -> None:
        """The writer's `on_batch` hook: one committed batch of `size` updates."""
        self._batch_size.observe(size)
        self._commit_time.observe(seconds)

    # -- components read at scrape time ----------------------------------

    def watch_storage(
        self, writer: WriterStats, service: ServiceStats, broadcaster: BroadcasterStats
    ) -> None:
        """Read these (the ones of the running store) at every scrape."""
        self._writer, self._service, self._broadcaster = writer, service, broadcaster

    def watch_streams(self, ws: Sized, sse: Sized) -> None:
        """Read the open WebSocket and SSE counts at every scrape."""
        self._ws, self._sse = ws, sse

    def watch_connections(self, connections: ConnectionStats) -> None:
        """Read the open and refused connection counts (a `ConnectionGuard`) at every scrape."""
        self._connections = connections

    def families(self) -> Iterator[Metric]:
        """The counted and read metrics, as of now."""
        requests = CounterMetricFamily(
            "scoreboard_http_requests",
            "HTTP requests answered, by route pattern, method and status "
            "(WebSocket and SSE requests count when they end).",
            labels=("route", "method", "status"),
        )
        for (route, method, status), n in self._requests.items():
            requests.add_metric((route, method, str(status)), n)
        yield requests
        errors = CounterMetricFamily(
            "scoreboard_errors",
            "Errors answered, by error code and transport.",
            labels=("code", "transport"),
        )
        for (code, transport), n in self._errors.items():
            errors.add_metric((code.value, transport), n)
        yield errors
        if (writer := self._writer) is not None:
            yield _gauge("scoreboard_writer_queued_updates", "Updates waiting for a batch.", writer.queued)
            yield _gauge(
                "scoreboard_storage_up",
                "1 while the store accepts updates, 0 from a failed batch until it answers again.",
                1 if writer.healthy else 0,
            )
            yield _counter(
                "scoreboard_updates_committed", "Updates committed to the store.", writer.committed
            )
            yield _counter("scoreboard_batches_committed", "Batches committed to the store.", writer.batches)
            yield _counter(
                "scoreboard_updates_refused_by_store",
                "Updates the store refused for their data (validation_failed, score_overflow).",
                writer.refused,
            )
        if (service := self._service) is not None:
            yield _counter(
                "scoreboard_rate_limited",
                "Updates and action starts refused by the per-player and per-action-type rate limits.",
                service.rate_limited,
            )
        if (broadcaster := self._broadcaster) is not None:
            yield _gauge("scoreboard_subscribers", "Board subscribers (WebSocket and SSE).", len(broadcaster))
            yield _gauge(
                "scoreboard_subscribers_behind",
                "Subscribers too slow for the diffs, conflated until they drain.",
                broadcaster.behind,
            )
            yield _counter(
                "scoreboard_broadcast_deliveries",
                "Board events written to subscribers.",
                broadcaster.deliveries,
            )
            yield _counter(
                "scoreboard_broadcast_conflations",
                "Times a subscriber fell behind and had diffs conflated away.",
                broadcaster.conflations,
            )
        if self._ws is not None:
            yield _gauge("scoreboard_websocket_connections", "Open WebSocket connections.", len(self._ws))
        if self._sse is not None:
            yield _gauge("scoreboard_sse_streams", "Open server-sent event streams.", len(self._sse))
        if self._connections is not None:
            yield _gauge(
                "scoreboard_connections",
                "Open client connections counted against the per-address cap.",
                len(self._connections),
            )
            yield _counter(
                "scoreboard_connections_refused",
                "Connections over the per-address cap, answered 429 and closed.",
                self._connections.refused_total,
            )

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class _Components(Collector):
    """Hands the registry what `Metrics` counts and reads."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.families()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class MetricsEndpoint:
    """`GET /metrics`: open to anyone (`access="public"`) or to service tokens (`"service"`)."""

    def __init__(self, metrics: Metrics, verifier: TokenVerifier, *, access: str = "public") -> None:
        if access not in ("public", "service"):
            raise ValueError("access must be 'public' or 'service' (for 'off', add no route)")
        self._metrics = metrics
        self._verifier = verifier
        self._service_only = access == "service"

    async def handle(self, request: web.Request) -> web.Response:
        """The exposition; 401 without a valid token, 403 for a player's, when service-only."""
        if self._service_only:
            identity = await self._verifier.authenticate(bearer_token(request.headers.get("Authorization")))
            if identity.role is not Role.SERVICE:
                raise ScoreboardError(Code.FORBIDDEN, "Metrics need a service token.")
        return web.Response(
            body=self._metrics.exposition(),
            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
        )


METRICS = web.AppKey("metrics", Metrics)
