"""OpenAI's image streaming and its newer fields on the REST API, through the official `openai`
client, against a real MCP server in front of a real runtime (tiny model)."""

from __future__ import annotations

import base64
import io
import signal
import time

import openai
import pytest
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
)
from PIL import Image

from scripts.servers import ServerProcess, metric, start_mcp_server, start_runtime
from tests.helpers import check_openai_event, check_streamed_generation, image_size

STEPS = {"num_inference_steps": 6}
# At 256x256 (about 0.1 s a step on the tiny model), long enough to act during it.
MANY_STEPS = {"num_inference_steps": 100}


@pytest.fixture
def client(mcp_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mcp_server.url}/v1", api_key="unused", max_retries=0)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_stream_sends_partial_images_in_order_then_one_completed_event_per_image(client):
    check_streamed_generation(client, STEPS)


def test_stream_with_a_quality_preset_and_jpeg(client):
    (event,) = client.images.generate(
        prompt="a boat",
        size="64x64",
        stream=True,
        quality="low",
        output_format="jpeg",
        output_compression=30,
    )
    check_openai_event(event, ImageGenCompletedEvent)
    assert (event.quality, event.output_format) == ("low", "jpeg")
    assert Image.open(io.BytesIO(base64.b64decode(event.b64_json))).format == "JPEG"


def test_streamed_edit_sends_image_edit_events(client):
    partial, completed = client.images.edit(
        image=("source.png", png(), "image/png"),
        prompt="make it stormy",
        stream=True,
        partial_images=1,
        extra_body={**STEPS, "strength": 1.0},
    )
    check_openai_event(partial, ImageEditPartialImageEvent)
    check_openai_event(completed, ImageEditCompletedEvent)
    assert image_size(completed.b64_json) == (64, 64)


def test_the_json_answer_says_size_quality_background_and_format(client):
    result = client.images.generate(
        prompt="x", size="64x96", quality="low", output_format="webp", response_format="b64_json"
    )
    assert (result.size, result.quality, result.background, result.output_format) == (
        "64x96",
        "low",
        "opaque",
        "webp",
    )
    assert image_size(result.data[0].b64_json) == (64, 96)
    assert client.images.generate(prompt="x", size="64x64", moderation="low").data
    for background in ("opaque", "auto"):
        opaque = client.images.generate(prompt="x", size="64x64", background=background)
        assert opaque.background == "opaque"
    assert client.images.generate(prompt="x", size="64x64", quality="hd").quality == "high"


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"style": "vivid"}, ["style", "prompt"]),
        ({"partial_images": 2}, ["partial_images", "stream"]),
        ({"stream": True, "partial_images": 4}, ["partial_images"]),
        ({"stream": True, "size": "63x64"}, ["width", "multiple of 8"]),
        ({"stream": True, "background": "transparent"}, ["background", "opaque"]),
        ({"stream": True, "output_compression": 50}, ["output_compression", "jpeg"]),
        ({"stream": True, "quality": "high", "extra_body": STEPS}, ["quality", "one of the two"]),
        ({"stream": True, "model": "nope"}, ["Unknown model"]),
    ],
)
def test_errors_before_the_stream_starts_are_json_errors(client, arguments, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", **arguments)
    for word in words:
        assert word in caught.value.message


def test_hanging_up_mid_stream_cancels_the_generation(client, runtime):
    cancelled = metric(runtime.url, "diffusers_cancellations_total")
    stream = client.images.generate(
        prompt="long", stream=True, partial_images=3, size="256x256", extra_body=MANY_STEPS
    )
    assert next(iter(stream)).type == "image_generation.partial_image"
    stream.close()
    deadline = time.monotonic() + 10
    while metric(runtime.url, "diffusers_cancellations_total") <= cancelled:
        assert time.monotonic() < deadline, "the runtime never stopped"
        time.sleep(0.1)
    started = time.monotonic()
    client.images.generate(prompt="next", size="64x64", extra_body={"num_inference_steps": 4})
    assert time.monotonic() - started < 10


def test_a_failure_after_the_stream_started_is_raised_as_api_error(tmp_path):
    """The runtime dies after its first partial image: the stream has started, so the
    failure is an event the openai client raises with our message."""
    with (
        start_runtime(tmp_path) as runtime,
        start_mcp_server(tmp_path, DIFFUSERS_RUNTIME_URL=runtime.url) as server,
    ):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
        stream = client.images.generate(
            prompt="doomed", stream=True, partial_images=3, size="256x256", extra_body=MANY_STEPS
        )
        events = iter(stream)
        assert next(events).type == "image_generation.partial_image"
        runtime.stop(signal.SIGKILL)
        with pytest.raises(openai.APIError, match=r"after step \d+ of 100") as caught:
            list(events)
        assert caught.value.body["code"] == "replica_lost"
