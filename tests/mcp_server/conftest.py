"""MCP server processes for the tests, next to the session's real runtime."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from scripts.servers import REPO, ServerProcess, free_port, start_mcp_server, start_runtime


@pytest.fixture(scope="session")
def mcp_server(
    runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One MCP server for the session, in front of the session runtime."""
    with start_mcp_server(
        tmp_path_factory.mktemp("mcp-server"), DIFFUSERS_RUNTIME_URL=runtime.url
    ) as server:
        yield server


@pytest.fixture(scope="session")
def default_mcp_server(
    default_runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """An MCP server in front of the runtime serving the default model: where the picture
    matters (the playground, the MCP App)."""
    with start_mcp_server(
        tmp_path_factory.mktemp("default-mcp-server"), DIFFUSERS_RUNTIME_URL=default_runtime.url
    ) as server:
        yield server


@dataclass
class LateRuntime:
    """A runtime that came up while the readiness gate waited for it, then stopped."""

    url: str
    gate_returncode: int
    gate_output: str
    gate_seconds: float


def gate_command(**env: str) -> tuple[list[str], dict[str, str]]:
    return (
        [sys.executable, "-m", "mcp_server.wait_for_runtime"],
        {**os.environ, "DIFFUSERS_RUNTIMES": "", "DIFFUSERS_MODEL_ID": "model", **env},
    )


@pytest.fixture(scope="session")
def late_runtime(tmp_path_factory: pytest.TempPathFactory) -> LateRuntime:
    """Start the gate first, the runtime second, on a port chosen up front. Once stopped, the
    runtime's port refuses connections: a stopped runtime for the failure tests."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args, env = gate_command(DIFFUSERS_RUNTIME_URL=url, WAIT_TIMEOUT_SECONDS="120")
    started = time.monotonic()
    gate = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with start_runtime(tmp_path_factory.mktemp("late-runtime"), port=port):
            output, _ = gate.communicate(timeout=60)
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()
    return LateRuntime(url, gate.returncode, output, time.monotonic() - started)
