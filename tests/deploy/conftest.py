"""Rendered overlays, shared by the deployment tests (each tree is rendered once)."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import MCP_ENVS, RUNTIMES, mcp_dir, render, runtime_dir


@pytest.fixture(params=list(MCP_ENVS))
def env(request) -> str:
    return request.param


@pytest.fixture
def mcp_docs(env) -> list[dict]:
    return render(mcp_dir(env))


@pytest.fixture
def runtime_docs(env) -> list[dict]:
    """The runtime overlay that the MCP overlay of this env points at."""
    return render(runtime_dir(MCP_ENVS[env]))


@pytest.fixture(params=RUNTIMES)
def model_docs(request) -> list[dict]:
    return render(runtime_dir(request.param))
