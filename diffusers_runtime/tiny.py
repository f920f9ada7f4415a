"""Build the tiny offline Stable-Diffusion-style pipeline used for development and tests.

`python -m diffusers_runtime.tiny OUT_DIR` writes a random-weight pipeline with the same
component layout as a real SD 1.x checkpoint, so it loads through the very same
`from_pretrained` path. No network: the tokenizer vocabulary is made here from bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SEED = 0
# Common English letter pairs: enough merges for the tokenizer to behave like a real BPE one.
_MERGES = ["t h", "h e", "a n", "i n", "e r", "o n", "r e", "a t", "e n", "o r", "th e</w>"]


def _byte_symbols() -> list[str]:
    # CLIP's byte-level BPE maps every byte to a printable unicode character (GPT-2's table).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def build_tokenizer() -> CLIPTokenizer:
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    for merge in _MERGES:
        left, right = merge.split(" ")
        tokens.append(left + right)
        if not right.endswith("</w>"):
            tokens.append(left + right + "</w>")
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    merges = [tuple(m.split(" ")) for m in _MERGES]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=32,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
        attention_head_dim=8,
    )
    # Four blocks = three down-samplings = the VAE scale factor of 8 that real SD models have.
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    # Real SD 1.x scheduler configs say it: DDIM swapped in from this config would otherwise
    # default to clipping, which the pipeline undoes with a FutureWarning on every such request.
    scheduler.register_to_config(clip_sample=False)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the pipeline to")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    build_pipeline().save_pretrained(args.out_dir, safe_serialization=True)
    size = sum(f.stat().st_size for f in args.out_dir.rglob("*") if f.is_file())
    print(
        f"tiny pipeline written to {args.out_dir} ({size / 1e6:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
