"""Device, dtype and optimisation decisions on this CPU-only machine."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import DiffusionPipeline

from diffusers_runtime.loading import load_pipeline, saved_dtype
from diffusers_runtime.settings import RuntimeSettings


def settings(model: str, **values) -> RuntimeSettings:
    return RuntimeSettings(model_id=model, **values)


def test_auto_is_float32_on_cpu_and_each_decision_is_logged(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="diffusers_runtime"):
        loaded = load_pipeline(settings(tiny_model))
    assert loaded.device == "cpu"
    assert loaded.dtype == torch.float32
    assert loaded.pipe.unet.dtype == torch.float32
    decisions = [r.getMessage() for r in caplog.records if "startup decision" in r.getMessage()]
    assert any("dtype float32" in d for d in decisions)
    assert any("cpu offload off" in d for d in decisions)
    assert len(decisions) == len(loaded.decisions)


@pytest.mark.parametrize(
    ("name", "dtype"), [("bfloat16", torch.bfloat16), ("float16", torch.float16)]
)
def test_named_half_dtypes_load_and_run_on_cpu(tiny_model, name, dtype):
    loaded = load_pipeline(settings(tiny_model, dtype=name))
    assert loaded.pipe.unet.dtype == dtype
    image = loaded.pipe("x", width=64, height=64, num_inference_steps=2).images[0]
    assert image.size == (64, 64)


def test_native_reads_the_dtype_the_weights_were_saved_in(tiny_model, tmp_path):
    DiffusionPipeline.from_pretrained(tiny_model, dtype=torch.float16).save_pretrained(tmp_path)
    assert saved_dtype(tmp_path) == torch.float16
    loaded = load_pipeline(settings(str(tmp_path), dtype="native"))
    assert loaded.dtype == torch.float16
    assert loaded.pipe.unet.dtype == torch.float16
    assert any("saved dtype" in d for d in loaded.decisions)
    assert load_pipeline(settings(tiny_model, dtype="native")).dtype == torch.float32


@pytest.mark.parametrize("mode", ["true", "model", "sequential"])
def test_offload_is_skipped_without_an_accelerator_and_serving_still_works(tiny_model, mode):
    loaded = load_pipeline(settings(tiny_model, enable_cpu_offload=mode))
    assert any(f"cpu offload {mode} skipped" in d and "accelerator" in d for d in loaded.decisions)
    image = loaded.pipe("x", width=64, height=64, num_inference_steps=2).images[0]
    assert image.size == (64, 64)


def test_slicing_is_applied_to_the_pipeline_and_its_vae(tiny_model):
    loaded = load_pipeline(
        settings(tiny_model, enable_attention_slicing=True, enable_vae_slicing=True)
    )
    assert "attention slicing applied" in loaded.decisions
    assert "vae slicing applied" in loaded.decisions
    assert loaded.pipe.vae.use_slicing is True
