"""The engine in-process: batching, per-request cancellation, device errors."""

from __future__ import annotations

import asyncio
import importlib.util

import diffusers
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from diffusers_runtime.engine import Engine
from diffusers_runtime.errors import DeviceOutOfMemory, GenerationFailed, install_handlers
from diffusers_runtime.loading import load_pipeline
from diffusers_runtime.request import Generation, GenerationRequest
from diffusers_runtime.settings import RuntimeSettings


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return load_pipeline(RuntimeSettings(model_id=tiny_model)).pipe


def generation(seed: int, steps: int = 4, side: int = 64, prompt: str = "a boat") -> Generation:
    return Generation(
        request=GenerationRequest(prompt=prompt),
        width=side,
        height=side,
        num_inference_steps=steps,
        guidance_scale=7.0,
        seed=seed,
    )


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


def test_concurrent_compatible_requests_share_one_call_and_keep_their_images(pipe):
    async def scenario():
        alone = Engine(pipe, "m", max_batch_size=1, batch_window_seconds=0)
        batched = Engine(pipe, "m", max_batch_size=4, batch_window_seconds=0.05)
        singles = [await alone.generate(generation(s, prompt=f"p{s}"), "r") for s in (1, 2, 3)]
        together = await asyncio.gather(
            *(batched.generate(generation(s, prompt=f"p{s}"), "r") for s in (1, 2, 3))
        )
        await alone.close()
        await batched.close()
        return singles, together

    singles, together = asyncio.run(scenario())
    assert [r.batch_size for r in singles] == [1, 1, 1]
    assert [r.batch_size for r in together] == [3, 3, 3]
    for single, batch in zip(singles, together, strict=True):
        assert np.abs(pixels(single.images[0]) - pixels(batch.images[0])).max() <= 2
    assert np.abs(pixels(together[0].images[0]) - pixels(together[1].images[0])).max() > 10


def test_a_cancelled_request_leaves_the_batch_and_the_others_finish(pipe):
    async def scenario():
        engine = Engine(pipe, "m", max_batch_size=4, batch_window_seconds=0.05)
        progress: list[int] = []
        keep = asyncio.create_task(
            engine.generate(
                generation(5, steps=20, side=128), "keep", lambda s, t: progress.append(s)
            )
        )
        drop = asyncio.create_task(engine.generate(generation(6, steps=20, side=128), "drop"))
        while len(progress) < 2:
            await asyncio.sleep(0.01)
        drop.cancel()
        result = await keep
        await engine.close()
        return result, progress, drop

    result, progress, drop = asyncio.run(scenario())
    assert drop.cancelled()
    assert result.batch_size == 2 and result.images[0].size == (128, 128)
    assert progress == list(range(1, 21))


def test_a_batch_whose_requests_are_all_cancelled_stops(pipe):
    async def scenario():
        engine = Engine(pipe, "m", max_batch_size=4, batch_window_seconds=0.05)
        seen: list[int] = []
        tasks = [
            asyncio.create_task(
                engine.generate(
                    generation(s, steps=50, side=128), "r", lambda st, t: seen.append(st)
                )
            )
            for s in (1, 2)
        ]
        while len(seen) < 2:
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0.5)
        steps_at_cancel = max(seen)
        quick = await engine.generate(generation(3), "next")
        await engine.close()
        return steps_at_cancel, quick

    steps_at_cancel, quick = asyncio.run(scenario())
    assert steps_at_cancel < 10
    assert quick.batch_size == 1


def generate_with_a_failing_unet(pipe, monkeypatch, failure: Exception) -> None:
    """One generation whose UNet raises FAILURE; the engine's error propagates."""

    def fail(*args, **kwargs):
        raise failure

    engine = Engine(pipe, "m", max_batch_size=1, batch_window_seconds=0)
    monkeypatch.setattr(pipe.unet, "forward", fail)

    async def scenario():
        try:
            await engine.generate(generation(1), "r")
        finally:
            await engine.close()

    asyncio.run(scenario())


def test_out_of_memory_becomes_a_503_that_says_so(pipe, monkeypatch):
    exhausted = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(DeviceOutOfMemory) as error:
        generate_with_a_failing_unet(pipe, monkeypatch, exhausted)
    assert "ran out of memory" in error.value.message and "64x64" in error.value.message

    app = FastAPI()
    install_handlers(app)

    @app.get("/boom")
    async def boom():
        raise error.value

    response = TestClient(app).get("/boom")
    assert response.status_code == 503
    assert "out of memory" in response.json()["error"]


def test_other_pipeline_failures_name_what_failed(pipe, monkeypatch):
    broken = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(GenerationFailed) as error:
        generate_with_a_failing_unet(pipe, monkeypatch, broken)
    assert "StableDiffusionPipeline call failed: RuntimeError: mat1" in error.value.message


def test_a_request_cancelled_during_the_batch_window_leaves_the_engine_serving(pipe):
    async def scenario():
        engine = Engine(pipe, "m", max_batch_size=4, batch_window_seconds=0.3)
        # A batch of two marks the engine as under concurrent load: the next call waits.
        await asyncio.gather(
            engine.generate(generation(1), "a"), engine.generate(generation(2), "b")
        )
        lone = asyncio.create_task(engine.generate(generation(3), "lone"))
        await asyncio.sleep(0.05)
        lone.cancel()
        await asyncio.sleep(0.5)
        after = await asyncio.wait_for(engine.generate(generation(4), "after"), 30)
        await engine.close()
        return lone, after

    lone, after = asyncio.run(scenario())
    assert lone.cancelled()
    assert after.images[0].size == (64, 64)


def test_an_sd3_model_whose_transformer_inpainting_cannot_run_is_not_offered_inpainting(pipe):
    from scene_model import channels, components, training

    sd3 = training.fresh_pipeline(components.autoencoder())  # 8 latent channels
    narrow = Engine(sd3, "m", max_batch_size=1, batch_window_seconds=0)
    assert narrow.edit_modes["image"] is None
    assert narrow.edit_modes["inpaint"] == (
        "StableDiffusion3InpaintPipeline runs a transformer with 16 or 33 input channels and "
        "this model's has 8, so it cannot inpaint; image-to-image (an image without "
        "mask_image) still works"
    )
    channels.widen(sd3)
    assert Engine(sd3, "m", max_batch_size=1, batch_window_seconds=0).edit_modes == {
        "image": None,
        "inpaint": None,
    }
    # The tiny model's UNet (4 channels, latents blended) inpaints.
    assert Engine(pipe, "m", max_batch_size=1, batch_window_seconds=0).edit_modes["inpaint"] is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # KDPM2's numpy chatter
def test_every_scheduler_offered_can_be_built(pipe):
    engine = Engine(pipe, "m", max_batch_size=1, batch_window_seconds=0)
    names = engine.scheduler_names
    asyncio.run(engine.close())
    for name in names:
        getattr(diffusers, name).from_config(pipe.scheduler.config)
    assert "EulerDiscreteScheduler" in names
    # Diffusers lists it, but the tiny model's saved `sigma_min: null` breaks it.
    assert "EDMEulerScheduler" not in names
    if importlib.util.find_spec("scipy") is None:
        # Listed as a placeholder that raises when built.
        assert "LMSDiscreteScheduler" not in names
