"""`POST /v1/images/edits` through the official `openai` client: image-to-image and inpainting."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import openai
import pytest
from PIL import Image

from scripts.servers import ServerProcess

EDIT = {"num_inference_steps": 8, "seed": 3}


@pytest.fixture
def client(mcp_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mcp_server.url}/v1", api_key="unused", max_retries=0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=int)


SOURCE = Image.new("RGB", (64, 64), (200, 40, 40))


def test_an_edit_has_the_asked_size_differs_from_the_input_and_depends_on_strength(client):
    def edit(strength: float) -> np.ndarray:
        response = client.images.edit(
            image=("source.png", png(SOURCE), "image/png"),
            prompt="a blue square",
            size="64x64",
            response_format="b64_json",
            extra_body={**EDIT, "strength": strength},
        )
        return pixels(response.data[0].b64_json)

    weak, strong = edit(0.5), edit(1.0)
    assert weak.shape == (64, 64, 3)
    assert np.abs(weak - np.asarray(SOURCE, dtype=int)).mean() > 5
    assert np.abs(weak - strong).mean() > 1


def test_an_openai_style_mask_confines_the_change(client):
    # OpenAI masks: fully transparent pixels are the ones to edit (here the left half).
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))
    response = client.images.edit(
        image=("source.png", png(SOURCE), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a blue square",
        response_format="b64_json",
        extra_body=EDIT,
    )
    result = pixels(response.data[0].b64_json)
    source = np.asarray(SOURCE, dtype=int)
    assert result.shape == (64, 64, 3)
    assert np.abs(result[:, 32:] - source[:, 32:]).max() <= 2
    assert np.abs(result[:, :32] - source[:, :32]).mean() > 5


def bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"image": ("cut.png", png(Image.effect_noise((64, 64), 60))[:300])}, "image: truncated"),
        ({"image": ("bomb.png", bomb())}, "image: more than the limit"),
        (
            {
                "image": ("source.png", png(SOURCE)),
                "mask": ("mask.png", png(Image.new("L", (16, 16)))),
            },
            "mask_image: 16x16 does not match",
        ),
    ],
)
def test_bad_images_are_rejected_naming_the_problem(client, files, expected):
    with pytest.raises(openai.BadRequestError) as error:
        client.images.edit(prompt="x", extra_body=EDIT, **files)
    assert expected in str(error.value)
