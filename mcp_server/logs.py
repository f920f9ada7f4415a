"""Logs on stderr: short text lines for a terminal, or JSON lines with the request id.

`LOG_FORMAT=text` (the default, what `make run` shows) leaves out the per-request access lines
of successful requests: the runtime's own line already says what was generated. `json` (the
container image's default) keeps everything, each line carrying the request id.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import sys
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# The middleware's one line per request (method, path, status, time).
ACCESS_LOGGER = "mcp_server.access"

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def new_request_id() -> str:
    return secrets.token_hex(8)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")


def configure(level: str, log_format: str = "json") -> None:
    """Everything to stderr: over stdio, stdout belongs to the MCP protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Per-request access lines come from our own middleware, with the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if log_format == "text" and logging.getLevelName(level) > logging.DEBUG:
        # Failed requests are logged as warnings and still show.
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
