"""Logs: one line per request and per turn, tagged with a request id; plain text or JSON.

- The service's middleware (`web.middleware`) writes one line per request when the response
  is complete (method, route template, status, duration), tagged with the request id; a turn
  writes one when it ends (`turns`). Nothing else logs at INFO per request: the model SDK's
  HTTP client is set to WARNING.
- The request id lives in a context variable, so the turn task started by a request (which
  copies the context) logs with the same id.
- With LOG_FORMAT=json each line is one JSON object holding the record's `extra={...}`
  fields. Lines never carry message contents, API keys or cookies: only what is passed
  explicitly, and nothing passes those.
"""

from __future__ import annotations

import contextvars
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra={...}`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
}


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (None outside a request).

    Made by the logging config in each process that applies it, it also turns off what
    every record would otherwise gather and no line here shows: the caller's file and line
    (a walk up the stack per record), the thread's and the multiprocessing process's names
    (the logging HOWTO's "Optimization" section; `pid` stays). A quarter of the cost of a
    line, and the service writes two per turn (the request's and the turn's)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        logging._srcfile = None  # type: ignore[attr-defined]
        logging.logThreads = False
        logging.logMultiprocessing = False

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value...`, the extra fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _extras(record)
        rid = getattr(record, "request_id", None)
        if rid:
            fields = {"request_id": rid, **fields}
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service, also handed to uvicorn so that each
    worker process applies it. uvicorn's own access log is replaced by ours."""
    formatter = "personachat.logs.JsonFormatter" if fmt == "json" else "personachat.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "personachat.logs.RequestIdFilter"}},
        "formatters": {"main": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            # The HTTP client under the model SDK logs every request to the model at INFO: a
            # third line per turn, which the turn's own line already accounts for.
            "httpx2": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
        },
    }
