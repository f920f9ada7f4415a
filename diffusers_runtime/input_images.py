"""Decode client-supplied images (the source of an edit and its mask) safely.

Rules, in order: base64 that decodes; at most MAX_INPUT_IMAGE_BYTES; PNG, JPEG or WebP; at
most MAX_INPUT_PIXELS before decoding (a decompression bomb is refused from its header);
fully decodable (a truncated file is refused); EXIF orientation applied. The output size is
the request's width/height when given, else the input's size scaled down to fit MAX_PIXELS and
rounded down to the size multiple; the source is resized to it, and a mask must match the
source's original size.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadRequest

FORMATS = {"PNG", "JPEG", "WEBP"}


def decode_image(data: str, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    if len(data) > max_bytes * 4 // 3 + 4:
        raise BadRequest(f"{field}: larger than the limit of {max_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field}: not valid base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format not in FORMATS:
                raise BadRequest(f"{field}: {image.format} is not accepted; send PNG, JPEG or WebP")
            width, height = image.size
            if width * height > max_pixels:
                raise BadRequest(
                    f"{field}: {width}x{height} is more than the limit of {max_pixels} pixels"
                )
            image.load()
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(
            f"{field}: more than the limit of {max_pixels} pixels (a decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise BadRequest(f"{field}: not a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"{field}: truncated or corrupt image ({exc})") from None
    return ImageOps.exif_transpose(image)


def output_size(
    source: Image.Image, width: int | None, height: int | None, multiple: int, max_pixels: int
) -> tuple[int, int]:
    if width and height:
        return width, height
    w, h = source.size
    if width:
        w, h = width, round(h * width / w)
    elif height:
        w, h = round(w * height / h), height
    scale = min(1.0, (max_pixels / (w * h)) ** 0.5)
    w, h = int(w * scale) // multiple * multiple, int(h * scale) // multiple * multiple
    if w < multiple or h < multiple:
        raise BadRequest(f"image: {source.size[0]}x{source.size[1]} is too small to edit")
    return w, h


def prepare_source(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def prepare_mask(
    mask: Image.Image, source: Image.Image, size: tuple[int, int], field: str = "mask_image"
) -> Image.Image:
    if mask.size != source.size:
        raise BadRequest(
            f"{field}: {mask.size[0]}x{mask.size[1]} does not match the image's "
            f"{source.size[0]}x{source.size[1]}; send a mask of the same size"
        )
    # White repaints, black keeps. A mask with transparency follows the OpenAI edits API
    # instead: fully transparent areas are the ones to edit.
    alpha = mask.getchannel("A") if mask.mode in ("RGBA", "LA", "PA") else None
    if alpha is not None and cast(tuple[int, int], alpha.getextrema())[0] < 255:
        mask = ImageOps.invert(alpha)
    mask = mask.convert("L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)
