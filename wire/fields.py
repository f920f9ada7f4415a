"""The generation request's fields as both deployables speak them: each type and its bounds
defined once. The runtime validates requests with them (diffusers_runtime/request.py); the MCP
server publishes them in its tools' and REST bodies' schemas (mcp_server/generation.py), each
front end with its own descriptions. Limits that depend on the served model (pixels, steps,
images per request) are the runtime's settings and its /capabilities, not constants here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

MAX_SEED = 2**32 - 1
MAX_PARTIAL_IMAGES = 3
# Beyond this, classifier-free guidance only burns the picture.
MAX_GUIDANCE_SCALE = 50.0

Prompt = Annotated[str, Field(min_length=1)]
# The pipeline's latents are at least one patch: 8 pixels (the size multiple is the model's).
Side = Annotated[int, Field(ge=8)]
Steps = Annotated[int, Field(ge=1)]
GuidanceScale = Annotated[float, Field(ge=0, le=MAX_GUIDANCE_SCALE)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
ImageCount = Annotated[int, Field(ge=1)]
Strength = Annotated[float, Field(gt=0, le=1)]
OutputCompression = Annotated[int, Field(ge=0, le=100)]
PartialImages = Annotated[int, Field(ge=0, le=MAX_PARTIAL_IMAGES)]
OutputFormat = Literal["png", "jpeg", "webp"]
# OpenAI's names: gpt-image's low/medium/high/auto and DALL-E 3's standard/hd.
Quality = Literal["low", "medium", "high", "auto", "standard", "hd"]
Background = Literal["opaque", "auto", "transparent"]
# How much of the exact computation a request trades for time (the runtime's speed.py says
# what each runs); OpenAI's `quality` keeps its meaning, the number of steps.
Speed = Literal["exact", "balanced", "fast"]
