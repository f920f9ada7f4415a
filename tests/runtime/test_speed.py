"""Speed tiers: exact is diffusers' own bytes, the others are deterministic, close to exact,
never share a batch with another tier, and leave the pipeline as they found it."""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_runtime.engine import Engine
from diffusers_runtime.loading import load_pipeline
from diffusers_runtime.request import Generation, GenerationRequest
from diffusers_runtime.settings import RuntimeSettings
from diffusers_runtime.speed import SPEEDS, Speeds, trailing_copies
from scene_model import analysis
from scripts.servers import DEFAULT_MODEL, metric
from tests.runtime.helpers import decode, predict
from tests.runtime.test_streaming import events, stream

PROMPT = "a large red square on a white background"


@pytest.fixture(scope="module")
def default_pipe():
    return load_pipeline(RuntimeSettings(model_id=str(DEFAULT_MODEL))).pipe


def generation(speed: str, seed: int = 0, prompt: str = PROMPT) -> Generation:
    return Generation(
        request=GenerationRequest(prompt=prompt),
        width=128,
        height=128,
        num_inference_steps=20,
        guidance_scale=4.0,
        seed=seed,
        speed=speed,  # type: ignore[arg-type]
    )


def draw(pipe, *speeds: str, seed: int = 0) -> list[np.ndarray]:
    async def scenario():
        engine = Engine(pipe, "m", max_batch_size=1, batch_window_seconds=0)
        try:
            return [(await engine.generate(generation(s, seed), "r")).images[0] for s in speeds]
        finally:
            await engine.close()

    return [np.asarray(image, dtype=np.float64) for image in asyncio.run(scenario())]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_trailing_copies_counts_the_tokens_every_sample_repeats():
    context = torch.randn(2, 6, 4)
    assert trailing_copies(context) == 1
    context[:, 3:] = 0.0
    assert trailing_copies(context) == 3
    context[1, 2] = 0.0  # only one sample repeats it: not shared by the batch
    assert trailing_copies(context) == 3


def test_exact_is_the_bare_pipeline_byte_for_byte(default_pipe):
    (exact,) = draw(default_pipe, "exact")
    with torch.inference_mode():
        bare = default_pipe(
            [PROMPT],
            width=128,
            height=128,
            num_inference_steps=20,
            guidance_scale=4.0,
            generator=[torch.Generator("cpu").manual_seed(0)],
        ).images[0]
    assert np.array_equal(exact, np.asarray(bare, dtype=np.float64))


def test_each_tier_is_deterministic_close_to_exact_and_draws_the_asked_picture(default_pipe):
    exact, balanced, fast, balanced_again, fast_again = draw(
        default_pipe, "exact", "balanced", "fast", "balanced", "fast"
    )
    assert np.array_equal(balanced, balanced_again)
    assert np.array_equal(fast, fast_again)
    # balanced is the exact computation rearranged: float rounding only.
    assert psnr(balanced, exact) > 60
    assert psnr(fast, exact) > 30
    for picture in (balanced, fast):
        reading = analysis.read(Image.fromarray(picture.astype(np.uint8)))
        assert (reading.colour, reading.background) == ("red", "white")


def test_a_tier_leaves_the_pipeline_as_it_found_it(default_pipe):
    processors = {type(p).__name__ for p in default_pipe.transformer.attn_processors.values()}
    before, _, _, after = draw(default_pipe, "exact", "fast", "balanced", "exact", seed=3)
    assert np.array_equal(before, after)
    hooked = [
        name
        for name, module in default_pipe.transformer.named_modules()
        if getattr(module, "_diffusers_hook", None) is not None and module._diffusers_hook.hooks
    ]
    assert hooked == []
    assert {type(p).__name__ for p in default_pipe.transformer.attn_processors.values()} == (
        processors
    )


def test_requests_of_different_tiers_never_share_a_batch(default_pipe):
    async def scenario():
        engine = Engine(default_pipe, "m", max_batch_size=4, batch_window_seconds=0.05)
        try:
            return await asyncio.gather(
                engine.generate(generation("exact", 1), "a"),
                engine.generate(generation("fast", 2), "b"),
                engine.generate(generation("exact", 3), "c"),
                engine.generate(generation("fast", 4), "d"),
            )
        finally:
            await engine.close()

    results = asyncio.run(scenario())
    assert [r.batch_size for r in results] == [2, 2, 2, 2]
    (alone,) = draw(default_pipe, "fast", seed=2)
    # Batched with another fast request, within the batching tolerance of its solo image.
    assert np.abs(np.asarray(results[1].images[0], dtype=np.float64) - alone).max() <= 1


def test_a_pipeline_without_the_mechanisms_runs_every_tier_exactly(pipe_tiny):
    speeds = Speeds.for_pipeline(pipe_tiny)
    assert set(speeds.unavailable) == {"repeated_tokens", "step_cache"}
    assert set(speeds.describe().values()) == {"the pipeline as diffusers runs it"}


@pytest.fixture(scope="module")
def pipe_tiny(tiny_model):
    return load_pipeline(RuntimeSettings(model_id=tiny_model)).pipe


def test_capabilities_name_each_tier_and_what_it_runs(default_runtime):
    capabilities = httpx.get(f"{default_runtime.url}/v1/models/model/capabilities").json()
    assert set(capabilities["speeds"]) == set(SPEEDS)
    assert capabilities["default_speed"] == "balanced"
    assert "TaylorSeer" in capabilities["speeds"]["fast"]


def test_an_unknown_tier_is_refused_naming_the_valid_ones(default_runtime):
    answer = predict(default_runtime.url, {"prompt": PROMPT, "speed": "ludicrous"})
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert "speed" in message
    assert all(name in message for name in SPEEDS)


def test_a_cached_tier_reports_every_step_and_says_which_tier_ran(default_runtime):
    instance = {"prompt": PROMPT, "speed": "fast", "seed": 5, "num_inference_steps": 12}
    with stream(default_runtime.url, instance) as response:
        received = list(events(response))
    progress = [data["step"] for event, data in received if event == "progress"]
    assert progress == list(range(1, 13))
    kind, result = received[-1]
    assert kind == "result"
    assert result["speed"] == "fast"
    assert decode(result["images"][0]).size == (128, 128)


def test_a_cached_tier_streams_its_partial_images(default_runtime):
    instance = {"prompt": PROMPT, "speed": "fast", "seed": 6, "partial_images": 2}
    with stream(default_runtime.url, instance) as response:
        received = list(events(response))
    partials = [data for event, data in received if event == "partial_image"]
    assert [p["partial_image_index"] for p in partials] == [0, 1]
    assert all(decode(p["image"]).size == (128, 128) for p in partials)
    assert received[-1][0] == "result"


def test_cancelling_a_cached_tier_stops_it_and_the_next_exact_request_is_unchanged(
    default_runtime,
):
    def exact() -> bytes:
        answer = predict(default_runtime.url, {"prompt": PROMPT, "seed": 9, "speed": "exact"})
        return answer.json()["predictions"][0]["image"]["b64"]

    before = exact()
    cancelled = metric(default_runtime.url, "diffusers_cancellations_total", model="model")
    long = {"prompt": PROMPT, "speed": "fast", "width": 256, "height": 256}
    with stream(default_runtime.url, {**long, "num_inference_steps": 100}) as response:
        for event, data in events(response):
            if event == "progress" and data["step"] == 6:
                break
    assert exact() == before
    assert metric(default_runtime.url, "diffusers_cancellations_total", model="model") == (
        cancelled + 1
    )


def test_compiled_blocks_warm_up_every_tier_and_draw_what_eager_ones_draw(default_pipe, tiny_model):
    loaded = load_pipeline(RuntimeSettings(model_id=str(DEFAULT_MODEL), compile="default"))
    assert loaded.compiled
    assert "compile default applied to 6 transformer blocks" in loaded.decisions[-1]

    async def scenario():
        engine = Engine(loaded.pipe, "m", max_batch_size=1, batch_window_seconds=0)
        seconds = engine.warm_up([(128, 128)], guidance_scale=4.0)
        try:
            images = [(await engine.generate(generation(s, 4), "r")).images[0] for s in SPEEDS]
        finally:
            await engine.close()
        return seconds, images

    seconds, compiled = asyncio.run(scenario())
    assert seconds > 0
    eager = draw(default_pipe, *SPEEDS, seed=4)
    for speed, mine, theirs in zip(SPEEDS, compiled, eager, strict=True):
        assert psnr(np.asarray(mine, dtype=np.float64), theirs) > 35, speed
    tiny = load_pipeline(RuntimeSettings(model_id=tiny_model, compile="default"))
    assert not tiny.compiled
    assert "no transformer blocks" in tiny.decisions[-1]
