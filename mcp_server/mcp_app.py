"""MCP tools, resources and prompts, all backed by the shared ImageService."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import CallToolResult, ContentBlock, ImageContent, ResourceLink, TextContent
from mcp_types import ToolAnnotations as Hints
from pydantic import BaseModel, Field, ValidationError

from mcp_server import metrics
from mcp_server.jobs import JobManager, JobNotFoundError, JobState
from mcp_server.logs import new_request_id, request_id_var
from mcp_server.service import (
    GenerationRequest,
    GenerationResult,
    ImageService,
    OutputFormat,
    ServiceError,
)
from mcp_server.store import MIME_TYPES, InvalidIdError, StoreUnavailableError

INSTRUCTIONS = """\
Generates images with Hugging Face diffusers models served on KServe.
Use generate_image for a direct call (progress is reported per denoising step) and edit_image
to rework or inpaint an image this server returned. If your tool-call timeout is short, use
start_generation, then get_generation with wait_seconds until the status is succeeded, failed
or cancelled. list_models shows the models, their limits and defaults. Results carry a small
inline image plus a resource_link (and, over HTTP, a URL) to the full image, which expires
after a while. Pass the returned seed again to reproduce an image."""

Prompt = Annotated[str, Field(min_length=1, description="What the image should show.")]
Negative = Annotated[str | None, Field(description="What the image should not show.")]
Width = Annotated[int | None, Field(ge=8, description="Width in pixels; runtime default if unset.")]
Height = Annotated[
    int | None, Field(ge=8, description="Height in pixels; runtime default if unset.")
]
Steps = Annotated[int | None, Field(ge=1, description="Denoising steps (more: slower, finer).")]
Guidance = Annotated[
    float | None, Field(ge=0, description="Prompt adherence, typically 3-9; default if unset.")
]
Seed = Annotated[int | None, Field(ge=0, description="Fix it to reproduce an image.")]
Count = Annotated[int | None, Field(ge=1, description="Number of images (default 1).")]
Scheduler = Annotated[str | None, Field(description="Scheduler name (see list_models).")]
Format = Annotated[OutputFormat | None, Field(description="png (default), jpeg or webp.")]
Model = Annotated[str | None, Field(description="Model name from list_models; default if unset.")]
Source = Annotated[
    str,
    Field(
        min_length=1,
        description="The image to edit: an id, image:// URI or URL returned by this server, "
        "or base64 PNG/JPEG/WebP data.",
    ),
]
Mask = Annotated[
    str | None,
    Field(description="Inpainting mask, same forms as image: white areas are repainted."),
]
Strength = Annotated[
    float | None, Field(gt=0, le=1, description="How much to change: 0.3 subtle, 0.8 heavy.")
]


class ModelList(BaseModel):
    models: list[dict[str, Any]] = Field(
        description="Each model: name, default, ready, runtime_url, capabilities or error; "
        "source (static or discovery) and, for discovered ones, the InferenceService and "
        "whether its listing is stale."
    )
    discovery: dict[str, Any] | None = Field(
        None,
        description="Model discovery: namespaces, when each was last listed, stale since "
        "when and why; null when discovery is off.",
    )


def _preview(data: bytes, budget: int) -> tuple[bytes, str] | None:
    """A JPEG no larger than `budget` bytes, shrinking until it fits."""
    # Pillow is imported lazily: only previews of large images need it.
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        side = max(image.size)
        while side >= 16:
            copy = image.copy()
            copy.thumbnail((side, side))
            buffer = io.BytesIO()
            copy.save(buffer, format="JPEG", quality=75)
            if buffer.tell() <= budget:
                return buffer.getvalue(), "image/jpeg"
            side //= 2
    return None


async def image_blocks(
    result: GenerationResult, blobs: list[bytes | None], budget: int
) -> list[ContentBlock]:
    """Per image: inline (or a preview) when its bytes are at hand, and always the link."""
    blocks: list[ContentBlock] = []
    for ref, data in zip(result.images, blobs, strict=True):
        inline: tuple[bytes, str] | None = None
        if data is not None and len(data) <= budget:
            inline = (data, ref.mime_type)
        elif data is not None and budget > 0:
            inline = await asyncio.to_thread(_preview, data, budget)
        if inline is not None:
            blocks.append(
                ImageContent(data=base64.b64encode(inline[0]).decode(), mime_type=inline[1])
            )
        is_preview = inline is not None and inline[0] is not data
        blocks.append(
            ResourceLink(
                uri=ref.uri,
                name=f"image-{ref.id}",
                title="Full-size generated image"
                + (" (the inline image is a downscaled preview)" if is_preview else ""),
                mime_type=ref.mime_type,
                size=ref.size_bytes,
                description=f"Full image; also at {ref.url}" if ref.url else "Full image",
            )
        )
    return blocks


def summary(result: GenerationResult) -> str:
    links = ", ".join(ref.url or ref.uri for ref in result.images)
    seconds = (result.timings.total_ms or 0) / 1000
    return (
        f"Generated {len(result.images)} image(s) with model {result.model!r}: "
        f"{result.width}x{result.height}, {result.num_inference_steps} steps, "
        f"guidance {result.guidance_scale}, seed {result.seed} ({seconds:.1f} s). "
        f"Full image(s): {links}"
    )


def _request_id() -> str:
    """Over HTTP the request middleware has set it (from X-Request-ID or minted); over stdio
    each tool call gets its own."""
    request_id = request_id_var.get() or new_request_id()
    request_id_var.set(request_id)
    return request_id


@contextlib.contextmanager
def _observe(tool: str) -> Iterator[None]:
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        metrics.TOOL_CALLS.labels(tool, outcome).inc()


def _request(**fields: Any) -> GenerationRequest:
    try:
        return GenerationRequest(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ToolError(f"Invalid arguments: {problems}") from None


def build_mcp(
    service: ImageService, jobs: JobManager, inline_budget: int, public_url: str | None
) -> MCPServer:
    mcp = MCPServer("diffusers-mcp", instructions=INSTRUCTIONS, version="0.1.0")

    def base_url(ctx: Context) -> str | None:
        if public_url:
            return public_url
        request = ctx.request_context.request
        url = getattr(request, "base_url", None)
        return str(url).rstrip("/") if url is not None else None

    @mcp.tool(
        annotations=Hints(
            title="Generate image",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        )
    )
    async def generate_image(
        ctx: Context,
        prompt: Prompt,
        negative_prompt: Negative = None,
        width: Width = None,
        height: Height = None,
        num_inference_steps: Steps = None,
        guidance_scale: Guidance = None,
        seed: Seed = None,
        num_images: Count = None,
        scheduler: Scheduler = None,
        output_format: Format = None,
        model: Model = None,
    ) -> Annotated[CallToolResult, GenerationResult]:
        """Generate new images from a text prompt and wait for them (progress per denoising
        step). Returns a small inline image, a resource_link to the full image and the
        parameters used (seed included, to reproduce it). To change an image that already
        exists while keeping its composition, use edit_image instead."""
        with _observe("generate_image"):
            request = _request(
                prompt=prompt,
                negative_prompt=negative_prompt,
                width=width,
                height=height,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                seed=seed,
                num_images=num_images,
                scheduler=scheduler,
                output_format=output_format,
                model=model,
            )
            return await run_generation(ctx, request, "generate_image")

    @mcp.tool(
        annotations=Hints(
            title="Edit image",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        )
    )
    async def edit_image(
        ctx: Context,
        prompt: Prompt,
        image: Source,
        mask_image: Mask = None,
        strength: Strength = None,
        negative_prompt: Negative = None,
        width: Width = None,
        height: Height = None,
        num_inference_steps: Steps = None,
        guidance_scale: Guidance = None,
        seed: Seed = None,
        num_images: Count = None,
        scheduler: Scheduler = None,
        output_format: Format = None,
        model: Model = None,
    ) -> Annotated[CallToolResult, GenerationResult]:
        """Change an existing image following a prompt (image-to-image), or repaint only the
        masked part (inpainting). Returns the same result as generate_image; the original is
        kept."""
        with _observe("edit_image"):
            request = _request(
                prompt=prompt,
                image=image,
                mask_image=mask_image,
                strength=strength,
                negative_prompt=negative_prompt,
                width=width,
                height=height,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                seed=seed,
                num_images=num_images,
                scheduler=scheduler,
                output_format=output_format,
                model=model,
            )
            return await run_generation(ctx, request, "edit_image")

    async def run_generation(
        ctx: Context, request: GenerationRequest, entry: str
    ) -> CallToolResult:
        async def progress(step: int, total: int) -> None:
            await ctx.report_progress(step, total, f"denoising step {step}/{total}")

        try:
            result, blobs = await service.generate(
                request,
                entry=entry,
                request_id=_request_id(),
                on_progress=progress,
                base_url=base_url(ctx),
            )
        except ServiceError as exc:
            raise ToolError(str(exc)) from None
        blocks = await image_blocks(result, blobs, inline_budget)
        return CallToolResult(
            content=[TextContent(text=summary(result)), *blocks],
            structured_content=result.model_dump(mode="json"),
        )

    @mcp.tool(
        annotations=Hints(
            title="List models",
            read_only_hint=True,
            idempotent_hint=True,
            open_world_hint=False,
        )
    )
    async def list_models() -> ModelList:
        """Every configured model: its name (pass it as `model`), whether it is ready, its
        limits (max pixels, steps, images per request), defaults and schedulers."""
        with _observe("list_models"):
            return ModelList(models=await service.models(), discovery=service.discovery_status())

    @mcp.tool(
        annotations=Hints(
            title="Start an image generation job",
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        )
    )
    async def start_generation(
        ctx: Context,
        prompt: Prompt,
        negative_prompt: Negative = None,
        width: Width = None,
        height: Height = None,
        num_inference_steps: Steps = None,
        guidance_scale: Guidance = None,
        seed: Seed = None,
        num_images: Count = None,
        scheduler: Scheduler = None,
        output_format: Format = None,
        model: Model = None,
        image: Annotated[
            str | None, Field(description="Set to edit an image instead (see edit_image).")
        ] = None,
        mask_image: Mask = None,
        strength: Strength = None,
    ) -> JobState:
        """Start a generation (or, with `image`, an edit) in the background and return its
        job id at once. Use it when your tool-call timeout is shorter than a generation; then
        call get_generation."""
        with _observe("start_generation"):
            request = _request(
                prompt=prompt,
                image=image,
                mask_image=mask_image,
                strength=strength,
                negative_prompt=negative_prompt,
                width=width,
                height=height,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                seed=seed,
                num_images=num_images,
                scheduler=scheduler,
                output_format=output_format,
                model=model,
            )
            try:
                return await jobs.start(request, request_id=_request_id(), base_url=base_url(ctx))
            except (ServiceError, StoreUnavailableError) as exc:
                raise ToolError(str(exc)) from None

    async def _job_result(state: JobState) -> CallToolResult:
        blocks: list[ContentBlock] = []
        if state.status == "succeeded" and state.result is not None:
            blobs: list[bytes | None] = []
            for ref in state.result.images:
                stored = await service.store.get_image(ref.id)
                blobs.append(stored.data if stored else None)
            blocks = await image_blocks(state.result, blobs, inline_budget)
            text = summary(state.result)
        elif state.status in ("queued", "running"):
            text = (
                f"Job {state.job_id} is {state.status}: step {state.step}/"
                f"{state.total_steps or '?'}. Call get_generation again (wait_seconds up to 50)."
            )
        else:
            text = f"Job {state.job_id} {state.status}: {state.error}"
        return CallToolResult(
            content=[TextContent(text=text), *blocks],
            structured_content=state.model_dump(mode="json"),
        )

    @mcp.tool(
        annotations=Hints(
            title="Get a generation job",
            read_only_hint=True,
            idempotent_hint=True,
            open_world_hint=False,
        )
    )
    async def get_generation(
        job_id: Annotated[str, Field(description="The job id from start_generation.")],
        wait_seconds: Annotated[
            float,
            Field(ge=0, le=300, description="Wait up to this long for the job to finish."),
        ] = 0,
    ) -> Annotated[CallToolResult, JobState]:
        """Status and progress of a job; when it succeeded, the same result as generate_image.
        Keep wait_seconds below your tool-call timeout."""
        with _observe("get_generation"):
            try:
                return await _job_result(await jobs.get(job_id, wait_seconds))
            except (JobNotFoundError, InvalidIdError, StoreUnavailableError) as exc:
                raise ToolError(str(exc)) from None

    @mcp.tool(
        annotations=Hints(
            title="Cancel a generation job",
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=True,
            open_world_hint=False,
        )
    )
    async def cancel_generation(
        job_id: Annotated[str, Field(description="The job id from start_generation.")],
    ) -> JobState:
        """Stop a running job (the runtime stops within one denoising step). A finished job
        is returned unchanged."""
        with _observe("cancel_generation"):
            try:
                return await jobs.cancel(job_id)
            except (JobNotFoundError, InvalidIdError, StoreUnavailableError) as exc:
                raise ToolError(str(exc)) from None

    for extension, mime_type in MIME_TYPES.items():
        _register_image_resource(mcp, service, extension, mime_type)

    @mcp.resource(
        "diffusers://models",
        name="models",
        title="Models",
        description="The configured models with readiness, limits and defaults.",
        mime_type="application/json",
    )
    async def models_resource() -> str:
        return json.dumps(
            {"models": await service.models(), "discovery": service.discovery_status()}, indent=2
        )

    @mcp.resource(
        "diffusers://status",
        name="runtime-status",
        title="Runtime status",
        description="Readiness of each runtime and how busy this server is.",
        mime_type="application/json",
    )
    async def status_resource() -> str:
        ready, runtimes = await service.ready()
        for entry in runtimes:
            entry["waiting"] = service.limiters[entry["model"]].waiting
        return json.dumps(
            {"ready": ready, "runtimes": runtimes, "discovery": service.discovery_status()},
            indent=2,
        )

    _register_prompts(mcp)
    return mcp


def _register_image_resource(
    mcp: MCPServer, service: ImageService, extension: str, mime_type: str
) -> None:
    async def read_image(image_id: str) -> bytes:
        try:
            stored = await service.store.get_image(image_id)
        except (InvalidIdError, StoreUnavailableError) as exc:
            raise ResourceError(str(exc)) from None
        if stored is None:
            raise ResourceError(
                f"Image {image_id!r} does not exist or has expired (images are kept "
                f"{service.store.ttl_seconds} s); generate it again (same seed, same image)."
            )
        return stored.data

    mcp.resource(
        f"image://generated/{{image_id}}.{extension}",
        name=f"generated-{extension}",
        title=f"Generated image ({extension})",
        description="A full-size image returned by generate_image or get_generation.",
        mime_type=mime_type,
    )(read_image)


def _register_prompts(mcp: MCPServer) -> None:
    @mcp.prompt(title="Write an image prompt")
    def image_prompt(subject: str, style: str = "photographic", mood: str = "") -> str:
        """Turn a rough idea into a detailed diffusion prompt plus a negative prompt."""
        return (
            f"Write a prompt for a text-to-image diffusion model showing: {subject}.\n"
            f"Style: {style}. {'Mood: ' + mood + '.' if mood else ''}\n"
            "Structure it as: main subject with concrete details (appearance, pose, materials), "
            "setting, composition and camera (shot type, angle, lens), lighting, colour "
            "palette, style or medium, quality terms. Keep it under 70 words: CLIP-based "
            "models read only about 75 tokens. Put the most important words first. Then "
            "write a negative_prompt listing what to avoid (e.g. blurry, low quality, extra "
            "fingers, watermark, text). Finally call generate_image with both, a fixed seed "
            "so the result can be reproduced, and the size the user needs."
        )

    @mcp.prompt(title="Improve an image prompt")
    def refine_prompt(prompt: str, problem: str) -> str:
        """Fix a prompt whose image came out wrong, keeping what worked."""
        return (
            f"This diffusion prompt produced an unsatisfying image:\n\n{prompt}\n\n"
            f"What was wrong: {problem}\n\n"
            "Rewrite it: keep what worked, move the missing elements to the front, replace "
            "vague words with concrete visual ones, and add the failure to the "
            "negative_prompt. Regenerate with the same seed to compare, then try two or "
            "three other seeds. Raise guidance_scale slightly (e.g. by 1-2) if the image "
            "ignores the prompt; lower it if colours look burnt or oversaturated."
        )

    @mcp.prompt(title="Product or catalogue shot")
    def product_shot(product: str, background: str = "plain white studio backdrop") -> str:
        """A prompt template for clean product images."""
        return (
            f"Create a prompt for a clean product photograph of {product} on a {background}: "
            "centred, three-quarter view, soft diffused key light with a subtle shadow, sharp "
            "focus, high detail, neutral colours. Negative prompt: clutter, text, logo, "
            "watermark, distorted shape, blurry. Then call generate_image with a square size "
            "and a fixed seed."
        )
