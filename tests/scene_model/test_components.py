"""The model's parts: the silent T5 shortcut is exact, and the shipped folder is what we say."""

from __future__ import annotations

import json

import torch

from scene_model import components, training
from scripts.servers import REPO

MODEL = REPO / "models" / "default"


def test_one_weighted_silent_token_equals_the_pipelines_256():
    torch.manual_seed(0)
    pipe = training.fresh_pipeline(components.autoencoder())
    captions = ["a small red circle in the top left corner on a blue background", ""]
    with torch.no_grad():
        for parameter in pipe.transformer.parameters():  # zero-initialised layers say nothing
            parameter.add_(torch.randn_like(parameter) * 0.02)
        full, _, pooled_full, _ = pipe.encode_prompt(
            captions, captions, captions, do_classifier_free_guidance=False
        )
        context, pooled = training.encode_captions(pipe, captions)
        assert full.shape[1] == components.CLIP_MAX_TOKENS + components.T5_TOKENS
        assert torch.equal(pooled, pooled_full)
        latents, timesteps = (
            torch.randn(2, components.LATENT_CHANNELS, 16, 16),
            torch.tensor([300.0, 800.0]),
        )
        expected = pipe.transformer(latents, full, pooled_full, timesteps).sample
        pipe.transformer.set_attn_processor(training.SilentT5Attention(components.T5_TOKENS))
        shortcut = pipe.transformer(latents, context, pooled, timesteps).sample
    torch.testing.assert_close(shortcut, expected, atol=1e-5, rtol=1e-4)


def test_the_shipped_model_is_a_plain_sd3_folder_of_safetensors_under_20_mb():
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    files = [f for f in MODEL.rglob("*") if f.is_file()]
    weights = [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".safetensors")]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    # The pipeline under 20 MB; its LoRA adapters (loras/, tests/scene_model/test_adapters.py)
    # a few hundred KB each beside it.
    pipeline = [f for f in files if (MODEL / "loras") not in f.parents]
    assert sum(f.stat().st_size for f in pipeline) <= 20_000_000


def test_the_shipped_t5_is_silent_and_its_tokenizer_loads(default_pipeline):
    tokens = default_pipeline.tokenizer_3(["a red circle"], return_tensors="pt").input_ids
    assert tokens.shape[1] == 4  # three words and the end token
    with torch.no_grad():
        assert not default_pipeline.text_encoder_3(tokens)[0].any()


def test_the_shipped_tokenizers_know_the_scene_words(default_pipeline):
    for tokenizer in (default_pipeline.tokenizer, default_pipeline.tokenizer_2):
        ids = tokenizer("a small yellow star in the top left corner").input_ids
        assert len(ids) == 11  # nine words, start and end
        assert tokenizer.unk_token_id not in ids


def test_the_shipped_scheduler_is_the_one_the_export_writes(default_pipeline):
    def settings(scheduler) -> dict:
        return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}

    assert type(default_pipeline.scheduler) is type(components.scheduler())
    assert settings(default_pipeline.scheduler) == settings(components.scheduler())
