from __future__ import annotations

import pytest

from scripts.servers import REPO


@pytest.fixture(scope="session")
def default_pipeline():
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(REPO / "models" / "default")
    pipe.set_progress_bar_config(disable=True)
    return pipe
