"""Processes shared by the reliability tests: a runtime with small limits (every request the
fuzzers and the load test can make is cheap), and helpers to run the MCP server beside it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServerProcess, start_runtime

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The hostile inputs tried, by class: the figures the README's table reports."""
    from tests.reliability.hostile import TRIED

    if TRIED:
        terminalreporter.section("hostile inputs tried (all answered without a server error)")
        for kind, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{count:6d}  {kind}")
        terminalreporter.write_line(f"{sum(TRIED.values()):6d}  in all")
