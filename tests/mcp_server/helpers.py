"""What the MCP server tests check again and again."""

from __future__ import annotations

import base64
import io
import re

import httpx
from PIL import Image

SMALL = {"width": 64, "height": 64, "num_inference_steps": 4}
# Long enough (about 10 s on the tiny model) that a cancellation clearly stops it early.
LONG = {"width": 256, "height": 256, "num_inference_steps": 100}


def image_size(data: bytes | str) -> tuple[int, int]:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        return image.size


def metric(base_url: str, name: str) -> float:
    """Sum of every sample of one Prometheus metric (all label sets)."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.M)
    return sum(float(value) for value in pattern.findall(text))
