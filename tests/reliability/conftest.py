"""Processes shared by the reliability tests: a runtime with small limits (every request the
fuzzers and the load test can make is cheap), and the MCP server the hostile tests attack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts.servers import ServerProcess, start_mcp_server, start_runtime
from tests.reliability.hostile import TOKEN

# Small limits: any request that passes validation costs at most 128x128 pixels x 4 steps.
SMALL_RUNTIME = {
    "MAX_PIXELS": str(128 * 128),
    "MAX_STEPS": "4",
    "DEFAULT_STEPS": "2",
    "MAX_IMAGES_PER_REQUEST": "2",
}


@pytest.fixture(scope="package")
def small_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_runtime(tmp_path_factory.mktemp("small-runtime"), **SMALL_RUNTIME) as server:
        yield server


@pytest.fixture(scope="module")
def hostile_server(
    small_runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The MCP server the hostile-input tests attack (one per module): a token, quiet logs."""
    with start_mcp_server(
        tmp_path_factory.mktemp("hostile"),
        DIFFUSERS_RUNTIME_URL=small_runtime.url,
        MCP_AUTH_TOKEN=TOKEN,
        LOG_LEVEL="WARNING",
    ) as server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The hostile inputs tried, by class: the figures docs/reliability.md reports."""
    from tests.reliability.hostile import TRIED

    if TRIED:
        terminalreporter.section("hostile inputs tried (all answered without a server error)")
        for kind, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{count:6d}  {kind}")
        terminalreporter.write_line(f"{sum(TRIED.values()):6d}  in all")
