"""The MCP server's logging: wire.logs' schema, with uvicorn and httpx kept to what matters.

`LOG_FORMAT=text` (the default, what `make run` shows) leaves out the per-request access lines
of successful requests: the runtime's own line already says what was generated. `json` (the
container image's default) keeps everything, each line carrying the request id.
"""

from __future__ import annotations

import logging

from wire.logs import configure_root

# The middleware's one line per request (method, path, status, time).
ACCESS_LOGGER = "mcp_server.access"


def configure(level: str, log_format: str = "json") -> None:
    """Everything to stderr (wire.logs' one schema), uvicorn's loggers included."""
    configure_root(level, log_format)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Per-request access lines come from our own middleware, with the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if log_format == "text" and logging.getLevelName(level) > logging.DEBUG:
        # Failed requests are logged as warnings and still show.
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
