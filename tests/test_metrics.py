"""GET /metrics: real servers scraped over HTTP, the exposition parsed, values checked to move."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartServer
from tests.helpers import ServerHandle, bearer, eventually, ticket, token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

UPDATE = ("/scores/update", "POST", 200)


async def scrape(server: ServerHandle, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of GET /metrics, keyed by name and labels."""
    async with server.session.get(server.url + "/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_until(
    server: ServerHandle, condition: Callable[[Samples], bool], timeout_s: float = 3.0
) -> Samples:
    """Scrape until `condition` holds (streams are counted when their handler returns)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition(samples := await scrape(server)):
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)
    return samples


def value(samples: Samples, name: str, *labels: tuple[str, str]) -> float:
    """One sample's value; 0 if it is not (yet) there."""
    return samples.get((name, frozenset(labels)), 0.0)


def requests(samples: Samples, route: str, method: str, status: int) -> float:
    """scoreboard_http_requests_total for one route pattern, method and status."""
    labels = ("route", route), ("method", method), ("status", str(status))
    return value(samples, "scoreboard_http_requests_total", *labels)


def errors(samples: Samples, code: str, transport: str = "http") -> float:
    """scoreboard_errors_total for one error code."""
    return value(samples, "scoreboard_errors_total", ("code", code), ("transport", transport))


async def test_updates_move_the_counters_and_histograms(server: ServerHandle) -> None:
    before = await scrape(server)
    assert value(before, "scoreboard_storage_up") == 1
    assert value(before, "scoreboard_updates_committed_total") == 0
    n = 5
    for i in range(n):
        await server.credit(f"user{i}", 10)
    after = await scrape(server)

    assert value(after, "scoreboard_updates_committed_total") == n
    assert requests(after, *UPDATE) - requests(before, *UPDATE) == n
    assert value(after, "scoreboard_update_duration_seconds_count") == n
    assert 0 < value(after, "scoreboard_update_duration_seconds_sum") < n * 10
    # Every credit was acknowledged after its commit: at least one batch, n updates in all.
    batches = value(after, "scoreboard_batches_committed_total")
    assert 1 <= batches <= n
    assert value(after, "scoreboard_batch_size_count") == batches
    assert value(after, "scoreboard_batch_size_sum") == n
    assert value(after, "scoreboard_batch_commit_duration_seconds_count") == batches
    assert value(after, "scoreboard_batch_commit_duration_seconds_bucket", ("le", "+Inf")) == batches
    assert value(after, "scoreboard_writer_queued_updates") == 0
    assert value(after, "scoreboard_updates_refused_by_store_total") == 0
    assert value(after, "scoreboard_storage_up") == 1
    # The scrape itself is a request like any other, and this one holds a connection.
    assert requests(after, "/metrics", "GET", 200) == 1
    assert value(after, "scoreboard_connections") >= 1
    assert value(after, "process_resident_memory_bytes") > 0


async def test_routes_are_labelled_by_pattern_and_errors_by_code(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    await server.credit("alice", 3)
    assert (await server.get("/api/users/alice"))[0] == 200
    assert (await server.get("/api/users/bob"))[0] == 404
    for path in ("/nope", "/nope/again", "/wp-login.php"):
        assert (await server.get(path))[0] == 404
    async with server.session.request("PROPFIND", server.url + "/scores") as resp:
        assert resp.status == 405
    assert (await server.post("/scores/update", {"userId": "x"}))[0] == 401

    samples = await scrape(server)
    assert requests(samples, "/api/users/{user_id}", "GET", 200) == 1
    assert requests(samples, "/api/users/{user_id}", "GET", 404) == 1
    # Unknown paths share one label value, and unusual methods another: bounded cardinality.
    assert requests(samples, "unmatched", "GET", 404) == 3
    assert requests(samples, "unmatched", "other", 405) == 1
    assert not [labels for _, labels in samples if ("route", "/nope") in labels]
    assert errors(samples, "not_found") == 3
    assert errors(samples, "user_not_found") == 1
    assert errors(samples, "method_not_allowed") == 1
    assert errors(samples, "unauthorized") == 1
    # Refused updates are answered too: their latency is recorded with the rest.
    assert value(samples, "scoreboard_update_duration_seconds_count") == 2


async def test_per_player_limit_shows_in_rate_limited(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, player_updates_per_min=1)
    tok = token("pat")
    assert (await server.post("/scores/update", ticket("pat", 1), tok))[0] == 200
    status, body = await server.post("/scores/update", ticket("pat", 1), tok)
    assert (status, body["error"]["code"]) == (429, "rate_limited")

    samples = await scrape(server)
    assert value(samples, "scoreboard_rate_limited_total") == 1
    assert errors(samples, "rate_limited") == 1
    assert requests(samples, "/scores/update", "POST", 429) == 1
    assert value(samples, "scoreboard_updates_committed_total") == 1


async def test_subscribers_and_streams_are_counted(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    async with server.session.get(server.url + "/scores/stream") as stream:
        assert stream.status == 200
        await stream.content.readuntil(b"\n\n")  # retry: hint, sent once subscribed
        async with server.session.ws_connect(server.ws_url) as ws:
            await ws.send_json({"type": "subscribe", "channel": "scoreboard"})
            assert (await ws.receive_json(timeout=5))["type"] in ("scoreboard:update", "scoreboard:diff")
            assert await eventually(lambda: len(server.broadcaster) == 2)
            samples = await scrape(server)
            assert value(samples, "scoreboard_subscribers") == 2
            assert value(samples, "scoreboard_subscribers_behind") == 0
            assert value(samples, "scoreboard_sse_streams") == 1
            assert value(samples, "scoreboard_websocket_connections") == 1
            assert value(samples, "scoreboard_broadcast_deliveries_total") >= 2  # a snapshot each

            await server.credit("alice", 5)
            assert await eventually(lambda: server.broadcaster.deliveries >= 4)
            assert value(await scrape(server), "scoreboard_broadcast_deliveries_total") >= 4
    # Streams are counted as requests when they end.
    samples = await scrape_until(server, lambda s: requests(s, "/scores/stream", "GET", 200) == 1)
    assert value(samples, "scoreboard_subscribers") == 0
    assert value(samples, "scoreboard_sse_streams") == 0
    assert value(samples, "scoreboard_websocket_connections") == 0
    assert requests(samples, "/ws", "GET", 101) == 1


async def test_each_server_has_its_own_registry(
    start: StartServer, sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    one = await start(sqlite_url)
    two = await start(f"sqlite:///{tmp_path_factory.mktemp('two') / 'scoreboard.db'}")
    await one.credit("alice", 1)
    assert value(await scrape(one), "scoreboard_updates_committed_total") == 1
    assert value(await scrape(two), "scoreboard_updates_committed_total") == 0


async def test_service_access_needs_a_service_token(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, metrics="service")
    async with server.session.get(server.url + "/metrics") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["error"]["code"] == "unauthorized"
    async with server.session.get(server.url + "/metrics", headers=bearer("not-a-token")) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_token"
    async with server.session.get(server.url + "/metrics", headers=bearer(token("pat"))) as resp:
        assert resp.status == 403
        body = await resp.json()
        assert body["success"] is False
        assert body["error"]["code"] == "forbidden"
    samples = await scrape(server, headers=bearer(server.service_token))
    assert requests(samples, "/metrics", "GET", 401) == 2
    assert requests(samples, "/metrics", "GET", 403) == 1
    assert errors(samples, "forbidden") == 1


async def test_public_access_needs_no_token(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, metrics="public")
    async with server.session.head(server.url + "/metrics") as resp:
        assert resp.status == 200
    assert requests(await scrape(server), "/metrics", "HEAD", 200) == 1


async def test_off_means_no_route(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, metrics="off")
    status, body = await server.get("/metrics", headers=bearer(server.service_token))
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_scrapes_during_a_burst_stay_consistent(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    n = 40
    results = await asyncio.gather(
        *(server.credit(f"u{i % 7}", 1) for i in range(n)), *(scrape(server) for _ in range(5))
    )
    assert all(isinstance(r, dict) for r in results)
    samples = await scrape(server)
    assert value(samples, "scoreboard_updates_committed_total") == n
    assert value(samples, "scoreboard_batch_size_sum") == n
    assert requests(samples, *UPDATE) == n
