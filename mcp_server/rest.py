"""REST routes: the OpenAI-compatible Images API, stored images, models, health."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_server.logs import request_id_var
from mcp_server.service import (
    GenerationRequest,
    ImageRef,
    ImageService,
    OutputFormat,
    ServiceError,
    Timings,
)
from mcp_server.store import ID_PATTERN, InvalidIdError, StoreUnavailableError

log = logging.getLogger(__name__)

SIZE = re.compile(r"^(\d+)x(\d+)$")


def error_response(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The OpenAI error shape, so OpenAI clients surface `message`."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": kind}},
        status_code=status,
        headers=headers,
    )


def service_error_response(exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return error_response(exc.status, str(exc), kind=exc.kind, headers=headers)


class ImageGenerationRequest(BaseModel):
    """OpenAI's `POST /v1/images/generations` body plus the runtime's own fields."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, description="Number of images.")
    size: str | None = Field(None, description='"WIDTHxHEIGHT", e.g. "512x512".')
    response_format: Literal["url", "b64_json"] = "url"
    model: str | None = None
    user: str | None = Field(None, description="Accepted for OpenAI compatibility; unused.")
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0)
    scheduler: str | None = None
    output_format: OutputFormat | None = None
    image: str | None = Field(None, description="Source image id, URL or base64 for an edit.")
    mask_image: str | None = Field(None, description="Inpainting mask, like image.")
    strength: float | None = Field(None, gt=0, le=1)

    def to_generation(self) -> GenerationRequest:
        width = height = None
        if self.size is not None and self.size != "auto":
            match = SIZE.match(self.size)
            if not match:
                raise ValueError(f'size must look like "512x512" (WIDTHxHEIGHT), not {self.size!r}')
            width, height = int(match[1]), int(match[2])
        return GenerationRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=width,
            height=height,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            num_images=self.n,
            scheduler=self.scheduler,
            output_format=self.output_format,
            model=self.model,
            image=self.image,
            mask_image=self.mask_image,
            strength=self.strength,
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


def validation_problem(exc: ValidationError | Any) -> tuple[str, str | None]:
    """One message naming every bad field, and the first field for OpenAI's `param`."""
    errors = exc.errors()
    parts, first = [], None
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        first = first or field
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "Invalid request: " + "; ".join(parts), first


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up. The body is already read, so the next ASGI message
    can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def public_base(request: Request, public_url: str | None) -> str:
    return public_url or str(request.base_url).rstrip("/")


async def _upload_b64(upload: UploadFile | None) -> str | None:
    return base64.b64encode(await upload.read()).decode() if upload is not None else None


def build_router(service: ImageService, public_url: str | None) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/images/generations",
        tags=["images"],
        summary="Generate images (OpenAI Images API)",
        response_model=ImagesResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
    )
    async def generate(body: ImageGenerationRequest, request: Request) -> Any:
        return await serve(body, request, "POST /v1/images/generations")

    @router.post(
        "/v1/images/edits",
        tags=["images"],
        summary="Edit an image: image-to-image, or inpainting with a mask (OpenAI Images API)",
        response_model=ImagesResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
    )
    async def edit(
        request: Request,
        prompt: Annotated[str, Form(min_length=1)],
        image: Annotated[UploadFile | None, File(description="PNG, JPEG or WebP to edit.")] = None,
        images: Annotated[
            list[UploadFile] | None,
            File(alias="image[]", description="OpenAI's array form; the first one is edited."),
        ] = None,
        mask: Annotated[
            UploadFile | None,
            File(description="Same size as the image; transparent (or white) = repaint."),
        ] = None,
        n: Annotated[int, Form(ge=1)] = 1,
        size: Annotated[str | None, Form()] = None,
        response_format: Annotated[Literal["url", "b64_json"], Form()] = "url",
        model: Annotated[str | None, Form()] = None,
        user: Annotated[str | None, Form()] = None,
        negative_prompt: Annotated[str | None, Form()] = None,
        strength: Annotated[float | None, Form(gt=0, le=1)] = None,
        num_inference_steps: Annotated[int | None, Form(ge=1)] = None,
        guidance_scale: Annotated[float | None, Form(ge=0)] = None,
        seed: Annotated[int | None, Form(ge=0)] = None,
        scheduler: Annotated[str | None, Form()] = None,
        output_format: Annotated[OutputFormat | None, Form()] = None,
    ) -> Any:
        source = image or (images[0] if images else None)
        if source is None:
            return error_response(
                400, "image: required; send the image to edit as a multipart file", param="image"
            )
        body = ImageGenerationRequest(
            prompt=prompt,
            n=n,
            size=size,
            response_format=response_format,
            model=model,
            user=user,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            scheduler=scheduler,
            output_format=output_format,
            image=await _upload_b64(source),
            mask_image=await _upload_b64(mask),
            strength=strength,
        )
        return await serve(body, request, "POST /v1/images/edits")

    async def serve(body: ImageGenerationRequest, request: Request, entry: str) -> Any:
        try:
            generation = body.to_generation()
        except (ValueError, ValidationError) as exc:
            if isinstance(exc, ValidationError):
                message, param = validation_problem(exc)
            else:
                message, param = str(exc), "size"
            return error_response(400, message, param=param)
        work = asyncio.ensure_future(
            service.generate(
                generation,
                entry=entry,
                request_id=request_id_var.get(),
                base_url=public_base(request, public_url),
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
        try:
            result, blobs = work.result()
        except ServiceError as exc:
            return service_error_response(exc)
        if body.response_format == "b64_json":
            data = [ImageData(b64_json=base64.b64encode(blob).decode()) for blob in blobs]
        else:
            data = [ImageData(url=ref.url) for ref in result.images]
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            output_format=body.output_format or "png",
            size=f"{result.width}x{result.height}",
            model=result.model,
            seed=result.seed,
            num_inference_steps=result.num_inference_steps,
            guidance_scale=result.guidance_scale,
            images=result.images,
            timings=result.timings,
        )

    @router.get("/v1/models", tags=["models"], summary="List models (OpenAI shape)")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m["name"], "object": "model", "created": 0, "owned_by": "diffusers", **m}
                for m in await service.models()
            ],
            "discovery": service.discovery_status(),
        }

    @router.get(
        "/v1/images/{image_id}",
        tags=["images"],
        summary="Download a stored image",
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
            400: ERRORS[400],
            404: {"model": ErrorResponse, "description": "Unknown or expired image"},
        },
    )
    async def image(
        # Documented, but checked by the store, whose message says what a valid id looks like.
        image_id: Annotated[
            str,
            Path(json_schema_extra={"pattern": ID_PATTERN.pattern}, description="From a result."),
        ],
    ) -> Response:
        try:
            stored = await service.store.get_image(image_id)
        except InvalidIdError as exc:
            return error_response(400, str(exc), param="image_id")
        except StoreUnavailableError as exc:
            return error_response(503, str(exc), kind="store_unavailable")
        if stored is None:
            return error_response(
                404,
                f"Image {image_id!r} does not exist or has expired (images are kept "
                f"{service.store.ttl_seconds} s); generate it again.",
                kind="not_found",
            )
        return Response(
            stored.data,
            media_type=stored.mime_type,
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @router.get("/health", tags=["health"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready", tags=["health"], summary="Readiness: every runtime's model is ready")
    async def ready() -> JSONResponse:
        ok, runtimes = await service.ready()
        return JSONResponse(
            {"ready": ok, "runtimes": runtimes, "discovery": service.discovery_status()},
            status_code=200 if ok else 503,
        )

    return router
