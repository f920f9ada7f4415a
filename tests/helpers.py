"""What tests of every package check again and again: small requests, image sizes, metrics."""

from __future__ import annotations

import base64
import io
import os

from openai.types import ImageGenCompletedEvent, ImageGenPartialImageEvent
from PIL import Image
from pydantic import BaseModel

SMALL = {"width": 64, "height": 64, "num_inference_steps": 4}
# Debian's Chromium for the browser tests (`make browser` installs it), started as a closed
# network and a root user need: no sandbox, no GPU, none of its own calls home.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Long enough (about 10 s on the tiny model) that a cancellation clearly stops it early.
LONG = {"width": 256, "height": 256, "num_inference_steps": 100}


def image_size(data: bytes | str) -> tuple[int, int]:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        return image.size


def check_openai_event(event: object, expected: type[BaseModel]) -> None:
    """EVENT, as the `openai` client parsed it, is exactly of type EXPECTED: every field the
    type requires and no other, each value one the type allows."""
    assert isinstance(event, expected), f"{type(event).__name__} is not {expected.__name__}"
    required = {name for name, field in expected.model_fields.items() if field.is_required()}
    assert event.model_fields_set == required, event.model_fields_set ^ required
    assert not event.model_extra
    expected.model_validate(event.model_dump(exclude_unset=True))


def check_streamed_generation(client, steps: dict) -> list:
    """Two 64x64 images with two partial images each, streamed through the `openai` CLIENT:
    four partial events (within a step, image order), then one completed event per image,
    each exactly of its type. Returns the completed events."""
    stream = client.images.generate(
        prompt="a boat", n=2, size="64x64", stream=True, partial_images=2, extra_body=steps
    )
    received = list(stream)
    partials, completed = received[:4], received[4:]
    for event in partials:
        check_openai_event(event, ImageGenPartialImageEvent)
    for event in completed:
        check_openai_event(event, ImageGenCompletedEvent)
    # Within a step the images come in order: the k-th event of an index is image k.
    assert [event.partial_image_index for event in partials] == [0, 0, 1, 1]
    assert len(completed) == 2
    assert {(e.size, e.background, e.output_format, e.quality) for e in received} == {
        ("64x64", "opaque", "png", "auto")
    }
    assert all(image_size(event.b64_json) == (64, 64) for event in received)
    return completed
