"""The generation request's fields as both deployables speak them, and their bounds: each type
defined once. The runtime validates requests with them (diffusers_runtime/request.py); the MCP
server publishes them in its tools' and REST bodies' schemas (mcp_server/generation.py), each
front end with its own descriptions. The limits that depend on the served model (pixels, steps,
images per request) are the runtime's settings and its capabilities: `limit_keywords` turns
those into the JSON Schema keywords that the OpenAPI documents carry, so that a request a
document calls valid is one the runtime accepts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

MIN_SIDE = 8
MAX_SEED = 2**32 - 1
MAX_PARTIAL_IMAGES = 3
MAX_OUTPUT_COMPRESSION = 100
# Beyond this, classifier-free guidance only burns the picture.
MAX_GUIDANCE_SCALE = 50.0
# A LoRA adapter's weight: 1 as trained, 0 off, negative subtracts its style; past 2 they
# mostly break the picture.
MIN_LORA_SCALE = -2.0
MAX_LORA_SCALE = 2.0

Prompt = Annotated[str, Field(min_length=1)]
# The pipeline's latents are at least one patch (the model's size multiple and its least side
# come from its capabilities).
Side = Annotated[int, Field(ge=MIN_SIDE)]
Steps = Annotated[int, Field(ge=1)]
GuidanceScale = Annotated[float, Field(ge=0, le=MAX_GUIDANCE_SCALE)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
ImageCount = Annotated[int, Field(ge=1)]
Strength = Annotated[float, Field(gt=0, le=1)]
OutputCompression = Annotated[int, Field(ge=0, le=MAX_OUTPUT_COMPRESSION)]
PartialImages = Annotated[int, Field(ge=0, le=MAX_PARTIAL_IMAGES)]
OutputFormat = Literal["png", "jpeg", "webp"]
# OpenAI's names: gpt-image's low/medium/high/auto and DALL-E 3's standard/hd.
Quality = Literal["low", "medium", "high", "auto", "standard", "hd"]
Background = Literal["opaque", "auto", "transparent"]
# An adapter's name is its file's or folder's name in the runtime's LORA_DIR (without
# .safetensors); peft keys modules by it, which forbids dots.
LoraName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]
LoraScale = Annotated[float, Field(ge=MIN_LORA_SCALE, le=MAX_LORA_SCALE)]
# How much of the exact computation a request trades for time (the runtime's speed.py says
# what each runs); OpenAI's `quality` keeps its meaning, the number of steps.
Speed = Literal["exact", "balanced", "fast"]


def when(field: str, value: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """A rule between fields the runtime checks (request.resolve says why), as JSON Schema:
    when FIELD is VALUE, THEN."""
    return {"if": {"required": [field], "properties": {field: value}}, "then": then}


SET: dict[str, Any] = {"not": {"type": "null"}}
# quality chooses the steps; compression is jpeg's and webp's.
OPTION_RULES = [
    when("quality", SET, {"properties": {"num_inference_steps": {"type": "null"}}}),
    when(
        "output_compression",
        SET,
        {
            "required": ["output_format"],
            "properties": {"output_format": {"enum": ["jpeg", "webp"]}},
        },
    ),
]
# An edit's fields need its source image.
EDIT_RULES = [
    when(field, SET, {"required": ["image"], "properties": {"image": {"type": "string"}}})
    for field in ("strength", "mask_image")
]
# Partial images come only on a stream.
STREAM_ONLY = when(
    "partial_images",
    {"minimum": 1},
    {"required": ["stream"], "properties": {"stream": {"const": True}}},
)


def max_side(size_multiple: int, max_pixels: int) -> int:
    """The longest side every size up to it, square included, keeps within MAX_PIXELS. JSON
    Schema cannot bound a product, so the documents bound each side by this: the runtime
    accepts more (e.g. a wide 2:1 size of the same pixel count), never less."""
    side = math.isqrt(max_pixels)
    return side - side % size_multiple


def size_pattern(min_side: int, size_multiple: int, max_pixels: int) -> str:
    """OpenAI's `size` ("WIDTHxHEIGHT" or auto) from MIN_SIDE to max_side, as a regular
    expression."""
    longest = max_side(size_multiple, max_pixels)
    sides = "|".join(str(side) for side in range(min_side, longest + 1, size_multiple))
    return f"^(auto|({sides})x({sides}))$"


def limit_keywords(capabilities: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Field name -> the JSON Schema keywords the served model's CAPABILITIES (the runtime's
    capabilities route) add to it, under both the runtime's and OpenAI's field names."""
    multiple, pixels = capabilities["size_multiple"], capabilities["max_pixels"]
    least = capabilities["min_side"]
    side = {"minimum": least, "maximum": max_side(multiple, pixels), "multipleOf": multiple}
    images = {"maximum": capabilities["max_images_per_request"]}
    return {
        "prompt": {"maxLength": capabilities["max_prompt_chars"]},
        "num_inference_steps": {"maximum": capabilities["max_steps"]},
        "width": side,
        "height": side,
        "size": {"pattern": size_pattern(least, multiple, pixels)},
        "num_images": images,
        "n": images,
        "scheduler": {"enum": capabilities["schedulers"]},
        "loras": loras_keywords(
            [lora["name"] for lora in capabilities["loras"]], capabilities["max_loras_per_request"]
        ),
    }


def loras_keywords(names: list[str], most: int) -> dict[str, Any]:
    """`loras` as the served model takes it now: its adapters' NAMES, up to MOST of them. A list
    sent as its JSON text (a form part, v2 parameters) gets the same as a pattern."""
    scale = r"-?(2(\.0+)?|[01](\.\d+)?)"  # MIN_LORA_SCALE to MAX_LORA_SCALE
    one = rf'\{{"name": ?"({"|".join(names)})"(, ?"scale": ?{scale})?\}}'
    text = r"^\[\]$" if not names else rf"^\[({one}(, ?{one}){{0,{most - 1}}})?\]$"
    item = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "enum": names},
            "scale": {"type": "number", "minimum": MIN_LORA_SCALE, "maximum": MAX_LORA_SCALE},
        },
    }
    return {"maxItems": most, "items": item, "pattern": text}


def with_limits(
    schemas: dict[str, Any], names: Iterable[str], keywords: Mapping[str, Mapping[str, Any]]
) -> None:
    """Add KEYWORDS to the properties of those names in the request SCHEMAS NAMES (an OpenAPI
    document's components), in place; a nullable property gets them on its non-null branch."""
    for name in names:
        properties = schemas[name].get("properties", {})
        for field, extra in keywords.items():
            prop = properties.get(field)
            if prop is None:
                continue
            for branch in prop.get("anyOf", [prop]):
                kind = branch.get("type")
                if kind != "null":
                    branch.update({k: v for k, v in extra.items() if _applies(k, kind)})


def _applies(keyword: str, kind: object) -> bool:
    """Whether KEYWORD constrains a value of type KIND: a list sent as its JSON text (a form
    part, v2 parameters) is a string, which takes the list's pattern, not its item keywords."""
    if keyword in ("maxItems", "items"):
        return kind == "array"
    if keyword == "pattern":
        return kind == "string"
    return True
