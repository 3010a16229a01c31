"""Bad input over real HTTP: precise JSON errors, nothing lost or corrupted."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import ServerHandle, bearer, service_update


async def raw_post(
    server: ServerHandle, data: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    headers = {**bearer(server.service_token), "Content-Type": content_type}
    async with server.session.post(server.url + "/scores/update", data=data, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"[1, 2]", 422, "validation_failed"),
        (b'{"userId": "u", "scoreDelta": 1, "actionId": "a", "extra": true}', 422, "validation_failed"),
        (b'{"userId": "u", "scoreDelta": 1.0, "actionId": "a"}', 422, "validation_failed"),
        (b'{"userId": "u", "scoreDelta": true, "actionId": "a"}', 422, "validation_failed"),
        (b'{"userId": "u", "scoreDelta": 1e2, "actionId": "a"}', 422, "validation_failed"),
        (
            b'{"userId": "u", "scoreDelta": 99999999999999999999999, "actionId": "a"}',
            422,
            "validation_failed",
        ),
        (b'{"userId": null, "scoreDelta": 1, "actionId": "a"}', 422, "validation_failed"),
    ],
)
async def test_malformed_bodies(server: ServerHandle, data: bytes, status: int, code: str) -> None:
    got_status, body = await raw_post(server, data)
    assert (got_status, body["success"], body["error"]["code"]) == (status, False, code)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert await server.top() == []


async def test_validation_error_names_the_field(server: ServerHandle) -> None:
    status, body = await server.post("/scores/update", service_update("u" * 129, 1), server.service_token)
    assert status == 422
    assert body["error"] == {
        "code": "validation_failed",
        "message": "'userId' must be 1 to 128 characters long.",
        "field": "userId",
    }


async def test_body_over_16_kib_is_413(server: ServerHandle) -> None:
    big = b'{"userId": "u", "scoreDelta": 1, "actionId": "a", "pad": "' + b"x" * 17_000 + b'"}'
    status, body = await raw_post(server, big)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


async def test_chunked_body_over_the_limit_is_413(server: ServerHandle) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b" " * 1024

    headers = {**bearer(server.service_token), "Content-Type": "application/json"}
    async with server.session.post(server.url + "/scores/update", data=chunks(), headers=headers) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_wrong_content_type_is_415(server: ServerHandle) -> None:
    status, body = await raw_post(server, b'{"userId":"u","scoreDelta":1,"actionId":"a"}', "text/plain")
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")


async def test_unknown_route_and_method_are_json(server: ServerHandle) -> None:
    status, body = await server.get("/nope")
    assert (status, body["error"]["code"]) == (404, "not_found")
    async with server.session.delete(server.url + "/scores") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_request_id_is_echoed_or_generated(server: ServerHandle) -> None:
    async with server.session.get(server.url + "/scores", headers={"X-Request-ID": "abc-123"}) as resp:
        assert resp.headers["X-Request-ID"] == "abc-123"
    async with server.session.get(
        server.url + "/scores", headers={"X-Request-ID": "bad id with spaces and {braces}"}
    ) as resp:
        assert resp.headers["X-Request-ID"] != "bad id with spaces and {braces}"
        assert len(resp.headers["X-Request-ID"]) == 16


async def test_bad_requests_do_not_disturb_acknowledged_data(server: ServerHandle) -> None:
    await server.credit("keeper", 10, "k-1")
    for data in (b"{", b'{"userId": "keeper", "scoreDelta": -10, "actionId": "k-2"}', b"[]"):
        await raw_post(server, data)
    await server.post("/scores/update", service_update("keeper", 99, "k-1"), server.service_token)
    assert await server.top() == [{"rank": 1, "userId": "keeper", "username": "keeper", "score": 10}]
