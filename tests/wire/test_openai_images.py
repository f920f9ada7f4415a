"""OpenAI's Images protocol pieces both deployables send: sizes, events, the models list."""

from __future__ import annotations

import json

import pytest

from wire import openai_images
from wire.sse import sse


def _parse(frame: bytes) -> tuple[str, dict]:
    event, data = frame.decode().rstrip("\n").split("\n")
    return event.removeprefix("event: "), json.loads(data.removeprefix("data: "))


@pytest.mark.parametrize(
    ("size", "parsed"), [("512x256", (512, 256)), ("auto", None), (None, None)]
)
def test_a_size_is_width_by_height_or_the_models_own(size, parsed):
    assert openai_images.parse_size(size) == parsed


@pytest.mark.parametrize("size", ["512", "512x", "512 x 512", "-8x8", "1024X1024"])
def test_a_malformed_size_is_refused_with_the_expected_form(size):
    with pytest.raises(ValueError, match=r'size: must look like "512x512"'):
        openai_images.parse_size(size)


def test_partial_and_completed_events_carry_openais_fields():
    common = {"size": "64x64", "quality": None, "background": None, "output_format": "png"}
    name, partial = _parse(
        openai_images.image_event("image_edit", "QUJD", partial_image_index=1, **common)
    )
    assert name == partial["type"] == "image_edit.partial_image"
    assert partial["partial_image_index"] == 1 and "usage" not in partial
    assert partial["quality"] == "auto" and partial["background"] == "auto"
    name, completed = _parse(openai_images.image_event("image_generation", "QUJD", **common))
    assert name == completed["type"] == "image_generation.completed"
    assert completed["usage"]["total_tokens"] == 0 and "partial_image_index" not in completed
    assert completed["b64_json"] == "QUJD" and completed["size"] == "64x64"


def test_progress_is_a_comment_clients_skip():
    assert openai_images.progress_comment(3, 20) == b": step 3/20\n\n"
    assert sse("progress", {"step": 1}) == b'event: progress\ndata: {"step": 1}\n\n'
