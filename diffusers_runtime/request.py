"""The generation request: its fields, their types and ranges, and the checks that depend on
the loaded pipeline and the configured limits. Every rejection names the offending field."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadRequest

OutputFormat = Literal["png", "jpeg", "webp"]
MAX_SEED = 2**32 - 1


class GenerationRequest(BaseModel):
    """One instance of a `:predict` / `:generate` request, as the client sends it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    width: int | None = Field(None, ge=8)
    height: int | None = Field(None, ge=8)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0, le=50)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_images: int = Field(1, ge=1)
    scheduler: str | None = None
    output_format: OutputFormat = "png"


@dataclass(frozen=True)
class Limits:
    """What this runtime accepts; also published on the capabilities route."""

    max_pixels: int
    max_steps: int
    max_images_per_request: int
    max_prompt_chars: int
    size_multiple: int
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    schedulers: tuple[str, ...]
    supports_negative_prompt: bool


@dataclass(frozen=True)
class Generation:
    """A request with every default resolved: exactly what the engine runs."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_images: int
    scheduler: str | None
    output_format: OutputFormat

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one pipeline call."""
        return (
            self.width,
            self.height,
            self.num_inference_steps,
            self.guidance_scale,
            self.scheduler,
            self.negative_prompt is not None,
        )


def _describe(error: dict[str, Any], where: str) -> str:
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        valid = ", ".join(GenerationRequest.model_fields)
        return f"{where}{field}: unknown field; valid fields are {valid}"
    if error["type"] == "missing":
        return f"{where}{field}: required field is missing"
    return f"{where}{field}: {error['msg']} (got {error['input']!r})"


def parse(raw: Any, limits: Limits, where: str = "") -> Generation:
    """Validate one raw instance; WHERE prefixes field names, e.g. `instances[1].`."""
    if not isinstance(raw, dict):
        raise BadRequest(f"{where.rstrip('.') or 'instance'}: must be a JSON object with a prompt")
    try:
        request = GenerationRequest.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest("; ".join(_describe(e, where) for e in exc.errors())) from None
    return resolve(request, limits, where)


def resolve(request: GenerationRequest, limits: Limits, where: str = "") -> Generation:
    problems = []
    if len(request.prompt) > limits.max_prompt_chars:
        problems.append(
            f"{where}prompt: {len(request.prompt)} characters, at most {limits.max_prompt_chars}"
        )
    width = request.width or limits.default_width
    height = request.height or limits.default_height
    for name, value in (("width", width), ("height", height)):
        if value % limits.size_multiple:
            problems.append(
                f"{where}{name}: must be a multiple of {limits.size_multiple}, got {value}"
            )
    if width * height > limits.max_pixels:
        problems.append(
            f"{where}width: {width}x{height} is {width * height} pixels, "
            f"more than the limit of {limits.max_pixels} (MAX_PIXELS)"
        )
    steps = request.num_inference_steps or limits.default_steps
    if steps > limits.max_steps:
        problems.append(
            f"{where}num_inference_steps: {steps} is more than the limit of {limits.max_steps}"
        )
    if request.num_images > limits.max_images_per_request:
        problems.append(
            f"{where}num_images: {request.num_images} is more than the limit of "
            f"{limits.max_images_per_request} images per request"
        )
    if request.scheduler is not None and request.scheduler not in limits.schedulers:
        problems.append(
            f"{where}scheduler: {request.scheduler!r} is not compatible with this pipeline; "
            f"choose one of {', '.join(limits.schedulers)}"
        )
    if request.negative_prompt is not None and not limits.supports_negative_prompt:
        problems.append(f"{where}negative_prompt: this pipeline does not take a negative prompt")
    if problems:
        raise BadRequest("; ".join(problems))
    return Generation(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=(
            request.guidance_scale
            if request.guidance_scale is not None
            else limits.default_guidance_scale
        ),
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        num_images=request.num_images,
        scheduler=request.scheduler,
        output_format=request.output_format,
    )
