"""The generation request's fields, each declared once: its type and bounds (wire/fields.py),
its default and one description. The runtime validates its requests with these models
(diffusers_runtime/request.py, strictly); the MCP server's tools and REST bodies are built from
them (mcp_server/generation.py). A field left out or null takes the runtime's default, so a
client that sends every field (strict-mode tool calling does) can send null for "unset"."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from wire.fields import (
    Background,
    GuidanceScale,
    ImageCount,
    LoraName,
    LoraScale,
    OutputCompression,
    OutputFormat,
    PartialImages,
    Prompt,
    Quality,
    Seed,
    Side,
    Speed,
    Steps,
    Strength,
)


def _whole(value: object) -> object:
    """Counts are integers: pydantic's lax mode (the MCP server's, and a form's) would read true
    as 1 and 2.0 as 2 (a form's strings still pass, to be read as numbers)."""
    if isinstance(value, bool | float):
        raise ValueError(f"must be an integer, not {value!r}")
    return value


def _number(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {value!r}")
    return value


# Last in a field's Annotated: bounds placed after a validator leave the JSON schema.
WHOLE = BeforeValidator(_whole)
NUMBER = BeforeValidator(_number)


def _json_text(value: object) -> object:
    """A list as JSON text, where only text travels: a multipart form (one part with the whole
    list, or a part per item, which arrive as a list of texts) or KServe's v2 parameters."""
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        texts = value
    else:
        return value
    items: list[object] = []
    for text in texts:
        try:
            found = json.loads(text)
        except ValueError:
            raise ValueError(
                "must be a list of {name, scale} objects (as JSON text in a form or v2 parameters)"
            ) from None
        items.extend(found if isinstance(found, list) else [found])
    return items


# One LoRA adapter of the served model and its weight. No docstring: it would be repeated in
# every tool's schema.
class Lora(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: LoraName = Field(description="One of the model's loras.")
    scale: Annotated[LoraScale, NUMBER] = Field(1.0, description="1 as trained, 0 off.")


class PromptFields(BaseModel):
    """What every generation takes, in every front end."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(description="What the image should show.")
    negative_prompt: str | None = Field(None, description="What it should not show.")
    num_inference_steps: Annotated[Steps, WHOLE] | None = Field(
        None, description="More: slower, finer."
    )
    guidance_scale: Annotated[GuidanceScale, NUMBER] | None = Field(
        None, description="Prompt adherence, typically 3-9."
    )
    seed: Annotated[Seed, WHOLE] | None = Field(None, description="Reproduces an image.")
    scheduler: str | None = Field(None, description="One of the model's schedulers.")
    output_format: OutputFormat | None = Field(None, description="Default png.")
    speed: Speed | None = Field(None, description="Exact or faster approximations.")
    loras: Annotated[list[Lora], BeforeValidator(_json_text)] | None = Field(
        None,
        description="Style adapters (the model's loras) to use when one's description fits "
        "the request; several combine.",
    )


class SizeFields(BaseModel):
    """The size and count under the runtime's names (OpenAI's size and n translate to them)."""

    width: Annotated[Side, WHOLE] | None = Field(None, description="Pixels; the model's default.")
    height: Annotated[Side, WHOLE] | None = Field(None, description="Pixels; the model's default.")
    num_images: Annotated[ImageCount, WHOLE] | None = Field(None, description="Default 1.")


class StrengthField(BaseModel):
    """How far an edit departs from its source (a multipart edit sends its images as files)."""

    strength: Annotated[Strength, NUMBER] | None = Field(None, description="0.3 subtle, 0.8 heavy.")


class EditFields(StrengthField):
    """What turns a generation into an edit of `image`."""

    image: str | None = Field(None, description="The source image, base64 PNG/JPEG/WebP.")
    mask_image: str | None = Field(None, description="Like image; white is repainted.")


def _opaque_only(schema: dict[str, Any]) -> None:
    """The published `background`: opaque or auto (or left out). transparent is OpenAI's and is
    taken to say why it is refused, but a document listing it anywhere (the type's own enum
    inside an anyOf) lets a client's generator take it for a valid value; and a null a
    multipart form can only send as the text "null"."""
    schema.pop("anyOf", None)
    schema.update({"type": "string", "enum": ["opaque", "auto"]})


class OutputOptions(BaseModel):
    """OpenAI's image options. The MCP tools leave them out: an agent pays for every argument
    in its context and has num_inference_steps and output_format."""

    quality: Quality | None = Field(
        None, description="Step preset instead of num_inference_steps (the model's quality_steps)."
    )
    output_compression: Annotated[OutputCompression, WHOLE] | None = Field(
        None, description="jpeg/webp encoder quality, 0-100."
    )
    # transparent is OpenAI's, taken to say why it is refused, and not published.
    background: Background | None = Field(
        None, description="The models here draw opaque images.", json_schema_extra=_opaque_only
    )


class StreamFields(BaseModel):
    """What only a streamed answer carries."""

    partial_images: Annotated[PartialImages, WHOLE] = Field(
        0, description="With stream: estimates of each image while it forms."
    )
