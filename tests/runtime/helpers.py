"""Small client helpers for the runtime tests."""

from __future__ import annotations

import base64
import io
import re

import httpx
from PIL import Image

SMALL = {"width": 64, "height": 64, "num_inference_steps": 4}


def predict(url: str, *instances: dict, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/model:predict", json={"instances": list(instances)}, timeout=120, **kwargs
    )


def decode(encoded: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(encoded["b64"])))
    image.load()
    return image


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if all(part in found for part in wanted.split(",") if part):
            return float(match.group(3))
    return 0.0
