"""Fixtures shared by every test package: the real runtime, on either model.

`runtime` serves the random-weight tiny model (`diffusers_runtime.tiny`): every test that needs
a working pipeline but not a meaningful picture uses it, because it is about ten times faster.
`default_runtime` serves the shipped, trained `models/default`: the tests that check what is in
the picture (tests/runtime/test_pictures.py, the first picture of `make run`) use it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts.servers import DEFAULT_MODEL, ServerProcess, start_runtime, tiny_model_dir
from tests.schema_checks import SMALL_LIMITS


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return str(tiny_model_dir())


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One runtime process for the whole session, serving the tiny model as `model`."""
    with start_runtime(tmp_path_factory.mktemp("runtime")) as server:
        yield server


@pytest.fixture(scope="session")
def default_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One runtime process for the whole session, serving the shipped default model."""
    # Its serving.json gives its defaults (guidance 4, 20 steps, 128x128), as `make run` has.
    with start_runtime(
        tmp_path_factory.mktemp("default-runtime"), MODEL_ID=str(DEFAULT_MODEL)
    ) as server:
        yield server


@pytest.fixture(scope="session")
def small_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny model with small limits (64x64, 2 steps, 2 images), which its document
    publishes: the schemathesis runs, here and through the MCP server, stay cheap."""
    with start_runtime(tmp_path_factory.mktemp("small-runtime"), **SMALL_LIMITS) as server:
        yield server
