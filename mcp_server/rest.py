"""The REST front end: the OpenAI-compatible Images API, stored images, models, health.

Routes raise ServiceError; the app's one exception handler turns it into OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_server.errors import InvalidRequestError, ServiceError
from mcp_server.generation import (
    EditFields,
    GenerationRequest,
    ImageRef,
    OutputFormat,
    PromptFields,
    Strength,
    Timings,
)
from mcp_server.logs import request_id_var
from mcp_server.service import ImageService
from mcp_server.store import ID_PATTERN

log = logging.getLogger(__name__)

SIZE = re.compile(r"^(\d+)x(\d+)$")


def validation_problem(errors: Sequence[Any]) -> InvalidRequestError:
    """One error naming every bad field; the first one is OpenAI's `param`."""
    parts, first = [], None
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        first = first or field
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return InvalidRequestError("Invalid request: " + "; ".join(parts), param=first)


class OpenAIFields(BaseModel):
    """What OpenAI's Images API names its own way, and its extras."""

    n: int = Field(1, ge=1, description="Number of images.")
    size: str | None = Field(None, description='"WIDTHxHEIGHT", e.g. "512x512".')
    response_format: Literal["url", "b64_json"] = "url"
    user: str | None = Field(None, description="Accepted for OpenAI compatibility; unused.")

    def generation(self, **edit: str | None) -> GenerationRequest:
        """The service's request: our fields as they are, OpenAI's translated."""
        width = height = None
        if self.size is not None and self.size != "auto":
            match = SIZE.match(self.size)
            if not match:
                raise InvalidRequestError(
                    f'size must look like "512x512" (WIDTHxHEIGHT), not {self.size!r}',
                    param="size",
                )
            width, height = int(match[1]), int(match[2])
        ours = self.model_dump(include=set(GenerationRequest.model_fields)) | edit
        try:
            return GenerationRequest(**ours, width=width, height=height, num_images=self.n)
        except ValidationError as exc:
            raise validation_problem(exc.errors()) from None


class ImageGenerationRequest(OpenAIFields, EditFields, PromptFields):
    """OpenAI's `POST /v1/images/generations` body plus the runtime's own fields."""


class ImageEditForm(OpenAIFields, PromptFields):
    """OpenAI's `POST /v1/images/edits` multipart form."""

    # Unknown parts are ignored, as OpenAI's endpoint does.
    model_config = ConfigDict(extra="ignore")

    image_file: UploadFile | None = Field(
        None, alias="image", description="PNG, JPEG or WebP to edit."
    )
    image_files: list[UploadFile] | None = Field(
        None, alias="image[]", description="OpenAI's array form; the first one is edited."
    )
    mask: UploadFile | None = Field(
        None, description="Same size as the image; transparent (or white) = repaint."
    )
    strength: Strength = None


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
    model: str
    seed: int | None
    num_inference_steps: int | None
    guidance_scale: float | None
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
        (429, "Busy: every generation slot and queue place is taken; see Retry-After"),
        (502, "The runtime is unreachable, failed or answered garbage"),
        (503, "The runtime's model is not ready or out of device memory"),
        (504, "The runtime did not answer within the timeout"),
    )
}


class Routes:
    def __init__(self, service: ImageService, public_url: str | None) -> None:
        self.service = service
        self.public_url = public_url

    async def generate(self, body: ImageGenerationRequest, request: Request) -> Any:
        return await self._serve(body, body.generation(), request, "POST /v1/images/generations")

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
        return await self._serve(form, generation, request, "POST /v1/images/edits")

    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": info.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "diffusers",
                    **info.model_dump(exclude_none=True),
                }
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
                request_id=request_id_var.get(),
                base_url=self.public_url or str(request.base_url).rstrip("/"),
            )
        )
        # Starlette does not cancel an endpoint whose client went away (an SDK timeout, a
        # Ctrl-C): watch for it, so the runtime stops instead of finishing unwanted images.
        hangup = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServiceError):
                await work
            log.info("client disconnected; generation cancelled")
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
            model=result.model,
            seed=result.seed,
            num_inference_steps=result.num_inference_steps,
            guidance_scale=result.guidance_scale,
            images=result.images,
            timings=result.timings,
        )


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up. The body is already read, so the next ASGI message
    can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
            responses=ERRORS,
        )
    router.add_api_route(
        "/v1/models", routes.models, tags=["models"], summary="List models (OpenAI shape)"
    )
    router.add_api_route(
        "/v1/images/{image_id}",
        routes.image,
        tags=["images"],
        summary="Download a stored image",
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
            400: ERRORS[400],
            404: {"model": ErrorResponse, "description": "Unknown or expired image"},
        },
    )
    router.add_api_route("/health", routes.health, tags=["health"], summary="Liveness")
    router.add_api_route(
        "/ready",
        routes.ready,
        tags=["health"],
        summary="Readiness of this server: its image store answers (not the runtimes')",
        responses={503: {"model": ErrorResponse, "description": "The image store fails"}},
    )
    return router
