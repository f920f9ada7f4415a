"""Image-to-image and inpainting through the runtime: input safety, strength, masks."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from diffusers_runtime.errors import BadRequest
from diffusers_runtime.input_images import decode_image, output_size, prepare_mask
from tests.runtime.helpers import decode, predict
from tests.runtime.test_streaming import events, stream


def b64(image: Image.Image, fmt: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims WIDTHxHEIGHT pixels in a few dozen bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


SOURCE = Image.new("RGB", (64, 64), (200, 40, 40))
NOISE = Image.effect_noise((64, 64), 50)
LEFT_HALF = Image.new("L", (64, 64), 0)
LEFT_HALF.paste(255, (0, 0, 32, 64))
EDIT = {"prompt": "a blue square", "num_inference_steps": 8, "seed": 3}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


# Decoding rules, in-process.


def test_a_decompression_bomb_is_refused_from_its_header():
    data = base64.b64encode(png_header_only(100_000, 100_000)).decode()
    with pytest.raises(BadRequest, match="image: more than the limit of 16777216 pixels"):
        decode_image(data, "image", max_bytes=10_000_000, max_pixels=4096 * 4096)


def test_truncated_wrong_format_and_non_base64_inputs_are_refused():
    whole = base64.b64decode(b64(SOURCE))
    truncated = base64.b64encode(whole[: len(whole) // 2]).decode()
    with pytest.raises(BadRequest, match="truncated or corrupt"):
        decode_image(truncated, "image", 10_000_000, 10_000_000)
    with pytest.raises(BadRequest, match="GIF is not accepted"):
        decode_image(b64(SOURCE, "GIF"), "image", 10_000_000, 10_000_000)
    with pytest.raises(BadRequest, match="not valid base64"):
        decode_image("@@not base64@@", "image", 10_000_000, 10_000_000)
    with pytest.raises(BadRequest, match="larger than the limit of 1024 bytes"):
        decode_image(b64(NOISE), "image", 1024, 10_000_000)


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (40, 80), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image = decode_image(b64(tall, "JPEG", exif=exif), "image", 10_000_000, 10_000_000)
    assert image.size == (80, 40)


def test_output_size_keeps_the_aspect_within_the_pixel_budget():
    source = Image.new("RGB", (1000, 500))
    assert output_size(source, None, None, 8, 1_000_000) == (1000, 496)
    assert output_size(source, None, None, 8, 125_000) == (496, 248)
    assert output_size(source, 256, None, 8, 1_000_000) == (256, 128)
    assert output_size(source, 64, 96, 8, 1_000_000) == (64, 96)


def test_a_mask_of_another_size_is_refused_and_transparency_means_edit():
    with pytest.raises(BadRequest, match=r"mask_image: 32x32 does not match the image's 64x64"):
        prepare_mask(Image.new("L", (32, 32)), SOURCE, (64, 64))
    openai_style = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    openai_style.paste((0, 0, 0, 0), (0, 0, 32, 64))
    mask = prepare_mask(openai_style, SOURCE, (64, 64))
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((63, 0)) == 0


# Through the real runtime.


def test_image_to_image_differs_from_the_input_depends_on_strength_and_repeats(runtime):
    def edit(strength: float) -> dict:
        response = predict(runtime.url, {**EDIT, "image": b64(SOURCE), "strength": strength})
        assert response.status_code == 200, response.text[:300]
        return response.json()["predictions"][0]

    weak, strong, again = edit(0.5), edit(1.0), edit(0.5)
    assert weak["mode"] == "image"
    assert (weak["effective_steps"], strong["effective_steps"]) == (4, 8)
    assert decode(weak["image"]).size == (64, 64)
    assert np.abs(pixels(decode(weak["image"])) - pixels(SOURCE)).mean() > 5
    assert weak["image"]["b64"] != strong["image"]["b64"]
    assert weak["image"]["b64"] == again["image"]["b64"]


def test_the_edit_is_resized_to_the_asked_size(runtime):
    response = predict(
        runtime.url, {**EDIT, "image": b64(Image.new("RGB", (100, 50))), "width": 96}
    )
    assert response.status_code == 200, response.text[:300]
    assert decode(response.json()["predictions"][0]["image"]).size == (96, 48)


def test_a_mask_confines_the_change(runtime):
    response = predict(runtime.url, {**EDIT, "image": b64(SOURCE), "mask_image": b64(LEFT_HALF)})
    assert response.status_code == 200, response.text[:300]
    prediction = response.json()["predictions"][0]
    assert prediction["mode"] == "inpaint"
    result = pixels(decode(prediction["image"]))
    source = pixels(SOURCE)
    assert np.abs(result[:, 32:] - source[:, 32:]).max() <= 2
    assert np.abs(result[:, :32] - source[:, :32]).mean() > 5


def test_edit_progress_counts_the_effective_steps(runtime):
    instance = {**EDIT, "image": b64(SOURCE), "strength": 0.5}
    with stream(runtime.url, instance) as response:
        received = list(events(response))
    progress = [data for event, data in received if event == "progress"]
    assert progress == [{"step": k, "total": 4} for k in range(1, 5)]
    assert received[-1][0] == "result"


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        ({"image": b64(NOISE)[:400]}, "instances[0].image: truncated or corrupt"),
        ({"image": "aGVsbG8gd29ybGQ="}, "instances[0].image: not a PNG, JPEG or WebP"),
        (
            {"image": base64.b64encode(png_header_only(50_000, 50_000)).decode()},
            "instances[0].image: more than the limit",
        ),
        (
            {"image": base64.b64encode(png_header_only(5000, 5000)).decode()},
            "instances[0].image: 5000x5000 is more than the limit",
        ),
        (
            {"image": b64(SOURCE), "mask_image": b64(Image.new("L", (16, 16)))},
            "instances[0].mask_image: 16x16 does not match",
        ),
        ({"mask_image": b64(LEFT_HALF)}, "mask_image: only valid with an input image"),
        ({"image": b64(SOURCE), "strength": 1.5}, "instances[0].strength"),
    ],
)
def test_bad_edits_are_400_naming_the_problem(runtime, instance, expected):
    response = predict(runtime.url, {**EDIT, **instance})
    assert response.status_code == 400, response.text[:300]
    assert expected in response.json()["error"]


def test_a_strength_too_small_for_one_step_runs_one(runtime):
    """0.05 of 8 steps is no step; a schema cannot tie strength to the steps, so the runtime
    runs the least that is one step rather than refusing a strength the schema allows."""
    response = predict(runtime.url, {**EDIT, "image": b64(SOURCE), "strength": 0.05})
    assert response.status_code == 200, response.text[:300]
    prediction = response.json()["predictions"][0]
    assert prediction["effective_steps"] == 1
    assert prediction["strength"] == 0.125


def test_capabilities_list_the_edit_modes(runtime):
    caps = httpx.get(f"{runtime.url}/v1/models/model/capabilities").json()
    assert caps["edit_modes"]["image"] == {"supported": True, "reason": None}
    assert caps["edit_modes"]["inpaint"]["supported"] is True
