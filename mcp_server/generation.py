"""What a generation takes and gives: every field declared and described once.

The MCP tools take these models' fields as their arguments and the REST bodies inherit them.
Each field's type and bounds are the runtime's own (wire/fields.py); the descriptions here are
written for the agents and people who read these schemas. Unset fields take the runtime's
defaults; the runtime checks the limits of the model it serves and names the field it rejects.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from wire.fields import (
    Background,
    GuidanceScale,
    ImageCount,
    OutputCompression,
    OutputFormat,
    Prompt,
    Quality,
    Seed,
    Side,
    Speed,
    Steps,
)
from wire.fields import Strength as StrengthValue

MIME_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _whole(value: object) -> object:
    """Counts are integers: pydantic's lax mode would read true as 1 and 2.0 as 2, which the
    runtime refuses (a form's strings still pass, to be read as numbers)."""
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

Source = Annotated[
    str,
    Field(
        min_length=1,
        description="An id, image:// URI or URL from this server, or base64 PNG/JPEG/WebP.",
    ),
]
Strength = Annotated[
    Annotated[StrengthValue, NUMBER] | None, Field(description="0.3 subtle, 0.8 heavy.")
]


class PromptFields(BaseModel):
    """The fields every front end offers under the runtime's own names."""

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
    scheduler: str | None = Field(None, description="See list_models.")
    output_format: OutputFormat | None = Field(None, description="Default png.")
    speed: Speed | None = Field(None, description="Default balanced; see list_models.")
    model: str | None = Field(None, description="From list_models; default if unset.")


class GenerationFields(PromptFields):
    """generate_image's arguments."""

    width: Annotated[Side, WHOLE] | None = Field(None, description="See list_models.")
    height: Annotated[Side, WHOLE] | None = Field(None, description="See list_models.")
    num_images: Annotated[ImageCount, WHOLE] | None = Field(None, description="Default 1.")


class EditFields(BaseModel):
    """What turns a generation into an edit of `image`."""

    image: Source | None = None
    mask_image: str | None = Field(None, description="Like image; white is repainted.")
    strength: Strength = None


class GenerationRequest(EditFields, GenerationFields):
    """What the service generates: a new image, or an edit when `image` is set."""


def _opaque_only(schema: dict[str, Any]) -> None:
    """The published `background`: opaque or auto (or left out). transparent is OpenAI's and is
    taken to say why it is refused, but a document listing it anywhere (the type's own enum
    inside an anyOf) lets a client's generator take it for a valid value; and a null a
    multipart form can only send as the text "null"."""
    schema.pop("anyOf", None)
    schema.update({"type": "string", "enum": ["opaque", "auto"]})


class OutputOptions(BaseModel):
    """OpenAI's image options, on the REST API. The MCP tools leave them out: an agent pays
    for every argument in its context and has num_inference_steps and output_format."""

    quality: Quality | None = Field(
        None, description="Step preset instead of num_inference_steps (the model's quality_steps)."
    )
    output_compression: Annotated[OutputCompression, WHOLE] | None = Field(
        None, description="jpeg/webp encoder quality, 0-100."
    )
    # transparent is OpenAI's, taken to say why it is refused, and not published.
    background: Background | None = Field(
        None,
        description="The models here draw opaque images.",
        json_schema_extra=_opaque_only,
    )


class ImageRequest(OutputOptions, GenerationRequest):
    """What the REST API generates: a GenerationRequest with OpenAI's options."""


class EditRequest(GenerationRequest):
    """edit_image's arguments: an edit always has its source."""

    image: Source


class ImageRef(BaseModel):
    id: str = Field(description="Valid until expires_at.")
    uri: str = Field(description="Read it with resources/read.")
    url: str | None = Field(description="Null over stdio.")
    mime_type: str
    size_bytes: int


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")

    queue_ms: float | None = None
    inference_ms: float | None = None
    encode_ms: float | None = None
    total_ms: float | None = None
    wait_ms: float | None = None


# What a finished generation returns (the tools' structuredContent). No docstring: it would
# be repeated in every output schema.
class GenerationResult(BaseModel):
    model: str
    prompt: str
    images: list[ImageRef]
    seed: int | None
    width: int
    height: int
    num_inference_steps: int | None
    guidance_scale: float | None
    scheduler: str | None
    speed: str | None = None
    # For the REST answer (OpenAI's fields), kept out of the MCP result and its schema.
    quality: SkipJsonSchema[str | None] = Field(None, exclude=True)
    background: SkipJsonSchema[str | None] = Field(None, exclude=True)
    # Five optional numbers cost more as a schema than as a sentence.
    timings: Annotated[
        Timings,
        WithJsonSchema(
            {
                "type": "object",
                "description": "Milliseconds: queue_ms, inference_ms, encode_ms, total_ms (the "
                "runtime's), wait_ms (for a slot here).",
            }
        ),
    ]
    expires_at: float = Field(description="Unix time the images expire.")


def image_uri(image_id: str, mime_type: str) -> str:
    extension = {v: k for k, v in MIME_TYPES.items()}.get(mime_type, "png")
    return f"image://generated/{image_id}.{extension}"
