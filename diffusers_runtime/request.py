"""The generation request: its fields, their types and ranges, and the checks that depend on
the loaded pipeline and the configured limits. Every rejection names the offending field."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from pydantic import ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from wire.fields import MAX_SEED, OutputFormat, Speed
from wire.request import EditFields, OutputOptions, PromptFields, SizeFields, StreamFields

from .errors import BadRequest
from .input_images import decode_image, output_size, prepare_mask, prepare_source

Mode = Literal["text", "image", "inpaint"]
Preset = Literal["low", "medium", "high"]
PRESETS: dict[str, Preset] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "auto": "medium",
    "standard": "medium",
    "hd": "high",
}
# No pipeline served here draws an alpha channel: every image is opaque (transparent is refused).
BACKGROUND = "opaque"


class GenerationRequest(StreamFields, OutputOptions, EditFields, SizeFields, PromptFields):
    """One instance of a `:predict` / `:generate` request, as the client sends it: the shared
    fields (wire/request.py), validated strictly."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class Limits:
    """What this runtime accepts; also published on the capabilities route."""

    max_pixels: int
    max_steps: int
    max_images_per_request: int
    max_prompt_chars: int
    size_multiple: int
    min_side: int
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    schedulers: tuple[str, ...]
    supports_negative_prompt: bool
    default_strength: float
    max_input_image_bytes: int
    max_input_pixels: int
    # Mode -> None when the loaded pipeline family supports it, else why not.
    edit_modes: dict[str, str | None]
    quality_steps: dict[str, int]
    default_speed: Speed
    max_loras_per_request: int


@dataclass(frozen=True)
class Generation:
    """A request with every default resolved: exactly what the engine runs. The engine reads
    what it takes as sent (the prompt, the scheduler, partial_images, ...) from REQUEST, so a new
    request field reaches it with no edit here; what a default, a limit or a decoded input
    decides is resolved below."""

    request: GenerationRequest
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_images: int = 1
    output_format: OutputFormat = "png"
    mode: Mode = "text"
    image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float | None = None
    # The preset that chose the steps; None when the request named num_inference_steps.
    quality: Preset | None = None
    speed: Speed = "exact"
    # (name, scale) of each LoRA adapter, those of scale 0 left out: no adapter at all.
    loras: tuple[tuple[str, float], ...] = ()

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one pipeline call: a field the pipeline call
        takes once for all its images belongs here."""
        return (
            self.mode,
            self.strength,
            self.width,
            self.height,
            self.num_inference_steps,
            self.guidance_scale,
            self.request.scheduler,
            self.request.negative_prompt is not None,
            self.speed,
            self.loras,
        )


def describe(error: ErrorDetails, where: str) -> str:
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        valid = ", ".join(GenerationRequest.model_fields)
        return f"{where}{field}: unknown field; valid fields are {valid}"
    if error["type"] == "missing":
        return f"{where}{field}: required field is missing"
    return f"{where}{field}: {error['msg']} (got {error['input']!r})"


def parse(raw: Any, limits: Limits, where: str = "", strict: bool = True) -> Generation:
    """Validate one raw instance; WHERE prefixes field names, e.g. `instances[1].`. STRICT off
    reads numbers from strings, as a multipart form sends them."""
    if not isinstance(raw, dict):
        raise BadRequest(f"{where.rstrip('.') or 'instance'}: must be a JSON object with a prompt")
    try:
        request = GenerationRequest.model_validate(raw, strict=strict)
    except ValidationError as exc:
        raise BadRequest("; ".join(describe(e, where) for e in exc.errors())) from None
    return resolve(request, limits, where)


def resolve(request: GenerationRequest, limits: Limits, where: str = "") -> Generation:
    problems = []
    edit = _edit_inputs(request, limits, where)
    if len(request.prompt) > limits.max_prompt_chars:
        problems.append(
            f"{where}prompt: {len(request.prompt)} characters, at most {limits.max_prompt_chars}"
        )
    if edit:
        width, height = output_size(
            edit[0], request.width, request.height, limits.size_multiple, limits.max_pixels
        )
    else:
        width = request.width or limits.default_width
        height = request.height or limits.default_height
    for name, value in (("width", width), ("height", height)):
        if value % limits.size_multiple:
            problems.append(
                f"{where}{name}: must be a multiple of {limits.size_multiple}, got {value}"
            )
        elif value < limits.min_side:
            problems.append(
                f"{where}{name}: at least {limits.min_side} for this pipeline, got {value}"
            )
    if width * height > limits.max_pixels:
        problems.append(
            f"{where}width: {width}x{height} is {width * height} pixels, "
            f"more than the limit of {limits.max_pixels} (MAX_PIXELS)"
        )
    preset: Preset | None = None
    if request.num_inference_steps is None:
        preset = PRESETS[request.quality or "medium"]
        steps = limits.quality_steps[preset]
    else:
        steps = request.num_inference_steps
        if request.quality is not None:
            presets = ", ".join(f"{name} {n}" for name, n in limits.quality_steps.items())
            problems.append(
                f"{where}quality: it sets the steps ({presets}), and num_inference_steps is "
                "set too; send one of the two"
            )
    if steps > limits.max_steps:
        problems.append(
            f"{where}num_inference_steps: {steps} is more than the limit of {limits.max_steps}"
        )
    strength = (request.strength or limits.default_strength) if edit else None
    if strength is not None:
        strength = _at_least_one_step(strength, steps)
    num_images = request.num_images or 1
    if num_images > limits.max_images_per_request:
        problems.append(
            f"{where}num_images: {num_images} is more than the limit of "
            f"{limits.max_images_per_request} images per request"
        )
    if request.scheduler is not None and request.scheduler not in limits.schedulers:
        problems.append(
            f"{where}scheduler: {request.scheduler!r} is not compatible with this pipeline; "
            f"choose one of {', '.join(limits.schedulers)}"
        )
    if request.negative_prompt is not None and not limits.supports_negative_prompt:
        problems.append(f"{where}negative_prompt: this pipeline does not take a negative prompt")
    if request.background == "transparent":
        problems.append(
            f"{where}background: transparent needs a model that draws an alpha channel; this "
            "one draws opaque RGB images. Use opaque or auto and cut the subject out afterwards"
        )
    names = [lora.name for lora in request.loras or ()]
    if len(names) > limits.max_loras_per_request:
        problems.append(
            f"{where}loras: {len(names)} adapters, at most {limits.max_loras_per_request} "
            "(MAX_LORAS_PER_REQUEST)"
        )
    if twice := sorted({name for name in names if names.count(name) > 1}):
        problems.append(
            f"{where}loras: {', '.join(twice)} more than once; give each adapter once, with "
            "the sum of its scales"
        )
    output_format = request.output_format or "png"
    if request.output_compression is not None and output_format == "png":
        problems.append(
            f"{where}output_compression: applies to jpeg and webp only (png is lossless); set "
            "output_format to jpeg or webp, or leave output_compression out"
        )
    if problems:
        raise BadRequest("; ".join(problems))
    source, mask = edit or (None, None)
    mode: Mode = "inpaint" if mask else "image" if source else "text"
    return Generation(
        request=request,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=(
            request.guidance_scale
            if request.guidance_scale is not None
            else limits.default_guidance_scale
        ),
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        num_images=num_images,
        output_format=output_format,
        mode=mode,
        image=prepare_source(source, (width, height)) if source else None,
        mask=(
            prepare_mask(mask, source, (width, height), f"{where}mask_image")
            if mask and source
            else None
        ),
        strength=strength,
        quality=preset,
        speed=request.speed or limits.default_speed,
        loras=tuple((lora.name, lora.scale) for lora in request.loras or () if lora.scale),
    )


def _at_least_one_step(strength: float, steps: int) -> float:
    """STRENGTH, raised where needed to the least that runs one of STEPS (an edit runs
    int(steps x strength)): whether a strength leaves no step depends on the steps, which no
    schema can say, so every strength the schema allows is served."""
    least = 1 / steps
    while int(steps * least) < 1:  # e.g. 49 x (1 / 49) < 1 in floating point
        least = math.nextafter(least, 1)
    return max(strength, least)


def _edit_inputs(
    request: GenerationRequest, limits: Limits, where: str
) -> tuple[Image.Image, Image.Image | None] | None:
    """The decoded source image and mask of an edit; None for text-to-image."""
    if request.image is None:
        for name in ("mask_image", "strength"):
            if getattr(request, name) is not None:
                raise BadRequest(f"{where}{name}: only valid with an input image (field image)")
        return None
    mode = "inpaint" if request.mask_image is not None else "image"
    unsupported = limits.edit_modes.get(mode)
    if unsupported:
        raise BadRequest(f"{where}{'mask_image' if mode == 'inpaint' else 'image'}: {unsupported}")
    source = decode_image(
        request.image, f"{where}image", limits.max_input_image_bytes, limits.max_input_pixels
    )
    mask = None
    if request.mask_image is not None:
        mask = decode_image(
            request.mask_image,
            f"{where}mask_image",
            limits.max_input_image_bytes,
            limits.max_input_pixels,
        )
    return source, mask
