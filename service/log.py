"""Logging set up once; every record carries the request id and model from contextvars.

`request_id`, `model_name` and `model_version` are set by the HTTP middleware and the registry; a
filter copies them onto each record so both the text and the JSON format can print them.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

import orjson

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
model_name: contextvars.ContextVar[str] = contextvars.ContextVar("model_name", default="-")
model_version: contextvars.ContextVar[str] = contextvars.ContextVar("model_version", default="-")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s model=%(model)s] %(message)s"


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        name, version = model_name.get(), model_version.get()
        record.model = name if version == "-" else f"{name}/{version}"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, model, and exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "model": getattr(record, "model", "-"),
        }
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root handler once; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
