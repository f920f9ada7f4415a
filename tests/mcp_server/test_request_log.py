"""The access log tells a client's own doing from a server error: a client that leaves before
any answer (a timeout, a cancel) is 499 at INFO, not 500 at WARNING."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mcp_server.app import RequestMiddleware
from mcp_server.logs import ACCESS_LOGGER


async def _waits_for_the_client(scope, receive, send):
    while (await receive())["type"] != "http.disconnect":
        pass


async def _fails(scope, receive, send):
    raise RuntimeError("a bug")


def _call(app, messages):
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [], "client": None}
    asyncio.run(RequestMiddleware(app, token=None)(scope, receive, send))
    return sent


def test_a_client_that_leaves_is_logged_at_info_as_499(caplog):
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    sent = _call(_waits_for_the_client, [{"type": "http.request", "body": b"{}"}])
    assert sent == []
    (line,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert line.levelno == logging.INFO and "-> 499" in line.getMessage()
    assert line.exc_info is None


def test_a_server_error_stays_a_500_warning(caplog):
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    with pytest.raises(RuntimeError):
        _call(_fails, [{"type": "http.request", "body": b"{}"}])
    (line,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert line.levelno == logging.WARNING and "-> 500" in line.getMessage()
