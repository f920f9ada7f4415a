"""The 16-channel model the export ships computes what the 8-channel trained one does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scene_model import channels, components, training


@pytest.fixture(scope="module")
def narrow_and_wide():
    torch.manual_seed(0)
    vae = components.autoencoder().eval()
    vae.register_to_config(shift_factor=0.3, scaling_factor=1.7)  # the widening must keep both
    narrow = training.fresh_pipeline(vae)
    with torch.no_grad():  # zero-initialised layers would make any two models agree
        for parameter in narrow.transformer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    narrow.set_progress_bar_config(disable=True)
    wide = training.fresh_pipeline(vae)
    wide.transformer.load_state_dict(narrow.transformer.state_dict())
    for name in ("text_encoder", "text_encoder_2"):
        getattr(wide, name).load_state_dict(getattr(narrow, name).state_dict())
    channels.widen(wide)
    wide.set_progress_bar_config(disable=True)
    return narrow, wide


def test_the_shipped_folder_has_sixteen_channels(default_pipeline):
    assert default_pipeline.vae.config.latent_channels == 16
    assert default_pipeline.transformer.config.in_channels == 16
    assert default_pipeline.transformer.config.out_channels == 16


def test_a_wide_generation_equals_the_narrow_one_from_the_same_noise(narrow_and_wide):
    narrow, wide = narrow_and_wide
    noise, difference = torch.randn(
        2, 1, components.LATENT_CHANNELS, 8, 8, generator=torch.Generator().manual_seed(1)
    )
    # Any split whose sum / sqrt(2) is the narrow noise: the copies' difference is invisible.
    split = torch.cat([noise / math.sqrt(2) + difference, noise / math.sqrt(2) - difference], 1)
    settings = {"height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 3.0}
    prompt = ["a small red circle on a blue background"]
    expected = narrow(prompt, latents=noise, output_type="np", **settings).images
    found = wide(prompt, latents=split, output_type="np", **settings).images
    np.testing.assert_allclose(found, expected, atol=1e-4)


def test_a_wide_round_trip_equals_the_narrow_one(narrow_and_wide):
    narrow, wide = narrow_and_wide
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        narrow_latent = narrow.vae.encode(image).latent_dist
        wide_latent = wide.vae.encode(image).latent_dist
        twice = torch.cat([narrow_latent.mean] * 2, 1)
        torch.testing.assert_close(wide_latent.mean, twice / math.sqrt(2))
        # Each copy holds half the variance, so the copies' sum / sqrt(2) has all of it.
        torch.testing.assert_close(wide_latent.var * 2, torch.cat([narrow_latent.var] * 2, 1))

        def normalised(vae, latent: torch.Tensor) -> torch.Tensor:
            return (latent - vae.config.shift_factor) * vae.config.scaling_factor

        torch.testing.assert_close(
            normalised(wide.vae, wide_latent.mean),
            normalised(narrow.vae, twice) / math.sqrt(2),
        )
        torch.testing.assert_close(
            wide.vae.decode(wide_latent.mean).sample,
            narrow.vae.decode(narrow_latent.mean).sample,
            atol=1e-5,
            rtol=1e-4,
        )


def test_narrowing_gives_back_the_trained_eight_channels(narrow_and_wide):
    narrow, wide = narrow_and_wide
    pairs = (
        (channels.narrow_transformer(wide.transformer), narrow.transformer),
        (channels.narrow_autoencoder(wide.vae), narrow.vae),
    )
    for back, trained in pairs:
        assert back.config == trained.config
        expected = trained.state_dict()
        for key, value in back.state_dict().items():
            assert torch.allclose(value, expected[key], atol=1e-6), key
