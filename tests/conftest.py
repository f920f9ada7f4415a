"""Fixtures shared by every test package: the real runtime on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServerProcess, start_runtime, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return str(tiny_model_dir())


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One runtime process for the whole session, serving the tiny model as `model`."""
    with start_runtime(tmp_path_factory.mktemp("runtime")) as server:
        yield server
