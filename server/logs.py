"""Structured logs: one JSON object a line, carrying the request id.

Call sites log an event name as the message and put data in
`extra={"fields": {...}}`; the formatter adds time, level, logger and the
current request id (a context variable set by the HTTP middleware).

High-volume events come in batches: a record with `extra={"events": [...]}`
is written as one line per item (each item's members plus the common ones),
in a single write. The writer logs each committed batch's credits this way,
which costs a fraction of one record per credit.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any, TextIO

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else passed in `extra` is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for `record` (one per item for a batch of events)."""
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            doc["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in {"fields", "request_id", "events"}:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        items = getattr(record, "events", None)
        if isinstance(items, list):
            return "\n".join(orjson.dumps(doc | item, default=str).decode() for item in items)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send all `scoreboard` and `aiohttp` logs to `stream` as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Records are never read for these; skip collecting them on every call.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's access log is replaced by our own request log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
