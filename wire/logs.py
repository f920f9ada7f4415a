"""One log schema for both deployables, and the request id that ties their lines together.

JSON lines (pods): time, level, logger, message, request_id (null outside a request), and
every `extra=` field of the call. Text lines (a terminal): time, level, message. The request id
comes from the caller's `X-Request-ID` (cleaned: it travels on to logs and to the runtime's
headers) or is minted, is set for everything the request does, and goes back in the
response's `X-Request-ID`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

UNSAFE_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9._:/+=-]")
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id_from(offered: str | None) -> str:
    """The caller's id, kept short and plain, or a new one."""
    return UNSAFE_ID_CHARACTERS.sub("", offered or "")[:64] or new_request_id()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")


def configure_root(level: str, log_format: str) -> None:
    """Every logger through one handler on stderr (over stdio, stdout belongs to MCP)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RequestIdMiddleware:
    """Sets the request id for an HTTP request and returns it in `X-Request-ID`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope.get("headers", ())).get(b"x-request-id", b"").decode("latin-1")
        current = request_id_from(offered)
        token = request_id.set(current)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", current.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
