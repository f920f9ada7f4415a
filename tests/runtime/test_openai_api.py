"""The runtime's own OpenAI Images API (`/openai/v1/...`) through the official `openai` client,
against a real process on the tiny model: JSON and streamed, generations and edits, errors
before and after the stream starts, and a hang-up that frees the runtime."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
)
from PIL import Image

from diffusers_runtime.errors import DeviceOutOfMemory
from diffusers_runtime.model import DiffusersModel
from diffusers_runtime.openai_api import register_openai_routes
from diffusers_runtime.settings import RuntimeSettings
from scripts.servers import free_port, metric
from tests.helpers import check_openai_event, check_streamed_generation, image_size
from tests.runtime.helpers import predict

STEPS = {"num_inference_steps": 6}


@pytest.fixture
def client(runtime) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{runtime.url}/openai/v1", api_key="unused", max_retries=0)


def png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_generate_answers_openai_images_response(client):
    result = client.images.generate(
        prompt="a red barn", n=2, size="64x96", output_format="jpeg", output_compression=40
    )
    assert [image_size(item.b64_json) for item in result.data] == [(64, 96), (64, 96)]
    assert (result.size, result.output_format, result.background) == ("64x96", "jpeg", "opaque")
    # No quality and no steps asked: the default steps are the medium preset.
    assert result.quality == "medium"


def test_quality_picks_the_step_preset(client, runtime):
    presets = httpx.get(f"{runtime.url}/v1/models/model/capabilities").json()["quality_steps"]
    assert presets == {"low": 10, "medium": 20, "high": 40}
    before = metric(runtime.url, "diffusers_denoising_steps_total")
    result = client.images.generate(prompt="x", size="64x64", quality="low")
    assert result.quality == "low"
    assert metric(runtime.url, "diffusers_denoising_steps_total") - before == 10
    assert client.images.generate(prompt="x", size="64x64", quality="hd").quality == "high"


@pytest.mark.parametrize(
    ("quality", "preset"),
    [("low", "low"), ("medium", "medium"), ("high", "high"), ("auto", "medium"),
     ("standard", "medium"), ("hd", "high")],
)  # fmt: skip
def test_every_quality_name_is_a_preset(client, quality, preset):
    assert client.images.generate(prompt="x", size="64x64", quality=quality).quality == preset


@pytest.mark.parametrize("background", ["opaque", "auto"])
def test_opaque_backgrounds_are_drawn(client, background):
    result = client.images.generate(prompt="x", size="64x64", background=background)
    assert result.background == "opaque"


def test_stream_sends_partial_images_in_order_then_one_completed_event_per_image(client):
    completed = check_streamed_generation(client, STEPS)
    assert completed[0].b64_json != completed[1].b64_json


def test_stream_without_partial_images_sends_only_the_completed_event(client):
    (event,) = client.images.generate(prompt="a boat", size="64x64", stream=True, quality="low")
    check_openai_event(event, ImageGenCompletedEvent)
    assert event.quality == "low"


def test_streamed_edit_sends_image_edit_events(client):
    stream = client.images.edit(
        image=("source.png", png(), "image/png"),
        prompt="make it stormy",
        stream=True,
        partial_images=1,
        extra_body={**STEPS, "strength": 1.0},
    )
    partial, completed = list(stream)
    check_openai_event(partial, ImageEditPartialImageEvent)
    check_openai_event(completed, ImageEditCompletedEvent)
    assert partial.partial_image_index == 0
    assert image_size(completed.b64_json) == (64, 64)


def test_edit_without_stream_answers_json(client):
    result = client.images.edit(
        image=("source.png", png(), "image/png"), prompt="x", extra_body={"strength": 0.5}
    )
    assert image_size(result.data[0].b64_json) == (64, 64)


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"size": "big"}, ["size", "WIDTHxHEIGHT"]),
        ({"size": "63x64"}, ["width", "multiple of 8"]),
        ({"response_format": "url"}, ["response_format", "b64_json"]),
        ({"style": "vivid"}, ["style", "prompt"]),
        ({"background": "transparent"}, ["background", "opaque"]),
        ({"background": "green"}, ["background"]),
        ({"quality": "ultra"}, ["quality"]),
        ({"output_compression": 50}, ["output_compression", "jpeg"]),
        ({"output_format": "jpeg", "output_compression": 101}, ["output_compression"]),
        ({"partial_images": 4, "stream": True}, ["partial_images"]),
        ({"quality": "high", "extra_body": STEPS}, ["quality", "num_inference_steps"]),
        ({"model": "gpt-image-1"}, ["model", "'model'"]),
        ({"n": 9}, ["num_images", "limit"]),
    ],
)
def test_invalid_fields_are_a_400_before_any_stream(client, arguments, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", **arguments)
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    for word in words:
        assert word in error["message"]


def test_partial_images_without_a_stream_are_refused(client):
    with pytest.raises(openai.BadRequestError, match="only streams carry partial images"):
        client.images.generate(prompt="x", partial_images=1)


def test_moderation_is_accepted(client):
    assert client.images.generate(prompt="x", size="64x64", moderation="low").data


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == ["model"]


def test_hanging_up_mid_stream_frees_the_runtime(client, runtime):
    cancelled = metric(runtime.url, "diffusers_cancellations_total")
    stream = client.images.generate(
        prompt="long",
        size="256x256",
        stream=True,
        partial_images=3,
        extra_body={"num_inference_steps": 100},
    )
    first = next(iter(stream))
    assert first.type == "image_generation.partial_image"
    stream.close()
    time.sleep(1.0)
    assert metric(runtime.url, "diffusers_cancellations_total") == cancelled + 1
    started = time.monotonic()
    assert predict(runtime.url, {"prompt": "next", "width": 64, "height": 64}).status_code == 200
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def failing_runtime(tiny_model) -> Iterator[str]:
    """The OpenAI routes in-process over the tiny model, whose engine runs out of device
    memory after its first step: a failure that comes after the stream has started."""
    model = DiffusersModel("model", RuntimeSettings(model_id=tiny_model))
    model.load()
    engine = model.serving().engine
    generate = engine.generate

    async def out_of_memory(generation, request_id, on_progress=None, on_partial=None):
        if on_progress is not None:
            on_progress(1, generation.num_inference_steps)
        raise DeviceOutOfMemory("the device ran out of memory (test)")

    engine.generate = out_of_memory  # type: ignore[method-assign]
    app = FastAPI()
    register_openai_routes(app, model)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    engine.generate = generate  # type: ignore[method-assign]
    server.should_exit = True
    thread.join(10)


def test_a_failure_after_the_stream_started_is_raised_as_api_error(failing_runtime):
    client = openai.OpenAI(base_url=f"{failing_runtime}/openai/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.APIError, match="ran out of memory") as caught:
        list(client.images.generate(prompt="x", size="64x64", stream=True, partial_images=1))
    assert caught.value.body["code"] == "out_of_memory"
    with pytest.raises(openai.InternalServerError, match="ran out of memory"):
        client.images.generate(prompt="x", size="64x64")
