"""CORS on the public reads, over real HTTP: a page on another domain can read the board."""

from __future__ import annotations

from tests.conftest import StartServer
from tests.helpers import ServerHandle, service_update

PAGE = "https://game.example"


async def test_public_reads_are_shared_with_any_origin_by_default(server: ServerHandle) -> None:
    await server.credit("alice", 3)
    for path, status in (
        ("/scores", 200),
        ("/api/users/alice", 200),
        ("/api/users/nobody", 404),
        ("/api/boards", 200),
        ("/api/boards/global/scores", 200),
        ("/api/boards/global/users/alice", 200),
        ("/api/boards/nope/scores", 404),
    ):
        async with server.session.get(server.url + path, headers={"Origin": PAGE}) as resp:
            assert resp.status == status
            assert resp.headers["Access-Control-Allow-Origin"] == "*", path
            assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
            assert "Access-Control-Allow-Credentials" not in resp.headers
    for stream in ("/scores/stream", "/api/boards/global/stream"):
        async with server.session.get(server.url + stream, headers={"Origin": PAGE}) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
    preflight = {"Origin": PAGE, "Access-Control-Request-Method": "GET"}
    async with server.session.options(server.url + "/api/boards/global/scores", headers=preflight) as resp:
        assert (resp.status, resp.headers["Access-Control-Allow-Origin"]) == (204, "*")
    # Without an Origin (not a browser) nothing is added; writes are never shared.
    async with server.session.get(server.url + "/scores") as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with server.session.post(
        server.url + "/scores/update",
        json=service_update("bob", 1),
        headers={"Origin": PAGE, "Authorization": f"Bearer {server.service_token}"},
    ) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_preflight_for_the_event_stream(server: ServerHandle) -> None:
    headers = {
        "Origin": PAGE,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Last-Event-ID",
    }
    async with server.session.options(server.url + "/scores/stream", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
        assert resp.headers["Access-Control-Allow-Headers"] == "last-event-id"
        assert int(resp.headers["Access-Control-Max-Age"]) > 0
    for refused in (
        {"Access-Control-Request-Method": "POST"},
        {"Access-Control-Request-Headers": "Authorization"},
    ):
        async with server.session.options(server.url + "/scores", headers={**headers, **refused}) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (403, "forbidden"), refused
    async with server.session.options(server.url + "/scores/update", headers=headers) as resp:
        assert resp.status == 405


async def test_a_list_of_origins(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, cors_origins="https://game.example, https://other.example")
    async with server.session.get(
        server.url + "/scores", headers={"Origin": "https://other.example"}
    ) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "https://other.example"
        assert "Origin" in resp.headers.getall("Vary")
    async with server.session.get(server.url + "/scores", headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    async with server.session.options(server.url + "/scores", headers=preflight) as resp:
        assert resp.status == 403


async def test_cors_can_be_turned_off(start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, cors_origins="")
    async with server.session.get(server.url + "/scores", headers={"Origin": PAGE}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = {"Origin": PAGE, "Access-Control-Request-Method": "GET"}
    async with server.session.options(server.url + "/scores", headers=preflight) as resp:
        assert resp.status == 405
