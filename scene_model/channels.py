"""Ship the 8 trained latent channels as the 16 that diffusers' SD3 inpainting requires.

`StableDiffusion3InpaintPipeline` runs only a transformer with 16 input channels (it blends the
source's latents outside the mask at every step) or 33 (a dedicated inpainting model). Our
latents carry 8 channels of picture, and a 16-channel model trained from scratch drew worse
(docs/default-model.md: the 16-channel retrain). So the shipped model carries each trained
channel twice:

- the encoder writes z / sqrt(2) into both copies, and the decoder reads their sum / sqrt(2);
- the transformer's patch embedding reads the copies' sum / sqrt(2), and its output gives each
  copy the trained velocity / sqrt(2).

With independent unit noise in each copy, the sum / sqrt(2) is again unit noise, so every
noisy latent the transformer sees is one the 8-channel model was trained on, and the Euler
steps move the sum exactly as they moved the 8-channel latents. The difference of the copies
is invisible to both the transformer and the decoder. The widened model computes what the
trained one does, at the cost of a few extra weights in four layers.
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel

COPIES = 2
SHARE = 1 / math.sqrt(COPIES)


def widen_autoencoder(vae: AutoencoderKL) -> AutoencoderKL:
    channels = vae.config.latent_channels
    wide = AutoencoderKL.from_config(
        {
            **vae.config,
            "latent_channels": channels * COPIES,
            # Raw latents are divided by sqrt(2), so their mean is too; their scale is not
            # touched: a copy's spread is the 8-channel spread / sqrt(2), as the noise's share.
            "shift_factor": vae.config.shift_factor * SHARE,
        }
    )
    state = vae.state_dict()
    mean_w, logvar_w = state["encoder.conv_out.weight"].split(channels)
    mean_b, logvar_b = state["encoder.conv_out.bias"].split(channels)
    state["encoder.conv_out.weight"] = torch.cat([mean_w * SHARE] * COPIES + [logvar_w] * COPIES)
    # A copy's variance is the latent's over COPIES.
    state["encoder.conv_out.bias"] = torch.cat(
        [mean_b * SHARE] * COPIES + [logvar_b - math.log(COPIES)] * COPIES
    )
    state["decoder.conv_in.weight"] = torch.cat(
        [state["decoder.conv_in.weight"] * SHARE] * COPIES, dim=1
    )
    wide.load_state_dict(state)
    return wide.eval().requires_grad_(False)


def widen_transformer(transformer: SD3Transformer2DModel) -> SD3Transformer2DModel:
    channels = transformer.config.in_channels
    patch = transformer.config.patch_size
    wide = SD3Transformer2DModel.from_config(
        {
            **transformer.config,
            "in_channels": channels * COPIES,
            "out_channels": transformer.config.out_channels * COPIES,
        }
    )
    state = transformer.state_dict()
    state["pos_embed.proj.weight"] = torch.cat(
        [state["pos_embed.proj.weight"] * SHARE] * COPIES, dim=1
    )
    # proj_out's rows are (patch row, patch column, channel), channel fastest.
    for name in ("proj_out.weight", "proj_out.bias"):
        rows = state[name].reshape(patch * patch, channels, *state[name].shape[1:])
        state[name] = torch.cat([rows * SHARE] * COPIES, dim=1).flatten(0, 1)
    wide.load_state_dict(state)
    return wide.eval().requires_grad_(False)


def widen(pipe) -> None:
    """Replace the pipeline's autoencoder and transformer with their 16-channel equivalents."""
    pipe.register_modules(
        vae=widen_autoencoder(pipe.vae), transformer=widen_transformer(pipe.transformer)
    )


def narrow_autoencoder(vae: AutoencoderKL) -> AutoencoderKL:
    """The 8-channel autoencoder a widened one was made from (up to float rounding)."""
    channels = vae.config.latent_channels // COPIES
    narrow = AutoencoderKL.from_config(
        {**vae.config, "latent_channels": channels, "shift_factor": vae.config.shift_factor / SHARE}
    )
    state = vae.state_dict()
    weight, bias = state["encoder.conv_out.weight"], state["encoder.conv_out.bias"]
    wide = COPIES * channels
    state["encoder.conv_out.weight"] = torch.cat(
        [weight[:channels] / SHARE, weight[wide:][:channels]]
    )
    state["encoder.conv_out.bias"] = torch.cat(
        [bias[:channels] / SHARE, bias[wide:][:channels] + math.log(COPIES)]
    )
    state["decoder.conv_in.weight"] = state["decoder.conv_in.weight"][:, :channels] / SHARE
    narrow.load_state_dict(state)
    return narrow.eval().requires_grad_(False)


def narrow_transformer(transformer: SD3Transformer2DModel) -> SD3Transformer2DModel:
    """The 8-channel transformer a widened one was made from (up to float rounding)."""
    channels = transformer.config.in_channels // COPIES
    patch = transformer.config.patch_size
    narrow = SD3Transformer2DModel.from_config(
        {
            **transformer.config,
            "in_channels": channels,
            "out_channels": transformer.config.out_channels // COPIES,
        }
    )
    state = transformer.state_dict()
    state["pos_embed.proj.weight"] = state["pos_embed.proj.weight"][:, :channels] / SHARE
    for name in ("proj_out.weight", "proj_out.bias"):
        rows = state[name].reshape(patch * patch, COPIES * channels, *state[name].shape[1:])
        state[name] = (rows[:, :channels] / SHARE).flatten(0, 1)
    narrow.load_state_dict(state)
    return narrow.eval().requires_grad_(False)
