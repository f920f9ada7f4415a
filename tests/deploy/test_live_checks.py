"""`make test-connectivity ENV=local` and `make test-integration ENV=local` against a real
local stack (the session's tiny-model runtime and an MCP server in front of it), and the
connectivity check in the form the cluster runs it: piped into `python -` with the pod's
environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from scripts.servers import REPO, ServerProcess, free_port, start_mcp_server


@pytest.fixture(scope="module")
def local_mcp_server(runtime: ServerProcess, tmp_path_factory) -> Iterator[ServerProcess]:
    with start_mcp_server(
        tmp_path_factory.mktemp("deploy-mcp"), DIFFUSERS_RUNTIME_URL=runtime.url
    ) as server:
        yield server


def _make(
    target: str, runtime: ServerProcess, server: ServerProcess
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "make", "--no-print-directory", "-C", str(REPO), target, "ENV=local",
            f"PY={sys.executable}",
            f"RUNTIME_PORT={urlsplit(runtime.url).port}",
            f"MCP_PORT={urlsplit(server.url).port}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "MCP_AUTH_TOKEN": ""},
    )  # fmt: skip


def test_make_test_connectivity_local(runtime, local_mcp_server):
    result = _make("test-connectivity", runtime, local_mcp_server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert "ok    runtime model 'model' ready" in result.stdout


def test_make_test_integration_local(runtime, local_mcp_server):
    result = _make("test-integration", runtime, local_mcp_server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    MCP tools/call generate_image: image image/png" in result.stdout
    assert "ok    REST POST /v1/images/generations" in result.stdout


def test_in_pod_connectivity_reads_the_pod_environment(runtime, local_mcp_server):
    script = (REPO / "deploy" / "checks.py").read_text()
    result = subprocess.run(
        [sys.executable, "-", "connectivity"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
        env={
            **os.environ,
            "DIFFUSERS_RUNTIME_URL": runtime.url,
            "DIFFUSERS_MODEL_ID": "model",
            "PORT": str(urlsplit(local_mcp_server.url).port),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok    runtime alive: GET {runtime.url}/v2/health/live -> 200" in result.stdout


def test_connectivity_names_what_fails():
    dead = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "deploy.checks", "connectivity", "--runtime-url", dead,
         "--mcp-url", dead, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAIL  runtime alive: ConnectError" in result.stdout
    assert "4 check(s) failed" in result.stdout
