"""Structured logs: one JSON object a line, with the request id."""

from __future__ import annotations

import io
import json
import logging

from scoreboard.logs import configure, request_id


def test_json_lines_carry_request_id_fields_and_exceptions() -> None:
    stream = io.StringIO()
    configure("debug", stream)
    log = logging.getLogger("scoreboard.test")
    token = request_id.set("req-42")
    try:
        log.info("thing_happened", extra={"fields": {"user_id": "u", "delta": 3}})
    finally:
        request_id.reset(token)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("it_failed")
    log.info("batch", extra={"events": [{"request_id": "r1", "n": 1}, {"request_id": "r2", "n": 2}]})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    first, second, third, fourth = (json.loads(line) for line in lines)
    # A batch of events is one line per item, each with the common members.
    assert (third["event"], third["request_id"], third["n"]) == ("batch", "r1", 1)
    assert (fourth["event"], fourth["request_id"], fourth["n"]) == ("batch", "r2", 2)
    assert third["ts"] == fourth["ts"]
    assert first["event"] == "thing_happened"
    assert (first["request_id"], first["user_id"], first["delta"], first["level"]) == (
        "req-42",
        "u",
        3,
        "info",
    )
    assert first["ts"].endswith("Z")
    assert second["event"] == "it_failed"
    assert "request_id" not in second
    assert "ValueError: boom" in second["exception"]
    logging.getLogger().handlers.clear()
