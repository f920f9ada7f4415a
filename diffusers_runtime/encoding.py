"""Encode PIL images to the wire formats clients ask for."""

from __future__ import annotations

import base64
import io

from PIL import Image

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode(image: Image.Image, output_format: str, compression: int | None = None) -> bytes:
    """COMPRESSION is OpenAI's `output_compression` for jpeg and webp: 100 keeps the most
    detail, as the encoders' quality does; unset, 90."""
    buffer = io.BytesIO()
    fmt = PIL_FORMATS[output_format]
    if fmt == "PNG":
        # Level 1: a few percent larger than the default, several times faster to write.
        image.save(buffer, format=fmt, compress_level=1)
    else:
        quality = 90 if compression is None else compression
        image.convert("RGB").save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()


def encoded_image(
    image: Image.Image, output_format: str, compression: int | None = None
) -> dict[str, str]:
    """The `{"format", "b64"}` shape the original runtime's clients read."""
    data = encode(image, output_format, compression)
    return {"format": PIL_FORMATS[output_format], "b64": base64.b64encode(data).decode("ascii")}
