"""The tiny offline model: deterministic, a few MB, and a real SD-style pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from diffusers import DiffusionPipeline, StableDiffusionPipeline


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_two_builds_are_byte_identical_and_load_like_a_real_model(tmp_path):
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "diffusers_runtime.tiny", str(tmp_path / name)],
            check=True,
            capture_output=True,
        )
    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert first == second
    assert {"model_index.json", "unet/config.json", "vae/config.json"} <= set(first)
    assert sum(len(data) for data in first.values()) < 10_000_000

    pipe = DiffusionPipeline.from_pretrained(tmp_path / "a")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.vae_scale_factor == 8
    ids = pipe.tokenizer("the cat sat").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
