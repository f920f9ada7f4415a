"""MCP server processes for the tests, next to the session's real runtime."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, free_port, run_server


@contextlib.contextmanager
def start_mcp_server(log_dir: Path, **env: str) -> Iterator[ServerProcess]:
    """`python -m mcp_server` on a free loopback port; ENV adds settings."""
    port = free_port()
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "IMAGE_STORE": "local",
        "IMAGE_STORE_DIR": str(log_dir / f"store-{port}"),
        "MCP_AUTH_TOKEN": "",
        "PUBLIC_URL": "",
        "LOG_LEVEL": "INFO",
        **env,
    }
    with run_server(
        ["-m", "mcp_server"],
        port=port,
        ready_path="/health",
        env=settings,
        log_path=log_dir / f"mcp-server-{port}.log",
        timeout=60,
    ) as server:
        yield server


@pytest.fixture(scope="session")
def mcp_server(
    runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One MCP server for the session, in front of the session runtime."""
    with start_mcp_server(
        tmp_path_factory.mktemp("mcp-server"), DIFFUSERS_RUNTIME_URL=runtime.url
    ) as server:
        yield server
