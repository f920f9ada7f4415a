"""Training stops and resumes at any checkpoint exactly as if it had never stopped, and never
resumes another recipe's; the decay weights the latents where the shape lies."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from scene_model import scenes, training

TINY = training.Plan(
    autoencoder=training.Reconstruction("autoencoder", 4, 2, 32, 1e-3),
    decoder=training.Reconstruction("decoder", 2, 2, 32, 1e-3),
    pools=((32, 8, 4),),
    pool_weights=(1.0,),
    denoiser_steps=4,
    denoiser_decay=2,
    warmup=2,
    statistics_pictures=8,
    checkpoint_every=2,
)


class Stopped(Exception):
    pass


def _weights(work: Path) -> dict[str, torch.Tensor]:
    found = {}
    for name in ("autoencoder", "decoder", "denoiser"):
        state = torch.load(work / f"{name}.pt", weights_only=False)
        models = state["model"] if name != "denoiser" else state["model"]["transformer"]
        found.update({f"{name}.{k}": v for k, v in models.items()})
    return found


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    training.train(straight, TINY)

    save = training._save
    saves = {"left": 0}

    def save_then_stop(path: Path, state: dict) -> None:
        save(path, state)
        saves["left"] -= 1
        if saves["left"] == 0:
            raise Stopped(path.name)

    monkeypatch.setattr(training, "_save", save_then_stop)
    resumed = tmp_path / "resumed"
    # Stop after the autoencoder's first checkpoint, then in the middle of the denoiser.
    for stop_after in (1, 3):
        saves["left"] = stop_after
        with pytest.raises(Stopped):
            training.train(resumed, TINY)
    saves["left"] = -1
    training.train(resumed, TINY)

    expected, found = _weights(straight), _weights(resumed)
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        assert torch.equal(value, found[key]), key


def test_a_longer_plan_continues_only_from_where_the_decay_began(tmp_path):
    longer = dataclasses.replace(TINY, denoiser_steps=6)
    straight = tmp_path / "straight"
    training.train(straight, longer)

    extended = tmp_path / "extended"
    training.train(extended, TINY)
    # Its rate already fell over steps 2-4: continuing would not be the longer plan's run.
    with pytest.raises(ValueError, match=r"denoiser-2\.pt"):
        training.train(extended, longer)
    shutil.copy(extended / "denoiser-2.pt", extended / "denoiser.pt")
    training.train(extended, longer)

    expected, found = _weights(straight), _weights(extended)
    for key, value in expected.items():
        assert torch.equal(value, found[key]), key


def test_the_shape_mask_covers_the_shapes_latents_and_one_pixel_around_them():
    # A small square in the centre of 128 px spans pixels 49-79: latents 6-9 of 16, 8 px each.
    square = scenes.Scene("square", "red", "blue", "center", "small")
    mask = training.shape_masks([square], 128)[0, 0]
    expected = torch.zeros(16, 16)
    expected[5:11, 5:11] = 1
    assert torch.equal(mask, expected)
    # At 64 px the same square covers 2x2 of 8x8 latents; with its rim, 4x4.
    assert training.shape_masks([square], 64)[0, 0].sum() == 16


def test_a_changed_reconstruction_recipe_refuses_the_old_checkpoint(tmp_path):
    training.train(tmp_path, TINY)
    weighted = training.Reconstruction("autoencoder", 4, 2, 32, 1e-3, shape_weight=1.0)
    with pytest.raises(ValueError, match=r"autoencoder\.pt was trained by .*shape_weight': 0\.0"):
        training.train(tmp_path, dataclasses.replace(TINY, autoencoder=weighted))
