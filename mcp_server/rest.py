"""The REST front end: the OpenAI-compatible Images API, stored images, models, health.

Routes raise ServiceError; the app's one exception handler turns it into OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError

from mcp_server.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    ServiceError,
    field_problems,
)
from mcp_server.generation import (
    EditFields,
    GenerationRequest,
    GenerationResult,
    ImageRef,
    ImageRequest,
    PromptFields,
    Timings,
)
from mcp_server.runtime_client import PartialImage
from mcp_server.service import ImageService
from mcp_server.store import ID_PATTERN
from wire.fields import (
    EDIT_RULES,
    OPTION_RULES,
    STREAM_ONLY,
    ImageCount,
    OutputFormat,
    limit_keywords,
    with_limits,
)
from wire.logs import request_id
from wire.openai_images import (
    STYLE_REFUSED,
    image_event,
    model_entry,
    parse_size,
    progress_comment,
    stored_comment,
)
from wire.request import WHOLE, OutputOptions, StreamFields, StrengthField
from wire.sse import SSE_HEADERS, sse

log = logging.getLogger(__name__)

JsonDict = dict[str, JsonValue]
IMAGE_TYPES = "image/png, image/jpeg, image/webp"


def _flag(value: object) -> object:
    """true or false; pydantic's lax mode would read 1 and 0 as them (a form's "true" still
    passes)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]


def validation_problem(errors: Sequence[Any]) -> InvalidRequestError:
    """One error naming every bad field; the first one is OpenAI's `param`."""
    loc = [str(p) for p in (errors[0].get("loc", ()) if errors else ()) if p != "body"]
    first = ".".join(loc) or "body" if errors else None
    return InvalidRequestError("Invalid request: " + field_problems(errors), param=first)


class OpenAIFields(StreamFields, OutputOptions):
    """What OpenAI's Images API names its own way, and its extras."""

    n: Annotated[ImageCount, WHOLE] = Field(1, description="Number of images.")
    size: str | None = Field(None, description='"WIDTHxHEIGHT", e.g. "512x512".')
    response_format: Literal["url", "b64_json"] = "url"
    user: str | None = Field(None, description="Accepted for OpenAI compatibility; unused.")
    moderation: Literal["auto", "low"] | None = Field(
        None, description="Accepted for OpenAI compatibility; nothing is moderated here."
    )
    # Taken to say why it is refused; the document allows only null.
    style: str | None = Field(
        None,
        description="DALL-E 3's; refused: put the style in the prompt.",
        json_schema_extra={"enum": [None]},
    )
    stream: Flag = Field(False, description="Answer with OpenAI's server-sent image events.")

    def generation(self, **edit: str | None) -> ImageRequest:
        """The service's request: our fields as they are, OpenAI's translated."""
        if self.style is not None:
            raise InvalidRequestError(STYLE_REFUSED, param="style")
        if self.partial_images and not self.stream:
            raise InvalidRequestError(
                "partial_images: only a stream carries partial images; set stream to true, "
                "or leave partial_images out",
                param="partial_images",
            )
        try:
            width, height = parse_size(self.size) or (None, None)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="size") from None
        ours = self.model_dump(include=set(ImageRequest.model_fields)) | edit
        try:
            return ImageRequest(**ours, width=width, height=height, num_images=self.n)
        except ValidationError as exc:
            raise validation_problem(exc.errors()) from None


# Only the rules a request of these fields can break; the runtime checks them all.
REQUEST_RULES: list[JsonValue] = [STREAM_ONLY, *OPTION_RULES]


class ImageGenerationRequest(OpenAIFields, EditFields, PromptFields):
    """OpenAI's `POST /v1/images/generations` body plus the runtime's own fields."""

    model_config = ConfigDict(json_schema_extra={"allOf": [*REQUEST_RULES, *EDIT_RULES]})


class ImageEditForm(OpenAIFields, StrengthField, PromptFields):
    """OpenAI's `POST /v1/images/edits` multipart form."""

    # Unknown parts are ignored, as OpenAI's endpoint does.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"allOf": REQUEST_RULES})

    image_file: UploadFile | None = Field(
        None, alias="image", description="PNG, JPEG or WebP to edit."
    )
    image_files: list[UploadFile] | None = Field(
        None,
        alias="image[]",
        description="OpenAI's array form, in place of image; the first one is edited.",
    )
    mask: UploadFile | None = Field(
        None, description="Same size as the image; transparent (or white) = repaint."
    )


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """OpenAI's answer shape, plus what a caller needs to reproduce or fetch the images."""

    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str
    # Left out when unknown (quality: when num_inference_steps chose the steps).
    quality: str | None = None
    background: str | None = None
    model: str
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    images: list[ImageRef]
    timings: Timings


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request; the message names the field"),
        (401, "Missing or wrong bearer token (when MCP_AUTH_TOKEN is set)"),
        (404, "An image id or URI that names no stored (or an expired) image"),
        (413, "The body is larger than the server takes"),
        (429, "Busy: every generation slot and queue place is taken; see Retry-After"),
        (502, "The runtime is unreachable, failed or answered garbage"),
        (503, "The runtime's model is not ready or out of device memory"),
        (504, "The runtime did not answer within the timeout"),
    )
}
# Methods a POST-only route answers 405 to, itself: GET would otherwise reach
# /v1/images/{image_id} and be refused as a bad image id.
NOT_POST = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Routes:
    def __init__(self, service: ImageService, public_url: str | None) -> None:
        self.service = service
        self.public_url = public_url

    async def generate(self, body: ImageGenerationRequest, request: Request) -> Any:
        entry = "POST /v1/images/generations"
        if body.stream:
            return await self._stream(body, body.generation(), request, entry, "image_generation")
        return await self._serve(body, body.generation(), request, entry)

    async def edit(
        self,
        request: Request,
        form: Annotated[ImageEditForm, Form(media_type="multipart/form-data")],
    ) -> Any:
        source = form.image_file or (form.image_files[0] if form.image_files else None)
        if source is None:
            raise InvalidRequestError(
                "image: required; send the image to edit as a multipart file", param="image"
            )
        generation = form.generation(image=await _b64(source), mask_image=await _b64(form.mask))
        entry = "POST /v1/images/edits"
        if form.stream:
            return await self._stream(form, generation, request, entry, "image_edit")
        return await self._serve(form, generation, request, entry)

    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                model_entry(info.name) | info.model_dump(exclude_none=True)
                for info in await self.service.models()
            ],
            "discovery": self.service.discovery_status(),
        }

    async def image(
        self,
        # Documented, but checked by the store, whose message says what a valid id looks like.
        image_id: Annotated[
            str,
            Path(json_schema_extra={"pattern": ID_PATTERN.pattern}, description="From a result."),
        ],
    ) -> Response:
        stored = await self.service.read_image(image_id)
        return Response(
            stored.data,
            media_type=stored.mime_type,
            headers={"Cache-Control": "private, max-age=3600"},
        )

    async def health(
        self,
        details: Annotated[
            bool, Query(description="Add each runtime's readiness and discovery's state.")
        ] = False,
    ) -> dict[str, Any]:
        if not details:
            return {"status": "ok"}
        return {"status": "ok", **(await self.service.status()).model_dump()}

    async def openapi(self, request: Request) -> dict[str, Any]:
        """The API document, with the default model's limits on the fields they bound: a
        request it calls valid is one that model accepts (other models may differ: GET
        /v1/models lists each one's)."""
        document: dict[str, Any] = copy.deepcopy(request.app.openapi())
        # FastAPI's 422 for a failed validation never goes out: the app answers 400.
        for operation in (op for item in document["paths"].values() for op in item.values()):
            operation["responses"].pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            document["components"]["schemas"].pop(unused)
        form = document["components"]["schemas"][ImageEditForm.__name__]
        # A form part cannot be null: unset is left out.
        for name, prop in form["properties"].items():
            branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
            form["properties"][name] = {**prop, **branches[0]} if branches else prop
        # JSON Schema's anyOf of two required sets is lost on schemathesis and most form
        # generators: the document requires `image`, and says `image[]` may stand in for it.
        form["required"] = [*form.get("required", []), "image"]
        edits = document["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
        edits["multipart/form-data"]["encoding"] = {
            "image": {"contentType": IMAGE_TYPES},
            "mask": {"contentType": IMAGE_TYPES},
        }
        keywords = {"model": {"enum": [*self.service.registry.names(), None]}}
        capabilities = await self.service.capabilities()
        if capabilities is not None:
            keywords |= limit_keywords(capabilities)
        schemas = document["components"]["schemas"]
        with_limits(schemas, (ImageGenerationRequest.__name__, ImageEditForm.__name__), keywords)
        return document

    async def ready(self) -> dict[str, bool]:
        await self.service.check_ready()
        return {"ready": True}

    async def _serve(
        self, body: OpenAIFields, generation: GenerationRequest, request: Request, entry: str
    ) -> Any:
        work = asyncio.ensure_future(
            self.service.generate(
                generation,
                entry=entry,
                request_id=request_id.get(),
                base_url=self.public_url or str(request.base_url).rstrip("/"),
            )
        )
        if not await _unless_hangup(work, request, work):
            return Response(status_code=499)
        result, blobs = work.result()
        if body.response_format == "b64_json":
            data = [ImageData(b64_json=base64.b64encode(blob).decode()) for blob in blobs]
        else:
            data = [ImageData(url=ref.url) for ref in result.images]
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            output_format=generation.output_format or "png",
            size=f"{result.width}x{result.height}",
            quality=result.quality,
            background=result.background,
            model=result.model,
            seed=result.seed,
            num_inference_steps=result.num_inference_steps,
            guidance_scale=result.guidance_scale,
            images=result.images,
            timings=result.timings,
        )

    async def _stream(
        self,
        body: OpenAIFields,
        generation: GenerationRequest,
        request: Request,
        entry: str,
        kind: str,
    ) -> Response:
        """OpenAI's image stream over the runtime's. Until the runtime reports its first step
        a failure is the usual JSON error; after that, an `error` event."""
        events: asyncio.Queue[tuple[int, int] | PartialImage | None] = asyncio.Queue()

        async def on_progress(step: int, total: int) -> None:
            events.put_nowait((step, total))

        async def on_partial(partial: PartialImage) -> None:
            events.put_nowait(partial)

        work = asyncio.ensure_future(
            self.service.generate(
                generation,
                entry=entry,
                request_id=request_id.get(),
                on_progress=on_progress,
                on_partial=on_partial,
                partial_images=body.partial_images,
                base_url=self.public_url or str(request.base_url).rstrip("/"),
            )
        )
        work.add_done_callback(lambda _: events.put_nowait(None))
        first = asyncio.ensure_future(events.get())
        if not await _unless_hangup(first, request, work):
            return Response(status_code=499)
        if first.result() is None:
            work.result()  # raises what failed before any step: a plain JSON error
        return StreamingResponse(
            _openai_events(first.result(), events, work, kind),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )


async def _openai_events(
    item: tuple[int, int] | PartialImage | None,
    events: asyncio.Queue[tuple[int, int] | PartialImage | None],
    work: asyncio.Future[tuple[GenerationResult, list[bytes]]],
    kind: str,
) -> AsyncIterator[bytes]:
    """KIND.partial_image events as the runtime makes them, then one KIND.completed event per
    image in image order (KIND: image_generation or image_edit). With n > 1 the partial images
    of a step come in image order: the k-th event with a given partial_image_index is image
    k's."""
    try:
        while item is not None:
            if isinstance(item, PartialImage):
                yield image_event(
                    kind,
                    item.b64,
                    partial_image_index=item.partial_image_index,
                    size=f"{item.width}x{item.height}",
                    quality=item.quality,
                    background=item.background,
                    output_format=item.output_format,
                )
            else:
                yield progress_comment(*item)
            item = await events.get()
        try:
            result, blobs = work.result()
        except ServiceError as exc:
            yield sse("error", exc.body())
            return
        for ref, blob in zip(result.images, blobs, strict=True):
            # What the JSON answer says beside the image, for the playground.
            yield stored_comment(
                {
                    "id": ref.id,
                    "url": ref.url,
                    "model": result.model,
                    "seed": result.seed,
                    "num_inference_steps": result.num_inference_steps,
                    "guidance_scale": result.guidance_scale,
                    "speed": result.speed,
                    "timings": result.timings.model_dump(exclude_none=True),
                    "expires_at": result.expires_at,
                }
            )
            yield image_event(
                kind,
                base64.b64encode(blob).decode(),
                size=f"{result.width}x{result.height}",
                quality=result.quality,
                background=result.background,
                output_format=ref.mime_type.removeprefix("image/"),
            )
    finally:
        # Also when the client hangs up mid-stream: the runtime stops within one step.
        work.cancel()


async def _unless_hangup(
    waiting: asyncio.Future[Any], request: Request, work: asyncio.Future[Any]
) -> bool:
    """Wait for WAITING; when the client hangs up first (an SDK timeout, a Ctrl-C), cancel
    WORK and say False. Starlette does not cancel an endpoint whose client went away: without
    this the runtime would finish images nobody wants."""
    hangup = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
    if waiting.done():
        return True
    waiting.cancel()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, ServiceError):
        await work
    log.info("client disconnected; generation cancelled")
    return False


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up. The body is already read, so the next ASGI message
    can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _post_only(request: Request) -> Response:
    raise MethodNotAllowedError(request.method, request.url.path, "POST")


async def _b64(upload: UploadFile | None) -> str | None:
    return base64.b64encode(await upload.read()).decode() if upload is not None else None


def build_router(service: ImageService, public_url: str | None) -> APIRouter:
    routes = Routes(service, public_url)
    router = APIRouter()
    for path, endpoint, summary in (
        ("/v1/images/generations", routes.generate, "Generate images (OpenAI Images API)"),
        (
            "/v1/images/edits",
            routes.edit,
            "Edit an image: image-to-image, or inpainting with a mask (OpenAI Images API)",
        ),
    ):
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            tags=["images"],
            summary=summary,
            response_model=ImagesResponse,
            response_model_exclude_none=True,
            responses={
                200: {
                    "description": "The images; with stream true, OpenAI's image events",
                    "content": {"text/event-stream": {}},
                },
                **ERRORS,
            },
        )
        router.add_api_route(path, _post_only, methods=NOT_POST, include_in_schema=False)
    router.add_api_route(
        "/v1/models",
        routes.models,
        tags=["models"],
        summary="List models (OpenAI shape)",
        responses={401: ERRORS[401]},
    )
    router.add_api_route(
        "/v1/images/{image_id}",
        routes.image,
        tags=["images"],
        summary="Download a stored image",
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
            400: ERRORS[400],
            401: ERRORS[401],
            404: {"model": ErrorResponse, "description": "Unknown or expired image"},
        },
    )
    router.add_api_route(
        "/health",
        routes.health,
        tags=["health"],
        summary="Liveness",
        responses={400: {"model": ErrorResponse, "description": "details is not a boolean"}},
    )
    router.add_api_route("/openapi.json", routes.openapi, include_in_schema=False)
    router.add_api_route(
        "/ready",
        routes.ready,
        tags=["health"],
        summary="Readiness of this server: its image store answers (not the runtimes')",
        responses={503: {"model": ErrorResponse, "description": "The image store fails"}},
    )
    return router
