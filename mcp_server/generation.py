"""What a generation takes and gives.

The MCP tools take these models' fields as their arguments and the REST bodies inherit them.
Every field the runtime takes is the runtime's own declaration (wire/request.py: type, bounds,
description); this adds only what this server adds: which model draws, and images stored here
as edit sources. Unset fields take the runtime's defaults; the runtime checks the limits of the
model it serves and names the field it rejects.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from wire import request as wire

MIME_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

Source = Annotated[
    str,
    Field(
        min_length=1,
        description="An id, image:// URI or URL from this server, or base64 PNG/JPEG/WebP.",
    ),
]


class PromptFields(wire.PromptFields):
    """The fields every front end offers, and which served model draws."""

    model: str | None = Field(None, description="From list_models; default if unset.")


class GenerationFields(wire.SizeFields, PromptFields):
    """generate_image's arguments."""


class EditFields(wire.EditFields):
    """What turns a generation into an edit of `image`, which may also be an image stored
    here."""

    image: Source | None = None


class GenerationRequest(EditFields, GenerationFields):
    """What the service generates: a new image, or an edit when `image` is set."""


class ImageRequest(wire.OutputOptions, GenerationRequest):
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
    # The adapters that drew it, for the summary line (the request's own `loras`).
    loras: SkipJsonSchema[list[wire.Lora]] = Field(default_factory=list, exclude=True)
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
