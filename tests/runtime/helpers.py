"""Small client helpers for the runtime tests."""

from __future__ import annotations

import base64
import io

import httpx
from PIL import Image


def predict(url: str, *instances: dict, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/model:predict", json={"instances": list(instances)}, timeout=120, **kwargs
    )


def decode(encoded: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded["b64"])))
    image.load()
    return image
