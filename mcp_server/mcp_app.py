"""The MCP front end: tools, resources and prompts over the shared ImageService.

Each tool is a method of `Tools`; `build_mcp` only registers them. Every tool goes through one
wrapper (metrics, and a ServiceError becomes an `isError` result with its message), and the
generation tools take the fields of the shared request models as their arguments.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import io
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.apps import Apps, ResourceCsp
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    ContentBlock,
    ImageContent,
    ResourceLink,
    TextContent,
)
from mcp_types import ToolAnnotations as Hints
from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from mcp_server import metrics
from mcp_server.errors import NotFoundError, ServiceError, field_problems
from mcp_server.generation import (
    MIME_TYPES,
    EditRequest,
    GenerationFields,
    GenerationRequest,
    GenerationResult,
)
from mcp_server.jobs import JobManager, JobState
from mcp_server.playground import STATIC
from mcp_server.registry import ModelInfo
from mcp_server.service import ImageService
from wire.logs import new_request_id, request_id

INSTRUCTIONS = """\
Generates images with Hugging Face diffusers models served on KServe.
Use generate_image for a direct call (progress is reported per denoising step) and edit_image
to rework or inpaint an image this server returned. If your tool-call timeout is short, use
start_generation, then get_generation with wait_seconds until the status is succeeded, failed
or cancelled. list_models shows the models, their limits and defaults. Results carry a small
inline image plus a resource_link (and, over HTTP, a URL) to the full image, which expires
after a while. Pass the returned seed again to reproduce an image."""

JobId = Annotated[str, Field(description="From start_generation.")]
VIEWER_URI = "ui://diffusers-mcp/viewer.html"
# get_generation's default wait: under the 5 s request timeout of the shortest common client
# (openai-agents' MCP client), long enough that polling is not a busy loop.
WAIT_SECONDS = 3.0


class ModelList(BaseModel):
    models: list[ModelInfo]
    discovery: dict[str, Any] | None = Field(
        None,
        description="Namespaces, when each was last listed, stale since when and why; null "
        "when discovery is off.",
    )


class Tools:
    """The six tools. Their docstrings are the descriptions agents read."""

    def __init__(
        self, service: ImageService, jobs: JobManager, inline_budget: int, public_url: str | None
    ) -> None:
        self.service = service
        self.jobs = jobs
        self.inline_budget = inline_budget
        self.public_url = public_url

    async def generate_image(
        self, ctx: Context, request: GenerationRequest
    ) -> Annotated[CallToolResult, GenerationResult]:
        """Generate new images from a text prompt and wait (progress per denoising step).
        Returns a small inline image, a resource_link to the full image and the parameters
        used (the seed reproduces it). To change an existing image, use edit_image."""
        return await self._generate(ctx, request, "generate_image")

    async def edit_image(
        self, ctx: Context, request: GenerationRequest
    ) -> Annotated[CallToolResult, GenerationResult]:
        """Rework an existing image following a prompt (image-to-image), or repaint only the
        masked part (inpainting). Same result as generate_image; the original is kept."""
        return await self._generate(ctx, request, "edit_image")

    async def list_models(self) -> ModelList:
        """Every model: its name (pass it as `model`), whether it is ready, its limits (max
        pixels, steps, images per request), defaults and schedulers, its style adapters (`loras`,
        each with a description; pass them in `loras`); where its folder gives them, the words
        it knows (`vocabulary`) and prompts it draws well (`example_prompts`)."""
        return ModelList(
            models=await self.service.models(), discovery=self.service.discovery_status()
        )

    async def start_generation(self, ctx: Context, request: GenerationRequest) -> JobState:
        """Start a generation (with `image`, an edit) in the background and return its job id
        at once, for tool-call timeouts shorter than a generation; then call get_generation."""
        return await self.jobs.start(
            request, request_id=_request_id(), base_url=self._base_url(ctx)
        )

    async def get_generation(
        self,
        job_id: JobId,
        wait_seconds: Annotated[
            float,
            Field(
                ge=0,
                le=300,
                description="Wait up to this long for the end; keep it a second or more under "
                "your tool-call timeout (the default suits a 5 s one).",
            ),
        ] = WAIT_SECONDS,
        include_preview: Annotated[
            bool, Field(description="While running, add the latest partial image.")
        ] = False,
    ) -> Annotated[CallToolResult, JobState]:
        """A job's status and progress; once succeeded, the same result as generate_image."""
        state = await self.jobs.get(job_id, wait_seconds)
        blocks: list[ContentBlock] = []
        if state.status == "succeeded" and state.result is not None:
            blobs = [await self._stored(ref.id) for ref in state.result.images]
            blocks = await self._image_blocks(state.result, blobs)
            text = summary(state.result)
        elif state.status in ("queued", "running"):
            text = (
                f"Job {state.job_id} is {state.status}: step {state.step}/"
                f"{state.total_steps or '?'}. Call get_generation again (wait_seconds a second "
                "or more under your tool-call timeout)."
            )
            preview = await self._preview_block(job_id) if include_preview else None
            if preview is not None:
                blocks = [preview]
                text += " The image is the latest partial image: the picture as it forms."
            elif include_preview:
                text += " No partial image yet."
        else:
            text = f"Job {state.job_id} {state.status}: {state.error}"
        return CallToolResult(
            content=[TextContent(text=text), *blocks],
            structured_content=state.model_dump(mode="json"),
        )

    async def cancel_generation(self, job_id: JobId) -> JobState:
        """Stop a job (the runtime stops within one denoising step). A finished job is
        returned unchanged."""
        return await self.jobs.cancel(job_id)

    async def _generate(
        self, ctx: Context, request: GenerationRequest, entry: str
    ) -> CallToolResult:
        async def progress(step: int, total: int) -> None:
            # After the last step the runtime decodes the latents into the picture.
            message = f"step {step}/{total}" if step < total else "decoding"
            await ctx.report_progress(step, total, message)

        result, blobs = await self.service.generate(
            request,
            entry=entry,
            request_id=_request_id(),
            on_progress=progress,
            base_url=self._base_url(ctx),
        )
        blocks = await self._image_blocks(result, list(blobs))
        return CallToolResult(
            content=[TextContent(text=summary(result)), *blocks],
            structured_content=result.model_dump(mode="json"),
        )

    def _base_url(self, ctx: Context) -> str | None:
        if self.public_url:
            return self.public_url
        url = getattr(ctx.request_context.request, "base_url", None)
        return str(url).rstrip("/") if url is not None else None

    async def _stored(self, image_id: str) -> bytes | None:
        """The bytes for an inline copy; a result whose image expired still has its text."""
        try:
            return (await self.service.read_image(image_id)).data
        except NotFoundError:
            return None

    async def _inline(self, data: bytes | None, mime_type: str) -> tuple[bytes, str] | None:
        """DATA as it is when it fits the inline budget, else a downscaled preview."""
        if data is not None and len(data) <= self.inline_budget:
            return data, mime_type
        if data is not None and self.inline_budget > 0:
            return await asyncio.to_thread(_preview, data, self.inline_budget)
        return None

    async def _preview_block(self, job_id: str) -> ImageContent | None:
        """A running job's latest partial image, when it has one that has not expired."""
        image_id = await self.jobs.preview(job_id)
        if image_id is None:
            return None
        try:
            stored = await self.service.read_image(image_id)
        except NotFoundError:
            return None
        inline = await self._inline(stored.data, stored.mime_type)
        if inline is None:
            return None
        return ImageContent(data=base64.b64encode(inline[0]).decode(), mime_type=inline[1])

    async def _image_blocks(
        self, result: GenerationResult, blobs: list[bytes | None]
    ) -> list[ContentBlock]:
        """Per image: inline (or a preview) when its bytes are at hand, and always the link."""
        blocks: list[ContentBlock] = []
        for ref, data in zip(result.images, blobs, strict=True):
            inline = await self._inline(data, ref.mime_type)
            if inline is not None:
                encoded = base64.b64encode(inline[0]).decode()
                blocks.append(ImageContent(data=encoded, mime_type=inline[1]))
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
        f"guidance {result.guidance_scale}, seed {result.seed}"
        + "".join(f", LoRA {lora.name} x{lora.scale:g}" for lora in result.loras)
        + f" ({seconds:.1f} s). "
        f"Full image(s): {links}"
    )


def _preview(data: bytes, budget: int) -> tuple[bytes, str] | None:
    """A JPEG no larger than `budget` bytes, shrinking until it fits."""
    # Pillow is imported lazily: only previews of large images need it.
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    side = max(rgb.size)
    while side >= 16:
        copy = rgb.copy()
        copy.thumbnail((side, side))
        buffer = io.BytesIO()
        copy.save(buffer, format="JPEG", quality=75)
        if buffer.tell() <= budget:
            return buffer.getvalue(), "image/jpeg"
        side //= 2
    return None


def _request_id() -> str:
    """Over HTTP the request middleware has set it (from X-Request-ID or minted); over stdio
    each tool call gets its own."""
    current = request_id.get() or new_request_id()
    request_id.set(current)
    return current


def build_mcp(
    service: ImageService, jobs: JobManager, inline_budget: int, public_url: str | None
) -> MCPServer:
    tools = Tools(service, jobs, inline_budget, public_url)
    # Hints say what a client may assume: nothing here reaches outside this service.
    writes = Hints(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
    reads = Hints(read_only_hint=True, idempotent_hint=True)
    mcp = _Server(
        "diffusers-mcp",
        instructions=INSTRUCTIONS,
        version="0.1.0",
        extensions=[_viewer()],
        tools=[
            _tool(tools.generate_image, "Generate image", writes, GenerationFields, view=True),
            _tool(tools.edit_image, "Edit image", writes, EditRequest, view=True),
            _tool(tools.list_models, "List models", reads),
            _tool(
                tools.start_generation, "Start an image generation job", writes, GenerationRequest
            ),
            _tool(tools.get_generation, "Get a generation job", reads, view=True),
            _tool(
                tools.cancel_generation,
                "Cancel a generation job",
                Hints(read_only_hint=False, destructive_hint=True, idempotent_hint=True),
            ),
        ],
    )
    _register_resources(mcp, service)
    _register_prompts(mcp)
    return mcp


def _viewer() -> Apps:
    """The MCP App: one `ui://` page that shows a generation's result and redraws it through
    the host (again, variations, larger, an edit with a painted mask)."""
    apps = Apps()
    apps.add_html_resource(
        VIEWER_URI,
        (STATIC / "viewer.html").read_text(),
        name="image-viewer",
        title="Image viewer",
        description="Shows a generated image with its seed and size, and redraws it.",
        # Nothing from outside: the image arrives in the tool result, and its tools are
        # called through the host.
        csp=ResourceCsp(connect_domains=[], resource_domains=[]),
        prefers_border=True,
    )
    return apps


class _Server(MCPServer):
    async def get_prompt(self, name: str, arguments: Any = None, context: Any = None) -> Any:
        """The SDK's, with the spec's code for a caller's mistake: an unknown prompt or bad
        arguments are invalid params (-32602), not an internal error."""
        known = [prompt.name for prompt in await self.list_prompts()]
        if name not in known:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt {name!r}; prompts/list has {known}")
        try:
            return await super().get_prompt(name, arguments, context)
        except ValueError as exc:
            raise MCPError(INVALID_PARAMS, f"Prompt {name!r}: {exc}") from None


def _tool(
    handler: Callable[..., Awaitable[Any]],
    title: str,
    hints: Hints,
    arguments: type[BaseModel] | None = None,
    view: bool = False,
) -> Tool:
    """HANDLER as a tool: guarded, its arguments ARGUMENTS' fields when given (top level, as
    agents expect, built into a GenerationRequest), its schemas compact."""
    name = handler.__name__
    guarded = _guarded(name, handler)
    function = guarded if arguments is None else _flat(guarded, arguments)
    tool = _ArgumentsExplained.from_function(
        function,
        name=name,
        description=" ".join((handler.__doc__ or "").split()),
        annotations=hints.model_copy(update={"title": title, "open_world_hint": False}),
        # With VIEW, hosts that render MCP Apps show the result in the viewer; others ignore it.
        meta={"ui": {"resourceUri": VIEWER_URI}} if view else None,
    )
    # Validation uses the argument and output models, never these published schemas: they
    # can be as compact as an agent's context wants. Inputs are closed objects whose optional
    # fields take null: strict-mode conversions (openai-agents, langchain, pydantic-ai on
    # OpenAI) make every field required, and a model then sends null for "the default".
    tool.parameters = {
        **compact_schema(_inlined(tool.parameters)),
        "additionalProperties": False,
    }
    if tool.fn_metadata.output_schema is not None:
        tool.fn_metadata.output_schema = compact_schema(tool.fn_metadata.output_schema)
    return tool


class _ArgumentsExplained(Tool):
    """A tool whose argument errors name each field, what was wrong and what is allowed,
    without pydantic's documentation links: they are read by a model."""

    async def run(self, arguments: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().run(arguments, *args, **kwargs)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = field_problems(exc.__cause__.errors())
            raise ToolError(f"Invalid arguments for {self.name}: {problems}") from None


def _guarded(name: str, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The one translation of errors for MCP: a ServiceError's message is the tool error."""

    @functools.wraps(handler)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        outcome = "error"
        try:
            result = await handler(*args, **kwargs)
            outcome = "ok"
            return result
        except ServiceError as exc:
            raise ToolError(str(exc)) from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.TOOL_CALLS.labels(name, outcome).inc()

    return guarded


def _flat(
    handler: Callable[..., Awaitable[Any]], arguments: type[BaseModel]
) -> Callable[..., Awaitable[Any]]:
    """HANDLER(ctx, request) as a function whose parameters are ARGUMENTS' fields."""

    async def tool(ctx: Context, **fields: Any) -> Any:
        try:
            request = GenerationRequest(**fields)
        except ValidationError as exc:
            raise ServiceError(f"Invalid arguments: {field_problems(exc.errors())}") from None
        return await handler(ctx, request)

    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context)
    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[
                (
                    field.annotation,
                    *field.metadata,
                    Field(description=field.description),
                    *(() if field.is_required() else (EMPTY_IS_NULL,)),
                )
            ],
            default=inspect.Parameter.empty if field.is_required() else field.default,
        )
        for name, field in arguments.model_fields.items()
    ]
    returns = inspect.signature(handler, eval_str=True).return_annotation
    # The SDK reads a tool's parameters from its signature.
    tool.__signature__ = inspect.Signature([context, *parameters], return_annotation=returns)  # type: ignore[attr-defined]
    return tool


def _empty_is_null(value: object) -> object:
    return None if value == "" else value


# An empty string means the default, as null does: strict-mode clients send one for what they
# would leave out. No optional argument here has a meaningful empty value.
EMPTY_IS_NULL = BeforeValidator(_empty_is_null)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """SCHEMA with each reference to its `$defs` replaced by the definition: openai-agents'
    strict-mode conversion refuses a reference inside a nullable list (the `loras` items)."""
    definitions = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref", "")
        if reference.startswith("#/$defs/"):
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**definitions[reference.removeprefix("#/$defs/")], **rest})
        return {key: walk(value) for key, value in node.items() if key != "$defs"}

    result: dict[str, Any] = walk(schema)
    return result


def compact_schema(node: Any) -> Any:
    """A JSON schema without what an agent pays for and never needs: generated titles, the
    defaults `default: null` and `additionalProperties: true`, and `anyOf` with null (a
    nullable value becomes `"type": [T, "null"]`, an enum's null one of its values)."""
    if isinstance(node, list):
        return [compact_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    compact: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            compact[key] = {field: compact_schema(schema) for field, schema in value.items()}
        elif key == "title" or (key, value) in (("default", None), ("additionalProperties", True)):
            continue
        else:
            compact[key] = compact_schema(value)
    options = compact.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        (other,) = [option for option in options if option != {"type": "null"}]
        if isinstance(other.get("type"), str):
            del compact["anyOf"]
            compact = {**other, **compact, "type": [other["type"], "null"]}
            if "enum" in other:
                compact["enum"] = [*other["enum"], None]
    return compact


def _register_resources(mcp: MCPServer, service: ImageService) -> None:
    async def read_image(image_id: str) -> bytes:
        try:
            return (await service.read_image(image_id)).data
        except NotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from None
        except ServiceError as exc:
            raise ResourceError(str(exc)) from None

    for extension, mime_type in MIME_TYPES.items():
        mcp.resource(
            f"image://generated/{{image_id}}.{extension}",
            name=f"generated-{extension}",
            title=f"Generated image ({extension})",
            description="A full-size image returned by generate_image or get_generation.",
            mime_type=mime_type,
        )(read_image)

    @mcp.resource(
        "diffusers://models",
        name="models",
        title="Models",
        description="The configured models with readiness, limits and defaults.",
        mime_type="application/json",
    )
    async def models() -> str:
        listing = ModelList(models=await service.models(), discovery=service.discovery_status())
        return listing.model_dump_json(indent=2, exclude_none=True)

    @mcp.resource(
        "diffusers://status",
        name="runtime-status",
        title="Runtime status",
        description="Readiness of each runtime and how busy this server is.",
        mime_type="application/json",
    )
    async def status() -> str:
        return (await service.status()).model_dump_json(indent=2)


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
